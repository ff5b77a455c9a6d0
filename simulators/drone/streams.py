"""Telemetry stream scheduling in simulated time, with SET_MESSAGE_INTERVAL / REQUEST_DATA_STREAM control.

Rates are per simulated second, so a 10x simulation sends 10x the messages per wall second; the optional
cap (in wall Hz) keeps large fast fleets from flooding a gateway or the CPU.
"""

from __future__ import annotations

import random

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

MSG = mavlink2
HEARTBEAT = MSG.MAVLINK_MSG_ID_HEARTBEAT
SYS_STATUS = MSG.MAVLINK_MSG_ID_SYS_STATUS
SYSTEM_TIME = MSG.MAVLINK_MSG_ID_SYSTEM_TIME
GPS_RAW_INT = MSG.MAVLINK_MSG_ID_GPS_RAW_INT
ATTITUDE = MSG.MAVLINK_MSG_ID_ATTITUDE
LOCAL_POSITION_NED = MSG.MAVLINK_MSG_ID_LOCAL_POSITION_NED
GLOBAL_POSITION_INT = MSG.MAVLINK_MSG_ID_GLOBAL_POSITION_INT
MISSION_CURRENT = MSG.MAVLINK_MSG_ID_MISSION_CURRENT
VFR_HUD = MSG.MAVLINK_MSG_ID_VFR_HUD
BATTERY_STATUS = MSG.MAVLINK_MSG_ID_BATTERY_STATUS
AUTOPILOT_VERSION = MSG.MAVLINK_MSG_ID_AUTOPILOT_VERSION
HOME_POSITION = MSG.MAVLINK_MSG_ID_HOME_POSITION
EXTENDED_SYS_STATE = MSG.MAVLINK_MSG_ID_EXTENDED_SYS_STATE

DEFAULT_RATES_HZ: dict[int, float] = {
    HEARTBEAT: 1.0,
    GLOBAL_POSITION_INT: 5.0,
    ATTITUDE: 10.0,
    SYS_STATUS: 1.0,
    GPS_RAW_INT: 2.0,
    VFR_HUD: 4.0,
    BATTERY_STATUS: 1.0,
    EXTENDED_SYS_STATE: 1.0,
    HOME_POSITION: 0.2,
    SYSTEM_TIME: 1.0,
    MISSION_CURRENT: 1.0,
    LOCAL_POSITION_NED: 0.0,  # off unless requested
}

# Legacy REQUEST_DATA_STREAM groups, as ArduPilot maps them.
DATA_STREAM_GROUPS: dict[int, tuple[int, ...]] = {
    MSG.MAV_DATA_STREAM_EXTENDED_STATUS: (SYS_STATUS, GPS_RAW_INT, MISSION_CURRENT, EXTENDED_SYS_STATE),
    MSG.MAV_DATA_STREAM_POSITION: (GLOBAL_POSITION_INT, LOCAL_POSITION_NED),
    MSG.MAV_DATA_STREAM_EXTRA1: (ATTITUDE,),
    MSG.MAV_DATA_STREAM_EXTRA2: (VFR_HUD,),
    MSG.MAV_DATA_STREAM_EXTRA3: (SYSTEM_TIME, BATTERY_STATUS),
}
DATA_STREAM_GROUPS[MSG.MAV_DATA_STREAM_ALL] = tuple(msg_id for group in DATA_STREAM_GROUPS.values() for msg_id in group)


class StreamScheduler:
    """When each periodic message is next due, in simulated seconds."""

    def __init__(self, rng: random.Random, start_s: float = 0.0) -> None:
        self._interval_s: dict[int, float | None] = {}
        self._next_s: dict[int, float] = {}
        for msg_id, hz in DEFAULT_RATES_HZ.items():
            interval = 1.0 / hz if hz > 0 else None
            self._interval_s[msg_id] = interval
            # Random phase so a fleet's drones do not all transmit in the same instant.
            self._next_s[msg_id] = start_s + (rng.uniform(0.0, interval) if interval else 0.0)
        self._next_s[HEARTBEAT] = start_s

    @staticmethod
    def streamable(msg_id: int) -> bool:
        return msg_id in DEFAULT_RATES_HZ

    def set_interval_us(self, msg_id: int, interval_us: float, now_s: float) -> bool:
        """SET_MESSAGE_INTERVAL semantics: -1 disables, 0 restores the default, >0 is the interval."""
        if not self.streamable(msg_id):
            return False
        if interval_us < 0:
            self._interval_s[msg_id] = None
        elif interval_us == 0:
            hz = DEFAULT_RATES_HZ[msg_id]
            self._interval_s[msg_id] = 1.0 / hz if hz > 0 else None
        else:
            self._interval_s[msg_id] = interval_us / 1e6
        self._next_s[msg_id] = now_s
        return True

    def set_rate_hz(self, msg_id: int, rate_hz: float, now_s: float) -> None:
        """REQUEST_DATA_STREAM semantics: 0 Hz stops the message."""
        self._interval_s[msg_id] = 1.0 / rate_hz if rate_hz > 0 else None
        self._next_s[msg_id] = now_s

    def fastest_interval_s(self) -> float:
        """Shortest enabled interval: the simulation must step at least this finely to honour it."""
        return min((i for i in self._interval_s.values() if i is not None), default=1.0)

    def interval_us(self, msg_id: int) -> int:
        """MESSAGE_INTERVAL semantics: -1 disabled, 0 not available."""
        if not self.streamable(msg_id):
            return 0
        interval = self._interval_s.get(msg_id)
        return -1 if interval is None else round(interval * 1e6)

    def due(self, now_s: float, min_interval_s: float = 0.0) -> list[int]:
        """Messages due at now_s; each is rescheduled one interval later (no catch-up bursts)."""
        due: list[int] = []
        for msg_id, interval in self._interval_s.items():
            if interval is None:
                continue
            next_s = self._next_s[msg_id]
            if now_s + 1e-9 < next_s:
                continue
            due.append(msg_id)
            step_s = max(interval, min_interval_s)
            next_s += step_s
            if next_s <= now_s:
                next_s = now_s + step_s
            self._next_s[msg_id] = next_s
        return due
