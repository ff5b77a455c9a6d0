"""MAVLink drones: links, normalization, commands and missions, signing, relay, tlog replay."""

from drivers.mavlink.driver import DroneConfig, MavlinkDriver, MavlinkOptions
from drivers.mavlink.framing import Frame, FrameSplitter
from drivers.mavlink.tlog import read_tlog

__all__ = ["DroneConfig", "Frame", "FrameSplitter", "MavlinkDriver", "MavlinkOptions", "read_tlog"]
