"""The one normalized vehicle-state model that every driver produces, whatever protocol a vehicle speaks.

Frames and units (explicit in the field names):
- times are timezone-aware UTC ``datetime``;
- positions are WGS84, latitude/longitude in degrees;
- ``alt_msl_m`` is metres above mean sea level, ``alt_rel_m`` metres above home (take-off point / ground);
- angles in degrees: heading is course over ground clockwise from true north in [0, 360); roll/pitch/yaw in
  [-180, 180];
- speeds in m/s; ``climb_mps`` positive up;
- ``battery_pct`` 0-100 state of charge, ``battery_v`` volts; ``link_quality_pct`` 0-100;
- patrol cars: ``odometer_m`` total distance driven in metres, ``fuel_pct`` 0-100, ``rssi_dbm`` cellular
  signal strength in dBm; ``seq`` is the vehicle's own message counter (a gap means lost messages).

Everything a driver knows beyond these goes into ``extra`` (a JSON object): documented keys are listed in
``EXTRA_KEYS``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import msgspec

__all__ = [
    "EXTRA_KEYS",
    "UNIX_EPOCH",
    "Event",
    "EventType",
    "GpsFix",
    "Rejection",
    "Sample",
    "VehicleInfo",
    "VehicleKind",
    "utc_from_unix",
    "utcnow",
]


class VehicleKind(StrEnum):
    DRONE = "drone"
    PATROL_CAR = "patrol_car"


class GpsFix:
    """GPS fix types, as MAVLink's GPS_FIX_TYPE numbers them (shared by the MQTT contract)."""

    NO_GPS = 0
    NO_FIX = 1
    FIX_2D = 2
    FIX_3D = 3
    DGPS = 4
    RTK_FLOAT = 5
    RTK_FIXED = 6


class EventType(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"
    MODE_CHANGED = "mode_changed"
    ARMED = "armed"
    DISARMED = "disarmed"
    ALARM = "alarm"
    STATUSTEXT = "statustext"
    COMMAND = "command"


#: Documented keys of ``Sample.extra`` with their units.
EXTRA_KEYS: dict[str, str] = {
    "hdop": "GPS horizontal dilution of precision (unitless)",
    "vx_mps": "velocity north, m/s (MAVLink NED)",
    "vy_mps": "velocity east, m/s (MAVLink NED)",
    "vz_mps": "velocity down, m/s (MAVLink NED)",
    "current_a": "battery current, amperes",
    "landed_state": "MAV_LANDED_STATE name (on_ground, takeoff, in_air, landing)",
    "home_lat": "home latitude, degrees WGS84",
    "home_lon": "home longitude, degrees WGS84",
    "home_alt_msl_m": "home altitude above mean sea level, metres",
    "throttle_pct": "throttle, percent",
    "airspeed_mps": "airspeed, m/s",
    "time_boot_ms": "autopilot time since boot, milliseconds",
    "mission_seq": "current mission item",
}


#: 1970-01-01T00:00:00Z, the origin of Unix and MQTT-contract timestamps.
UNIX_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def utc_from_unix(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, UTC)


class Sample(msgspec.Struct, gc=False):
    """One position update of one vehicle with the latest known values of everything else.

    A msgspec Struct rather than a dataclass: built in C (0.7 µs less per sample than the slots dataclass, at
    hundreds of thousands of samples a second), and ``gc=False`` keeps the cycle collector from walking the
    tens of thousands of samples queued at any moment (its generation-0 passes took 40-50 ms each). Safe: a
    sample holds plain values and a JSON ``extra`` dict, which never refer back to it.

    ``lat_deg``/``lon_deg`` are None when the vehicle reports no GPS fix (an autopilot sends 0/0 then): the
    sample still carries battery, mode and the rest, as Traccar keeps positions flagged invalid.

    ``time`` is when the gateway received it (UTC). ``vehicle_time`` is the vehicle's own clock at the fix
    when it sends one (MQTT ``ts``, MAVLink SYSTEM_TIME-anchored time), else None. ``source`` names the
    driver and link (``mavlink:udpin:0.0.0.0:14550``, ``mqtt``) for diagnostics.
    """

    time: datetime
    vehicle: str
    kind: VehicleKind
    lat_deg: float | None
    lon_deg: float | None
    vehicle_time: datetime | None = None
    alt_msl_m: float | None = None
    alt_rel_m: float | None = None
    heading_deg: float | None = None
    ground_speed_mps: float | None = None
    climb_mps: float | None = None
    roll_deg: float | None = None
    pitch_deg: float | None = None
    yaw_deg: float | None = None
    battery_pct: float | None = None
    battery_v: float | None = None
    mode: str | None = None
    armed: bool | None = None
    gps_fix: int | None = None
    satellites: int | None = None
    link_quality_pct: float | None = None
    odometer_m: float | None = None
    fuel_pct: float | None = None
    rssi_dbm: float | None = None
    seq: int | None = None
    extra: dict[str, Any] | None = None
    source: str = ""
    #: The raw message this sample came from, not stored with it: kept only so that a rejection of the
    #: sample can keep the original bytes (set by drivers whose messages carry one sample or a few).
    raw: bytes | None = None

    @property
    def key_time(self) -> datetime:
        """The time that identifies this sample: the vehicle's own when it has one, else the receive time."""
        return self.vehicle_time or self.time


@dataclass(slots=True)
class Event:
    """Something that happened to a vehicle: online/offline, mode change, alarm, SOS, a command result."""

    time: datetime
    vehicle: str
    type: str
    detail: dict[str, Any] = field(default_factory=dict)
    kind: VehicleKind | None = None
    lat_deg: float | None = None
    lon_deg: float | None = None


@dataclass(slots=True)
class Rejection:
    """A message that could not become telemetry, kept with its reason so nothing disappears silently."""

    time: datetime
    source: str
    reason: str
    detail: str = ""
    vehicle: str | None = None
    raw: bytes | None = None
    topic: str | None = None


@dataclass(slots=True)
class VehicleInfo:
    """What a driver knows about a vehicle when it first appears, for the ``vehicles`` registry."""

    vehicle: str
    kind: VehicleKind
    protocol: str
    name: str | None = None
    mavlink_sysid: int | None = None
    mqtt_client_id: str | None = None
    #: False when ``kind`` is only the protocol's default (an MQTT vehicle heard on its status topic before any
    #: telemetry): it registers a vehicle the registry does not have, and never changes the kind of one it has.
    kind_known: bool = True
