"""MAVLink mission protocol, vehicle side: upload, download, clear, set-current.

Upload follows the autopilot's half of the handshake: MISSION_COUNT -> MISSION_REQUEST_INT per item (retried
when an item is lost, abandoned with OPERATION_CANCELLED after repeated silence) -> MISSION_ACK. The new
mission replaces the old one only when the last item has arrived, so a failed upload never leaves a
half-written mission behind.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .clock import Deadline, SimClock
from .geo import GeoPoint
from .mission_store import MAX_ITEMS, SUPPORTED_FRAMES, MissionItem, MissionStore

ITEM_TIMEOUT_S = 1.5  # simulated seconds before re-requesting an item
ITEM_TIMEOUT_MIN_WALL_S = 0.25  # never re-request faster than a real-time peer could answer
MAX_RETRIES = 5

MISSION = mavlink2.MAV_MISSION_TYPE_MISSION

SendFn = Callable[[mavlink2.MAVLink_message], None]


@dataclass(slots=True)
class _Upload:
    src_system: int
    src_component: int
    count: int
    items: list[MissionItem] = field(default_factory=list)
    deadline: Deadline | None = None
    retries: int = 0

    @property
    def next_seq(self) -> int:
        return len(self.items)


class MissionHooks:
    """What the protocol needs from the rest of the vehicle (implemented by the drone)."""

    def home(self) -> GeoPoint:
        raise NotImplementedError

    def mission_replaced(self) -> None:
        """A new mission was stored."""

    def can_clear(self) -> bool:
        return True

    def set_current(self, seq: int) -> bool:
        return False

    def guided_item(self, item: MissionItem) -> bool:
        """Legacy guided goto: MISSION_ITEM with current=2 (GUIDED target) or 3 (altitude change)."""
        return False

    def text(self, severity: int, text: str) -> None:
        pass


class MissionProtocol:
    def __init__(self, store: MissionStore, send: SendFn, clock: SimClock, hooks: MissionHooks) -> None:
        self._store = store
        self._send = send
        self._clock = clock
        self._hooks = hooks
        self._upload: _Upload | None = None

    @property
    def uploading(self) -> bool:
        return self._upload is not None

    def handle(self, msg: mavlink2.MAVLink_message) -> bool:
        """Process a mission-protocol message; returns False if it is not one."""
        kind = msg.get_type()
        src_sys, src_comp = msg.get_srcSystem(), msg.get_srcComponent()
        mission_type = getattr(msg, "mission_type", MISSION)
        if kind == "MISSION_COUNT":
            self._on_count(msg.count, mission_type, src_sys, src_comp)
        elif kind in ("MISSION_ITEM_INT", "MISSION_ITEM"):
            self._on_item(MissionItem.from_message(msg), src_sys, src_comp)
        elif kind == "MISSION_REQUEST_LIST":
            count = len(self._store) if mission_type == MISSION else 0
            self._send(mavlink2.MAVLink_mission_count_message(src_sys, src_comp, count, mission_type))
        elif kind in ("MISSION_REQUEST_INT", "MISSION_REQUEST"):
            self._on_request(msg.seq, mission_type, kind == "MISSION_REQUEST_INT", src_sys, src_comp)
        elif kind == "MISSION_CLEAR_ALL":
            self._on_clear(mission_type, src_sys, src_comp)
        elif kind == "MISSION_SET_CURRENT":
            if not self._hooks.set_current(msg.seq):
                self._hooks.text(mavlink2.MAV_SEVERITY_WARNING, "Mission: invalid item")
        elif kind == "MISSION_ACK":
            pass  # end of a download; nothing to release
        else:
            return False
        return True

    def poll(self) -> None:
        """Re-request a missing item, or give up on a silent uploader."""
        up = self._upload
        if up is None or up.deadline is None or not up.deadline.expired(self._clock):
            return
        up.retries += 1
        if up.retries > MAX_RETRIES:
            self._upload = None
            self._ack(up.src_system, up.src_component, mavlink2.MAV_MISSION_OPERATION_CANCELLED)
            self._hooks.text(mavlink2.MAV_SEVERITY_WARNING, "Mission upload timeout")
            return
        self._request_next(up)

    def _on_count(self, count: int, mission_type: int, src_sys: int, src_comp: int) -> None:
        if mission_type != MISSION:
            # No fences or rally points on this vehicle; an empty list is still a valid answer.
            result = mavlink2.MAV_MISSION_ACCEPTED if count == 0 else mavlink2.MAV_MISSION_UNSUPPORTED
            self._ack(src_sys, src_comp, result, mission_type)
            return
        if count > MAX_ITEMS:
            self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_NO_SPACE)
            return
        if count == 0:
            self._upload = None
            self._store.clear()
            self._hooks.mission_replaced()
            self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_ACCEPTED)
            return
        self._upload = _Upload(src_sys, src_comp, count)
        self._request_next(self._upload)

    def _on_item(self, item: MissionItem, src_sys: int, src_comp: int) -> None:
        up = self._upload
        if up is None:
            if item.current in (2, 3):
                ok = self._hooks.guided_item(item)
                result = mavlink2.MAV_MISSION_ACCEPTED if ok else mavlink2.MAV_MISSION_ERROR
                self._ack(src_sys, src_comp, result)
            return
        if (src_sys, src_comp) != (up.src_system, up.src_component) or item.mission_type != MISSION:
            return
        if item.seq != up.next_seq:
            # A duplicate answering a retry, or one that overtook a lost item: the retry timer covers it.
            return
        if item.seq > 0 and item.frame not in SUPPORTED_FRAMES:
            self._upload = None
            self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_UNSUPPORTED_FRAME)
            return
        up.items.append(item)
        up.retries = 0
        if up.next_seq < up.count:
            self._request_next(up)
            return
        self._upload = None
        self._store.replace(up.items)
        self._hooks.mission_replaced()
        self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_ACCEPTED)

    def _on_request(self, seq: int, mission_type: int, want_int: bool, src_sys: int, src_comp: int) -> None:
        item = self._store.get(seq, self._hooks.home()) if mission_type == MISSION else None
        if item is None:
            self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_INVALID_SEQUENCE, mission_type)
            return
        if want_int:
            self._send(item.to_int_message(src_sys, src_comp))
        else:
            self._send(item.to_float_message(src_sys, src_comp))

    def _on_clear(self, mission_type: int, src_sys: int, src_comp: int) -> None:
        if mission_type not in (MISSION, mavlink2.MAV_MISSION_TYPE_ALL):
            self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_ACCEPTED, mission_type)
            return
        if not self._hooks.can_clear():
            self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_ERROR, mission_type)
            return
        self._upload = None
        self._store.clear()
        self._hooks.mission_replaced()
        self._ack(src_sys, src_comp, mavlink2.MAV_MISSION_ACCEPTED, mission_type)

    def _request_next(self, up: _Upload) -> None:
        up.deadline = Deadline.after(self._clock, ITEM_TIMEOUT_S, ITEM_TIMEOUT_MIN_WALL_S)
        self._send(mavlink2.MAVLink_mission_request_int_message(up.src_system, up.src_component, up.next_seq, MISSION))

    def _ack(self, src_sys: int, src_comp: int, result: int, mission_type: int = MISSION) -> None:
        self._send(mavlink2.MAVLink_mission_ack_message(src_sys, src_comp, result, mission_type))
