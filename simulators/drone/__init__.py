"""Simulated fleet of ArduCopter-like multicopters speaking real MAVLink 2 over UDP or TCP.

The simulator is an independent peer of the gateway: it imports nothing from patrolgate and talks to
whatever is at the other end of its sockets (the gateway, QGroundControl, mavproxy).
"""

from .clock import SimClock
from .drone import DEFAULT_HOME, SimulatedDrone
from .faults import FaultConfig, GpsGlitch, LinkDrop, LowBattery
from .fleet import DroneFleet, run_drone_fleet, spawn_points
from .geo import GeoPoint
from .link import LinkStats
from .mission_store import MissionItem
from .modes import CopterMode
from .transport import Endpoint, parse_endpoint

__all__ = [
    "DEFAULT_HOME",
    "CopterMode",
    "DroneFleet",
    "Endpoint",
    "FaultConfig",
    "GeoPoint",
    "GpsGlitch",
    "LinkDrop",
    "LinkStats",
    "LowBattery",
    "MissionItem",
    "SimClock",
    "SimulatedDrone",
    "parse_endpoint",
    "run_drone_fleet",
    "spawn_points",
]
