"""Commands and missions to one drone, with results: the ground-station half of MAVLink's microservices.

- Command protocol: COMMAND_LONG / COMMAND_INT, waiting for the matching COMMAND_ACK; resent (with
  ``confirmation`` incremented for COMMAND_LONG) after each timeout; MAV_RESULT_IN_PROGRESS keeps waiting.
- Mission protocol, both ways: upload (MISSION_COUNT, then answer each MISSION_REQUEST_INT, or the older
  MISSION_REQUEST with MISSION_ITEM, until MISSION_ACK) and download (MISSION_REQUEST_LIST, MISSION_COUNT,
  request each item, MISSION_ACK). A lost message is resent after the timeout, up to the retry count.
- ArduPilot keeps its home position as mission item 0, so for ArduPilot the commander uploads a home item in
  front of the caller's items and drops it on download: callers see only their own mission.

Replies reach a commander through ``on_message`` (called by the driver for this drone's frames); commands go
out through ``send``, a callable the driver binds to the drone's current link. One mission transaction runs
at a time per drone.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mavlink

from drivers.commands import CommandRejected, CommandTimeout, MissionItem, UnsupportedCommand

__all__ = ["Commander", "mode_params"]

_M = mavlink
_RESULT_NAMES = {v: e.name.removeprefix("MAV_RESULT_") for v, e in _M.enums["MAV_RESULT"].items()}
_MISSION_RESULT_NAMES = {v: e.name for v, e in _M.enums["MAV_MISSION_RESULT"].items()}
_MISSION_MSGS = {
    _M.MAVLINK_MSG_ID_MISSION_REQUEST, _M.MAVLINK_MSG_ID_MISSION_REQUEST_INT, _M.MAVLINK_MSG_ID_MISSION_ACK,
    _M.MAVLINK_MSG_ID_MISSION_COUNT, _M.MAVLINK_MSG_ID_MISSION_ITEM_INT, _M.MAVLINK_MSG_ID_MISSION_ITEM,
}


def mode_params(mav_type: int | None, autopilot: int | None, mode: str) -> tuple[float, float, float]:
    """MAV_CMD_DO_SET_MODE params 1-3 for ``mode``: ArduPilot custom mode by vehicle type (GUIDED -> 4 on a
    copter), PX4 main/sub mode."""
    from pymavlink import mavutil

    mapping = mavutil.mode_mapping_byname(mav_type if mav_type is not None else _M.MAV_TYPE_QUADROTOR)
    if autopilot == _M.MAV_AUTOPILOT_PX4:
        mapping = mavutil.px4_map
    if not mapping or mode.upper() not in mapping:
        known = ", ".join(sorted(mapping)) if mapping else "none"
        raise ValueError(f"unknown mode {mode!r} for this vehicle (known: {known})")
    value = mapping[mode.upper()]
    if isinstance(value, int):
        return float(_M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED), float(value), 0.0
    base, main, sub = value
    return float(base), float(main), float(sub)


class Commander:
    """Talks to one drone (``target_sysid``). ``send(msg)`` must pack and transmit a pymavlink message."""

    def __init__(self, vehicle: str, target_sysid: int, send: Callable[[Any], None], *,
                 timeout_s: float = 3.0, retries: int = 3, target_compid: int = 1) -> None:
        self.vehicle = vehicle
        self.target_sysid = target_sysid
        self.target_compid = target_compid
        self.send = send
        self.timeout_s = timeout_s
        self.retries = retries
        self.autopilot: int | None = None
        self.mav_type: int | None = None
        self.home: tuple[float, float, float] | None = None
        self._acks: dict[int, list[asyncio.Future[Any]]] = {}
        self._mission_inbox: asyncio.Queue[Any] | None = None
        self._mission_lock = asyncio.Lock()

    # -- inbound -----------------------------------------------------------------------------------------

    def on_message(self, msgid: int, msg: Any) -> None:
        if msgid == _M.MAVLINK_MSG_ID_COMMAND_ACK:
            for fut in self._acks.get(msg.command, []):
                if not fut.done():
                    fut.set_result(msg)
        elif msgid in _MISSION_MSGS and self._mission_inbox is not None and getattr(msg, "mission_type", 0) == 0:
            self._mission_inbox.put_nowait(msg)

    # -- command protocol --------------------------------------------------------------------------------

    async def command_long(self, command: int, *params: float, name: str | None = None) -> Any:
        """Send COMMAND_LONG and return its COMMAND_ACK; raises CommandRejected/Timeout/UnsupportedCommand."""
        p = [float(x) for x in params] + [0.0] * (7 - len(params))

        def build(attempt: int) -> Any:
            return _M.MAVLink_command_long_message(self.target_sysid, self.target_compid, command, attempt, *p)

        return await self._command(command, build, name)

    async def command_int(self, command: int, *, frame: int = _M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
                          params: tuple[float, float, float, float] = (0, 0, 0, 0), x: int = 0, y: int = 0,
                          z: float = 0.0, name: str | None = None) -> Any:
        """Send COMMAND_INT (positions as degE7 ints) and return its COMMAND_ACK."""

        def build(attempt: int) -> Any:
            return _M.MAVLink_command_int_message(self.target_sysid, self.target_compid, frame, command, 0, 0,
                                                  *params, x, y, z)

        return await self._command(command, build, name)

    async def _command(self, command: int, build: Callable[[int], Any], name: str | None) -> Any:
        known = _M.enums["MAV_CMD"].get(command)
        label = name or (known.name if known is not None else str(command))
        loop = asyncio.get_running_loop()
        waiters = self._acks.setdefault(command, [])
        started = time.monotonic()
        try:
            for attempt in range(self.retries + 1):
                fut: asyncio.Future[Any] = loop.create_future()
                waiters.append(fut)
                self.send(build(attempt))
                deadline = loop.time() + self.timeout_s
                try:
                    while True:
                        ack = await asyncio.wait_for(asyncio.shield(fut), max(0.0, deadline - loop.time()))
                        if ack.result == _M.MAV_RESULT_IN_PROGRESS:
                            waiters.remove(fut)
                            fut = loop.create_future()
                            waiters.append(fut)
                            deadline = loop.time() + self.timeout_s * 5
                            continue
                        return self._check_ack(ack, label)
                except TimeoutError:
                    continue
                finally:
                    if fut in waiters:
                        waiters.remove(fut)
            raise CommandTimeout(self.vehicle, label, f"no COMMAND_ACK after {self.retries + 1} tries "
                                 f"({time.monotonic() - started:.1f} s)")
        finally:
            if not waiters:
                self._acks.pop(command, None)

    def _check_ack(self, ack: Any, label: str) -> Any:
        result = ack.result
        if result == _M.MAV_RESULT_ACCEPTED:
            return ack
        name = _RESULT_NAMES.get(result, str(result))
        if result == _M.MAV_RESULT_UNSUPPORTED:
            raise UnsupportedCommand(self.vehicle, label, f"autopilot answered {name}")
        raise CommandRejected(self.vehicle, label, f"autopilot answered {name}", result=name.lower())

    async def set_mode(self, mode: str) -> Any:
        params = mode_params(self.mav_type, self.autopilot, mode)
        return await self.command_long(_M.MAV_CMD_DO_SET_MODE, *params, name=f"set_mode {mode.upper()}")

    # -- mission protocol --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _mission_transaction(self) -> Any:
        async with self._mission_lock:
            self._mission_inbox = asyncio.Queue()
            try:
                yield self._mission_inbox
            finally:
                self._mission_inbox = None

    async def _next(self, inbox: asyncio.Queue[Any], resend: Callable[[], None], what: str) -> Any:
        for _ in range(self.retries + 1):
            try:
                return await asyncio.wait_for(inbox.get(), self.timeout_s)
            except TimeoutError:
                resend()
        raise CommandTimeout(self.vehicle, "mission", f"no {what} after {self.retries + 1} tries")

    def _uses_home_item(self) -> bool:
        return self.autopilot != _M.MAV_AUTOPILOT_PX4

    async def upload_mission(self, items: list[MissionItem]) -> int:
        """Upload ``items`` (replacing the vehicle's mission); returns the number of items the vehicle holds."""
        wire = list(items)
        if self._uses_home_item():
            lat, lon, alt = self.home or (0.0, 0.0, 0.0)
            wire.insert(0, MissionItem(_M.MAV_CMD_NAV_WAYPOINT, lat, lon, alt, frame=_M.MAV_FRAME_GLOBAL))
        count = len(wire)
        async with self._mission_transaction() as inbox:
            last: list[Any] = [_M.MAVLink_mission_count_message(self.target_sysid, self.target_compid, count, 0)]
            self.send(last[0])
            while True:
                msg = await self._next(inbox, lambda: self.send(last[0]), "MISSION_REQUEST or MISSION_ACK")
                msgid = msg.get_msgId()
                if msgid == _M.MAVLINK_MSG_ID_MISSION_ACK:
                    if msg.type != _M.MAV_MISSION_ACCEPTED:
                        name = _MISSION_RESULT_NAMES.get(msg.type, str(msg.type))
                        raise CommandRejected(self.vehicle, "upload_mission", f"vehicle answered {name}")
                    return count
                if msgid not in (_M.MAVLINK_MSG_ID_MISSION_REQUEST, _M.MAVLINK_MSG_ID_MISSION_REQUEST_INT):
                    continue
                if not 0 <= msg.seq < count:
                    continue
                item = wire[msg.seq]
                as_int = msgid == _M.MAVLINK_MSG_ID_MISSION_REQUEST_INT
                last[0] = self._item_message(msg.seq, item, as_int)
                self.send(last[0])

    def _item_message(self, seq: int, item: MissionItem, as_int: bool) -> Any:
        frame = item.frame
        if as_int:
            frame = {_M.MAV_FRAME_GLOBAL_RELATIVE_ALT: _M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT,
                     _M.MAV_FRAME_GLOBAL: _M.MAV_FRAME_GLOBAL_INT}.get(frame, frame)
            return _M.MAVLink_mission_item_int_message(
                self.target_sysid, self.target_compid, seq, frame, item.command, 0, int(item.autocontinue),
                item.param1, item.param2, item.param3, item.param4, round(item.lat_deg * 1e7),
                round(item.lon_deg * 1e7), item.alt_m, 0)
        return _M.MAVLink_mission_item_message(
            self.target_sysid, self.target_compid, seq, frame, item.command, 0, int(item.autocontinue),
            item.param1, item.param2, item.param3, item.param4, item.lat_deg, item.lon_deg, item.alt_m, 0)

    async def download_mission(self) -> list[MissionItem]:
        """Read the vehicle's mission back (without ArduPilot's home item)."""
        async with self._mission_transaction() as inbox:
            request_list = _M.MAVLink_mission_request_list_message(self.target_sysid, self.target_compid, 0)
            self.send(request_list)
            while True:
                msg = await self._next(inbox, lambda: self.send(request_list), "MISSION_COUNT")
                if msg.get_msgId() == _M.MAVLINK_MSG_ID_MISSION_COUNT:
                    count = msg.count
                    break
            items: list[MissionItem] = []
            for seq in range(count):
                request = _M.MAVLink_mission_request_int_message(self.target_sysid, self.target_compid, seq, 0)
                self.send(request)
                while True:
                    msg = await self._next(inbox, lambda r=request: self.send(r), f"MISSION_ITEM_INT {seq}")
                    msgid = msg.get_msgId()
                    if msgid in (_M.MAVLINK_MSG_ID_MISSION_ITEM_INT, _M.MAVLINK_MSG_ID_MISSION_ITEM) \
                            and msg.seq == seq:
                        items.append(_from_wire(msg, msgid == _M.MAVLINK_MSG_ID_MISSION_ITEM_INT))
                        break
            self.send(_M.MAVLink_mission_ack_message(self.target_sysid, self.target_compid,
                                                     _M.MAV_MISSION_ACCEPTED, 0))
        if self._uses_home_item() and items:
            items = items[1:]
        return items


def _from_wire(msg: Any, is_int: bool) -> MissionItem:
    frame = msg.frame
    if is_int:
        frame = {_M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT: _M.MAV_FRAME_GLOBAL_RELATIVE_ALT,
                 _M.MAV_FRAME_GLOBAL_INT: _M.MAV_FRAME_GLOBAL}.get(frame, frame)
        lat, lon = msg.x / 1e7, msg.y / 1e7
    else:
        lat, lon = msg.x, msg.y
    return MissionItem(command=msg.command, lat_deg=lat, lon_deg=lon, alt_m=msg.z, frame=frame,
                       param1=msg.param1, param2=msg.param2, param3=msg.param3, param4=msg.param4,
                       autocontinue=bool(msg.autocontinue))
