"""Mission items as the vehicle stores them, with MISSION_ITEM_INT <-> MISSION_ITEM conversions.

Items are kept in MISSION_ITEM_INT form (lat/lon as integer 1e-7 degrees) because that is lossless; the
float MISSION_ITEM form is produced on demand for old ground stations. Like ArduPilot, slot 0 is home:
whatever a GCS uploads there is kept, but downloads always report the current home position.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .geo import GeoPoint

GLOBAL_FRAMES = frozenset(
    {
        mavlink2.MAV_FRAME_GLOBAL,
        mavlink2.MAV_FRAME_GLOBAL_RELATIVE_ALT,
        mavlink2.MAV_FRAME_GLOBAL_INT,
        mavlink2.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
        mavlink2.MAV_FRAME_GLOBAL_TERRAIN_ALT,
        mavlink2.MAV_FRAME_GLOBAL_TERRAIN_ALT_INT,
    }
)
AMSL_FRAMES = frozenset({mavlink2.MAV_FRAME_GLOBAL, mavlink2.MAV_FRAME_GLOBAL_INT})
LOCAL_FRAMES = frozenset(
    {
        mavlink2.MAV_FRAME_LOCAL_NED,
        mavlink2.MAV_FRAME_LOCAL_ENU,
        mavlink2.MAV_FRAME_LOCAL_OFFSET_NED,
        mavlink2.MAV_FRAME_BODY_NED,
        mavlink2.MAV_FRAME_BODY_OFFSET_NED,
    }
)
SUPPORTED_FRAMES = GLOBAL_FRAMES | {mavlink2.MAV_FRAME_MISSION}
MAX_ITEMS = 700


@dataclass(frozen=True, slots=True)
class MissionItem:
    """One mission item in MISSION_ITEM_INT form: x/y are lat/lon in 1e-7 degrees for global frames."""

    seq: int
    frame: int
    command: int
    current: int
    autocontinue: int
    param1: float
    param2: float
    param3: float
    param4: float
    x: int
    y: int
    z: float
    mission_type: int = mavlink2.MAV_MISSION_TYPE_MISSION

    @property
    def lat_deg(self) -> float:
        return self.x / 1e7

    @property
    def lon_deg(self) -> float:
        return self.y / 1e7

    @property
    def is_nav(self) -> bool:
        """NAV commands move the vehicle; DO/CONDITION commands run between them."""
        return self.command < mavlink2.MAV_CMD_NAV_LAST

    @classmethod
    def from_message(cls, msg: mavlink2.MAVLink_message) -> MissionItem:
        """Build from MISSION_ITEM_INT or the float MISSION_ITEM."""
        x, y = msg.x, msg.y
        if msg.get_type() == "MISSION_ITEM":
            x, y = _float_to_int_xy(msg.frame, x), _float_to_int_xy(msg.frame, y)
        return cls(
            seq=msg.seq,
            frame=msg.frame,
            command=msg.command,
            current=msg.current,
            autocontinue=msg.autocontinue,
            param1=msg.param1,
            param2=msg.param2,
            param3=msg.param3,
            param4=msg.param4,
            x=int(x),
            y=int(y),
            z=msg.z,
            mission_type=getattr(msg, "mission_type", mavlink2.MAV_MISSION_TYPE_MISSION),
        )

    def to_int_message(self, target_system: int, target_component: int) -> mavlink2.MAVLink_message:
        return mavlink2.MAVLink_mission_item_int_message(
            target_system, target_component, self.seq, self.frame, self.command, self.current,
            self.autocontinue, self.param1, self.param2, self.param3, self.param4, self.x, self.y, self.z,
            self.mission_type,
        )  # fmt: skip

    def to_float_message(self, target_system: int, target_component: int) -> mavlink2.MAVLink_message:
        return mavlink2.MAVLink_mission_item_message(
            target_system, target_component, self.seq, self.frame, self.command, self.current,
            self.autocontinue, self.param1, self.param2, self.param3, self.param4,
            _int_to_float_xy(self.frame, self.x), _int_to_float_xy(self.frame, self.y), self.z,
            self.mission_type,
        )  # fmt: skip


def _float_to_int_xy(frame: int, value: float) -> int:
    if frame in GLOBAL_FRAMES:
        return round(value * 1e7)
    if frame in LOCAL_FRAMES:
        return round(value * 1e4)
    return round(value)


def _int_to_float_xy(frame: int, value: int) -> float:
    if frame in GLOBAL_FRAMES:
        return value / 1e7
    if frame in LOCAL_FRAMES:
        return value / 1e4
    return float(value)


def home_item(home: GeoPoint) -> MissionItem:
    """Slot 0 as ArduPilot reports it: a WAYPOINT at home, absolute (AMSL) altitude."""
    return MissionItem(
        seq=0,
        frame=mavlink2.MAV_FRAME_GLOBAL,
        command=mavlink2.MAV_CMD_NAV_WAYPOINT,
        current=0,
        autocontinue=1,
        param1=0.0,
        param2=0.0,
        param3=0.0,
        param4=0.0,
        x=round(home.lat_deg * 1e7),
        y=round(home.lon_deg * 1e7),
        z=home.alt_msl_m,
    )


class MissionStore:
    """The stored mission: slot 0 (home) followed by the items the vehicle flies."""

    def __init__(self) -> None:
        self._items: list[MissionItem] = []
        self.version = 0  # bumped on every change so a running mission can notice a re-upload

    def __len__(self) -> int:
        """MISSION_COUNT as reported to a GCS: at least 1 because home always occupies slot 0."""
        return max(1, len(self._items))

    @property
    def nav_total(self) -> int:
        """Items after home (MISSION_CURRENT.total)."""
        return max(0, len(self._items) - 1)

    def replace(self, items: list[MissionItem]) -> None:
        self._items = [replace(item, seq=i, current=0) for i, item in enumerate(items)]
        self.version += 1

    def clear(self) -> None:
        self._items = []
        self.version += 1

    def get(self, seq: int, home: GeoPoint) -> MissionItem | None:
        """Item for a download request; slot 0 is the live home position."""
        if seq == 0:
            return home_item(home)
        if 0 < seq < len(self._items):
            return self._items[seq]
        return None

    def flyable(self, seq: int) -> MissionItem | None:
        """Stored item seq >= 1 (slot 0, home, is never flown)."""
        if 0 < seq < len(self._items):
            return self._items[seq]
        return None

    def items(self) -> list[MissionItem]:
        """The flyable items (slot 1 onwards)."""
        return list(self._items[1:])
