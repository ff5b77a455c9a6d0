"""ArduCopter-like parameter table and the MAVLink parameter protocol (vehicle side).

Names, units and defaults follow ArduCopter 4.5 (ArduPilot units: cm, cm/s, mAh, ms) so ground stations
that look for well-known parameters accept the vehicle, and so changing e.g. WPNAV_SPEED or RTL_ALT from
a GCS changes how the simulated drone flies.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

INT8 = mavlink2.MAV_PARAM_TYPE_INT8
INT16 = mavlink2.MAV_PARAM_TYPE_INT16
INT32 = mavlink2.MAV_PARAM_TYPE_INT32
REAL32 = mavlink2.MAV_PARAM_TYPE_REAL32

_INT_LIMITS = {INT8: (-128, 127), INT16: (-32768, 32767), INT32: (-(2**31), 2**31 - 1)}


@dataclass(slots=True)
class Param:
    name: str
    value: float
    param_type: int


def default_params(sysid: int, battery_cells: int, battery_capacity_mah: float) -> list[Param]:
    """The parameter set of one vehicle, in the order PARAM_REQUEST_LIST reports it."""
    return [
        Param("SYSID_THISMAV", sysid, INT16),
        Param("SYSID_MYGCS", 255, INT16),
        Param("FRAME_CLASS", 1, INT8),  # quad
        Param("FRAME_TYPE", 1, INT8),  # X
        Param("ARMING_CHECK", 1, INT32),
        Param("DISARM_DELAY", 10, INT8),  # s
        Param("GPS_TYPE", 1, INT8),
        Param("MOT_THST_HOVER", 0.35, REAL32),
        Param("WPNAV_SPEED", 1000, REAL32),  # cm/s
        Param("WPNAV_SPEED_UP", 250, REAL32),  # cm/s
        Param("WPNAV_SPEED_DN", 150, REAL32),  # cm/s
        Param("WPNAV_ACCEL", 250, REAL32),  # cm/s/s
        Param("WPNAV_RADIUS", 200, REAL32),  # cm
        Param("WP_YAW_BEHAVIOR", 2, INT8),
        Param("ATC_SLEW_YAW", 6000, REAL32),  # cdeg/s
        Param("LOIT_SPEED", 1250, REAL32),  # cm/s
        Param("RTL_ALT", 1500, INT32),  # cm
        Param("RTL_ALT_FINAL", 0, INT16),  # cm, 0 = land
        Param("RTL_LOIT_TIME", 5000, INT32),  # ms
        Param("RTL_SPEED", 0, INT16),  # cm/s, 0 = WPNAV_SPEED
        Param("LAND_SPEED", 50, INT16),  # cm/s below LAND_ALT_LOW
        Param("LAND_SPEED_HIGH", 0, INT16),  # cm/s, 0 = WPNAV_SPEED_DN
        Param("LAND_ALT_LOW", 1000, INT16),  # cm
        Param("BATT_MONITOR", 4, INT8),  # analog voltage + current
        Param("BATT_CAPACITY", battery_capacity_mah, INT32),  # mAh
        Param("BATT_LOW_VOLT", round(3.5 * battery_cells, 2), REAL32),  # V
        Param("BATT_CRT_VOLT", 0, REAL32),  # V, 0 = disabled
        Param("BATT_LOW_MAH", round(battery_capacity_mah * 0.20), REAL32),  # mAh remaining
        Param("BATT_CRT_MAH", round(battery_capacity_mah * 0.10), REAL32),  # mAh remaining
        Param("BATT_FS_LOW_ACT", 2, INT8),  # 2 = RTL
        Param("BATT_FS_CRT_ACT", 1, INT8),  # 1 = LAND
        Param("FS_GCS_ENABLE", 0, INT8),  # 1 = RTL on GCS heartbeat loss
        Param("FS_GCS_TIMEOUT", 5, REAL32),  # s
        Param("FENCE_ENABLE", 0, INT8),
        Param("FENCE_TYPE", 3, INT8),  # bit0 max alt, bit1 circle
        Param("FENCE_ACTION", 1, INT8),  # 1 = RTL
        Param("FENCE_ALT_MAX", 100, REAL32),  # m
        Param("FENCE_RADIUS", 300, REAL32),  # m
    ]


def _cast(value: float, param_type: int) -> float:
    """Store a value as the parameter's real type would (ints truncate and saturate)."""
    limits = _INT_LIMITS.get(param_type)
    if limits is None:
        return float(value)
    lo, hi = limits
    return float(min(hi, max(lo, round(value))))


class ParamStore:
    """Named parameters with ArduPilot types; values are always floats on the wire (C-cast encoding)."""

    def __init__(self, params: list[Param]) -> None:
        self._params = params
        self._by_name = {p.name: i for i, p in enumerate(params)}

    def __len__(self) -> int:
        return len(self._params)

    def __getitem__(self, name: str) -> float:
        return self._params[self._by_name[name]].value

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def set(self, name: str, value: float) -> Param | None:
        """Set a parameter; unknown names return None (ArduPilot silently ignores them)."""
        index = self._by_name.get(name)
        if index is None:
            return None
        param = self._params[index]
        param.value = _cast(value, param.param_type)
        return param

    def by_index(self, index: int) -> Param | None:
        return self._params[index] if 0 <= index < len(self._params) else None

    def index_of(self, name: str) -> int:
        return self._by_name.get(name, -1)


SendFn = Callable[[mavlink2.MAVLink_message], None]


class ParamProtocol:
    """Answers PARAM_REQUEST_LIST / PARAM_REQUEST_READ / PARAM_SET.

    A full list is paced over several ticks (like ArduPilot's bandwidth-limited queue) so a 38-parameter
    dump does not burst onto a lossy radio link in one go.
    """

    PARAMS_PER_POLL = 8

    def __init__(self, store: ParamStore, send: SendFn, on_change: Callable[[str, float], None]) -> None:
        self._store = store
        self._send = send
        self._on_change = on_change
        self._queue: deque[int] = deque()

    def handle(self, msg: mavlink2.MAVLink_message) -> bool:
        """Process a parameter message; returns False if it is not a parameter message."""
        kind = msg.get_type()
        if kind == "PARAM_REQUEST_LIST":
            self._queue = deque(range(len(self._store)))
        elif kind == "PARAM_REQUEST_READ":
            index = msg.param_index
            if index < 0:
                index = self._store.index_of(_param_name(msg.param_id))
            if index >= 0:
                self._send_value(index)
        elif kind == "PARAM_SET":
            name = _param_name(msg.param_id)
            param = self._store.set(name, msg.param_value)
            if param is not None:
                self._on_change(name, param.value)
                self._send_value(self._store.index_of(name))
        else:
            return False
        return True

    def poll(self) -> None:
        """Send the next slice of a pending full-list request."""
        for _ in range(min(self.PARAMS_PER_POLL, len(self._queue))):
            self._send_value(self._queue.popleft())

    def _send_value(self, index: int) -> None:
        param = self._store.by_index(index)
        if param is None:
            return
        self._send(
            mavlink2.MAVLink_param_value_message(
                param.name.encode(), param.value, param.param_type, len(self._store), index
            )
        )


def _param_name(raw: bytes | str) -> str:
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", errors="replace")
    return raw.rstrip("\x00")
