"""MAVLink messages -> the telemetry model: one ``Sample`` per position update with the latest of the rest.

``DroneState`` keeps, per drone, the last values of ATTITUDE, VFR_HUD, SYS_STATUS, BATTERY_STATUS, GPS_RAW_INT,
HEARTBEAT, EXTENDED_SYS_STATE, HOME_POSITION and SYSTEM_TIME; GLOBAL_POSITION_INT (or GPS_RAW_INT for an
autopilot that never sends it) emits a sample carrying them. MAVLink's units are converted here and nowhere
else: degE7 -> degrees, mm -> m, cm/s -> m/s, cdeg -> deg, rad -> deg, mV -> V. MAVLink's "unknown" markers
(UINT16_MAX, -1, 0/0 without a fix) become None. Messages work from either decoding path (pymavlink objects
or the fast named tuples): only attribute names are used.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from pymavlink import mavutil

from telemetry.model import UNIX_EPOCH, EventType, Sample, VehicleKind

__all__ = ["MSG", "DroneState", "mode_name"]

_UINT16_MAX = 65535
_RAD_TO_DEG = 180.0 / math.pi
_hypot = math.hypot
_YEAR_2000_US = 946_684_800_000_000

#: MAVLink message ids the normalizer reads.
MSG = {
    "HEARTBEAT": 0, "SYS_STATUS": 1, "SYSTEM_TIME": 2, "GPS_RAW_INT": 24, "ATTITUDE": 30,
    "GLOBAL_POSITION_INT": 33, "MISSION_CURRENT": 42, "VFR_HUD": 74, "RADIO_STATUS": 109,
    "BATTERY_STATUS": 147, "HOME_POSITION": 242, "EXTENDED_SYS_STATE": 245, "STATUSTEXT": 253,
}
_LANDED = {0: None, 1: "on_ground", 2: "in_air", 3: "takeoff", 4: "landing"}
_MAV_TYPE_GCS = 6
_MAV_AUTOPILOT_INVALID = 8
_MAV_MODE_FLAG_SAFETY_ARMED = 128
#: GPS_RAW_INT messages without any GLOBAL_POSITION_INT before GPS_RAW_INT becomes the position source.
_GPS_ONLY_AFTER = 10


def mode_name(heartbeat: Any) -> str:
    """The flight mode's name for ArduPilot (per vehicle type) and PX4 custom modes, as pymavlink names them."""
    try:
        return str(mavutil.mode_string_v10(heartbeat))
    except Exception:
        return f"Mode({getattr(heartbeat, 'custom_mode', '?')})"


def is_vehicle_heartbeat(heartbeat: Any) -> bool:
    """Ground stations and radios send heartbeats too; only autopilots are vehicles."""
    return heartbeat.type != _MAV_TYPE_GCS and heartbeat.autopilot != _MAV_AUTOPILOT_INVALID


class DroneState:
    """The latest known values of one drone (one MAVLink system id)."""

    __slots__ = (
        "_boot_epoch_ms", "_gps_only_count", "_has_global_position",
        "alt_rel_m", "armed", "autopilot", "battery_pct", "battery_v",
        "climb_mps", "current_a", "extra_static", "gps_fix", "groundspeed_mps", "hdop", "heading_deg",
        "home", "kind", "landed_state", "link_quality_pct", "mav_type", "mission_seq", "mode", "pitch_deg",
        "roll_deg", "satellites", "source", "sysid", "vehicle", "yaw_deg",
    )

    def __init__(self, vehicle: str, sysid: int, source: str) -> None:
        self.vehicle = vehicle
        self.sysid = sysid
        self.source = source
        self.kind = VehicleKind.DRONE
        self.mode: str | None = None
        self.armed: bool | None = None
        self.autopilot: int | None = None
        self.mav_type: int | None = None
        self.roll_deg: float | None = None
        self.pitch_deg: float | None = None
        self.yaw_deg: float | None = None
        self.groundspeed_mps: float | None = None
        self.climb_mps: float | None = None
        self.heading_deg: float | None = None
        self.alt_rel_m: float | None = None
        self.battery_pct: float | None = None
        self.battery_v: float | None = None
        self.current_a: float | None = None
        self.gps_fix: int | None = None
        self.satellites: int | None = None
        self.hdop: float | None = None
        self.link_quality_pct: float | None = None
        self.landed_state: str | None = None
        self.home: tuple[float, float, float] | None = None
        self.mission_seq: int | None = None
        self.extra_static: dict[str, Any] = {}
        self._boot_epoch_ms: int | None = None
        self._has_global_position = False
        self._gps_only_count = 0

    # -- per-message handlers; each returns a Sample or None ---------------------------------------------

    def heartbeat(self, m: Any, now: datetime) -> list[tuple[str, dict[str, Any]]]:
        """Update mode/armed; returns state-change events (mode_changed, armed, disarmed)."""
        events: list[tuple[str, dict[str, Any]]] = []
        self.autopilot, self.mav_type = m.autopilot, m.type
        mode = mode_name(m)
        armed = bool(m.base_mode & _MAV_MODE_FLAG_SAFETY_ARMED)
        if self.mode is not None and mode != self.mode:
            events.append((EventType.MODE_CHANGED, {"from": self.mode, "to": mode}))
        if self.armed is not None and armed != self.armed:
            events.append((EventType.ARMED if armed else EventType.DISARMED, {"mode": mode}))
        self.mode, self.armed = mode, armed
        return events

    def attitude(self, m: Any) -> None:
        self.roll_deg = m.roll * _RAD_TO_DEG
        self.pitch_deg = m.pitch * _RAD_TO_DEG
        self.yaw_deg = m.yaw * _RAD_TO_DEG

    def vfr_hud(self, m: Any) -> None:
        self.groundspeed_mps = float(m.groundspeed)
        self.climb_mps = float(m.climb)

    def sys_status(self, m: Any) -> None:
        self.battery_v = None if m.voltage_battery == _UINT16_MAX else m.voltage_battery / 1000.0
        self.battery_pct = None if m.battery_remaining < 0 else float(m.battery_remaining)
        self.current_a = None if m.current_battery < 0 else m.current_battery / 100.0

    def battery_status(self, m: Any) -> None:
        if m.id != 0:
            return
        if m.battery_remaining >= 0:
            self.battery_pct = float(m.battery_remaining)
        cells = [v for v in m.voltages if v != _UINT16_MAX]
        if cells:
            self.battery_v = sum(cells) / 1000.0
        if m.current_battery >= 0:
            self.current_a = m.current_battery / 100.0

    def extended_sys_state(self, m: Any) -> None:
        self.landed_state = _LANDED.get(m.landed_state)

    def home_position(self, m: Any) -> None:
        self.home = (m.latitude / 1e7, m.longitude / 1e7, m.altitude / 1000.0)

    def system_time(self, m: Any) -> None:
        if m.time_unix_usec > _YEAR_2000_US and m.time_boot_ms:
            self._boot_epoch_ms = m.time_unix_usec // 1000 - m.time_boot_ms

    def mission_current(self, m: Any) -> None:
        self.mission_seq = m.seq

    def gps_raw_int(self, m: Any, now: datetime) -> Sample | None:
        self.gps_fix = m.fix_type
        self.satellites = None if m.satellites_visible == 255 else m.satellites_visible
        self.hdop = None if m.eph == _UINT16_MAX else m.eph / 100.0
        if self._has_global_position:
            return None
        # Only for autopilots that do not send GLOBAL_POSITION_INT: after a few GPS_RAW_INT without one.
        self._gps_only_count += 1
        if self._gps_only_count < _GPS_ONLY_AFTER:
            return None
        speed = None if m.vel == _UINT16_MAX else m.vel / 100.0
        heading = None if m.cog == _UINT16_MAX else m.cog / 100.0
        return self._sample(now, m.lat, m.lon, m.alt / 1000.0, None, speed, heading, None)

    def global_position_int(self, m: Any, now: datetime) -> Sample:
        self._has_global_position = True
        vx, vy = m.vx / 100.0, m.vy / 100.0
        heading = None if m.hdg == _UINT16_MAX else m.hdg / 100.0
        if heading is not None and heading >= 360.0:
            heading -= 360.0
        return self._sample(now, m.lat, m.lon, m.alt / 1000.0, m.relative_alt / 1000.0, _hypot(vx, vy), heading,
                            m.time_boot_ms, m.vz / 100.0)

    def _sample(self, now: datetime, lat_e7: int, lon_e7: int, alt_msl_m: float, alt_rel_m: float | None,
                speed_mps: float | None, heading_deg: float | None, time_boot_ms: int | None,
                vz: float | None = None) -> Sample:
        if lat_e7 == 0 and lon_e7 == 0:  # no fix
            lat = lon = alt = None
        else:
            lat, lon, alt = lat_e7 / 1e7, lon_e7 / 1e7, alt_msl_m
        vehicle_time = None
        if time_boot_ms is not None and self._boot_epoch_ms is not None:
            vehicle_time = UNIX_EPOCH + timedelta(milliseconds=self._boot_epoch_ms + time_boot_ms)
        extra: dict[str, Any] = {"time_boot_ms": time_boot_ms} if time_boot_ms is not None else {}
        if self.hdop is not None:
            extra["hdop"] = self.hdop
        if self.current_a is not None:
            extra["current_a"] = self.current_a
        if self.landed_state is not None:
            extra["landed_state"] = self.landed_state
        if self.mission_seq is not None:
            extra["mission_seq"] = self.mission_seq
        if self.extra_static:
            extra.update(self.extra_static)
        if speed_mps is None:
            speed_mps = self.groundspeed_mps
        climb = self.climb_mps if self.climb_mps is not None else (-vz if vz is not None else None)
        # Positional, in field order: this runs for every position of every drone.
        return Sample(
            now, self.vehicle, self.kind, lat, lon, vehicle_time, alt, alt_rel_m, heading_deg, speed_mps, climb,
            self.roll_deg, self.pitch_deg, self.yaw_deg, self.battery_pct, self.battery_v, self.mode, self.armed,
            self.gps_fix, self.satellites, self.link_quality_pct, None, None, None, None, extra or None, self.source,
        )


#: msgid -> name of the DroneState method that takes (message) and returns nothing.
STATE_UPDATERS: dict[int, Callable[[DroneState, Any], None]] = {
    MSG["ATTITUDE"]: DroneState.attitude,
    MSG["VFR_HUD"]: DroneState.vfr_hud,
    MSG["SYS_STATUS"]: DroneState.sys_status,
    MSG["BATTERY_STATUS"]: DroneState.battery_status,
    MSG["EXTENDED_SYS_STATE"]: DroneState.extended_sys_state,
    MSG["HOME_POSITION"]: DroneState.home_position,
    MSG["SYSTEM_TIME"]: DroneState.system_time,
    MSG["MISSION_CURRENT"]: DroneState.mission_current,
}
