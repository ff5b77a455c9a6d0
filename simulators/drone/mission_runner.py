"""AUTO mode: executes the stored mission item by item, like ArduCopter's mission engine.

NAV items (TAKEOFF, WAYPOINT, LOITER_*, LAND, RETURN_TO_LAUNCH) become navigation tasks; DO items
(DO_CHANGE_SPEED, DO_JUMP) run instantly on the way to the next NAV item. Completing a NAV item sends
"Reached command #N" and MISSION_ITEM_REACHED, as ArduCopter does when its verify step succeeds.
"""

from __future__ import annotations

import math
from typing import Protocol

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .mission_store import MissionItem, MissionStore
from .nav import GotoTask, LandTask, NavLimits, NavTask, RtlTask, TakeoffTask
from .vehicle import Setpoint, Vehicle

CMD = mavlink2
INFO = mavlink2.MAV_SEVERITY_INFO

_NAV_NAMES = {
    CMD.MAV_CMD_NAV_WAYPOINT: "WP",
    CMD.MAV_CMD_NAV_TAKEOFF: "Takeoff",
    CMD.MAV_CMD_NAV_LOITER_TIME: "LoitTime",
    CMD.MAV_CMD_NAV_LOITER_TURNS: "LoitTurns",
    CMD.MAV_CMD_NAV_LOITER_UNLIM: "LoitUnlim",
    CMD.MAV_CMD_NAV_LAND: "Land",
    CMD.MAV_CMD_NAV_RETURN_TO_LAUNCH: "RTL",
}


class AutoContext(Protocol):
    """What the mission engine needs from the autopilot."""

    vehicle: Vehicle
    land_complete: bool

    def limits(self) -> NavLimits: ...
    def item_target(self, item: MissionItem) -> tuple[float, float, float]: ...
    def new_rtl_task(self) -> RtlTask: ...
    def change_speed(self, speed_type: int, speed_mps: float) -> None: ...
    def text(self, severity: int, text: str) -> None: ...
    def item_reached(self, seq: int) -> None: ...
    def current_changed(self) -> None: ...


class MissionRunner:
    def __init__(self, store: MissionStore, ctx: AutoContext) -> None:
        self._store = store
        self._ctx = ctx
        self.current_seq = 0
        self.state = mavlink2.MISSION_STATE_NOT_STARTED
        self.running = False
        self.paused = False
        self._item: MissionItem | None = None
        self._task: NavTask | None = None
        self._hold_s = 0.0
        self._hold_until_s: float | None = None
        self._jump_counts: dict[int, int] = {}

    @property
    def mission_state(self) -> int:
        if self._store.nav_total == 0:
            return mavlink2.MISSION_STATE_NO_MISSION
        if self.running and self.paused:
            return mavlink2.MISSION_STATE_PAUSED
        return self.state

    @property
    def task(self) -> NavTask | None:
        return self._task if self.running else None

    def start(self, now_s: float, first_seq: int = 0) -> bool:
        """MISSION_START, or entering AUTO in flight: resume the current item or start from first_seq."""
        if self._store.nav_total == 0:
            return False
        if first_seq > 0:
            seq = first_seq
        elif self.state == mavlink2.MISSION_STATE_ACTIVE and self.current_seq > 0:
            seq = self.current_seq  # resume where AUTO was left
        else:
            seq = 1
            self._jump_counts.clear()
        self.running = True
        self.paused = False
        self.state = mavlink2.MISSION_STATE_ACTIVE
        self._start_item(seq, now_s)
        return True

    def stop(self) -> None:
        """Leaving AUTO: remember the current item so AUTO can resume it."""
        self.running = False
        self.paused = False

    def set_current(self, seq: int, now_s: float) -> bool:
        if not 0 <= seq <= self._store.nav_total:
            return False
        seq = max(1, seq)
        if self.running:
            self._start_item(seq, now_s)
        else:
            self.current_seq = seq
            if self.state == mavlink2.MISSION_STATE_COMPLETE:
                self.state = mavlink2.MISSION_STATE_NOT_STARTED
            self._ctx.current_changed()
        return True

    def mission_replaced(self, now_s: float) -> None:
        """A new mission arrived: keep flying from the same index if AUTO is running, else start over."""
        self._jump_counts.clear()
        if self.running and self._store.nav_total > 0:
            self._start_item(min(max(1, self.current_seq), self._store.nav_total), now_s)
            return
        self.running = False
        self.current_seq = 0
        self.state = mavlink2.MISSION_STATE_NOT_STARTED
        self._task = None
        self._ctx.current_changed()

    def step(self, now_s: float) -> Setpoint | None:
        """Setpoint for this step, or None when the autopilot should just hold position."""
        if not self.running or self._task is None:
            return None
        if self.paused:
            return None
        lim = self._ctx.limits()
        sp = self._task.setpoint(self._ctx.vehicle, lim, now_s)
        item = self._item
        if item is None or not self._task.done:
            return sp
        if isinstance(self._task, GotoTask) and self._hold_until_s is None:
            self._hold_until_s = now_s + self._hold_s
            if math.isinf(self._hold_s):
                return sp
        if self._hold_until_s is not None and now_s < self._hold_until_s:
            return sp
        self._complete(item, now_s)
        return self._task.setpoint(self._ctx.vehicle, lim, now_s) if self._task is not None else None

    def _complete(self, item: MissionItem, now_s: float) -> None:
        self._ctx.text(INFO, f"Reached command #{item.seq}")
        self._ctx.item_reached(item.seq)
        if isinstance(self._task, (LandTask, RtlTask)):
            # Landed and disarmed: the mission is over even if items follow.
            self._finish()
            return
        self._start_item(item.seq + 1, now_s)

    def _finish(self) -> None:
        self.state = mavlink2.MISSION_STATE_COMPLETE
        self.running = False
        self._item = None
        self._task = None
        self._ctx.text(INFO, "Mission complete")
        self._ctx.current_changed()

    def _start_item(self, seq: int, now_s: float) -> None:
        """Run DO items up to the next NAV item and make that NAV item current."""
        for _ in range(4 * (self._store.nav_total + 1)):
            item = self._store.flyable(seq)
            if item is None:
                self._finish()
                return
            if not item.is_nav:
                seq = self._run_do(item)
                continue
            task, hold_s = self._nav_task(item)
            if task is None:
                self._ctx.text(mavlink2.MAV_SEVERITY_WARNING, f"Mission: skipping unsupported cmd {item.command}")
                seq += 1
                continue
            self._item, self._task, self._hold_s = item, task, hold_s
            self._hold_until_s = None
            self.current_seq = seq
            self._ctx.text(INFO, f"Mission: {seq} {_NAV_NAMES.get(item.command, str(item.command))}")
            self._ctx.current_changed()
            return
        self._ctx.text(mavlink2.MAV_SEVERITY_WARNING, "Mission: jump loop")
        self._finish()

    def _nav_task(self, item: MissionItem) -> tuple[NavTask | None, float]:
        v = self._ctx.vehicle
        north, east, up = self._ctx.item_target(item)
        cmd = item.command
        if cmd == CMD.MAV_CMD_NAV_TAKEOFF:
            return TakeoffTask(v.north_m, v.east_m, up), 0.0
        if cmd == CMD.MAV_CMD_NAV_WAYPOINT:
            return GotoTask(north, east, up), max(0.0, item.param1)
        if cmd == CMD.MAV_CMD_NAV_LOITER_TIME:
            return GotoTask(north, east, up), max(0.0, item.param1)
        if cmd == CMD.MAV_CMD_NAV_LOITER_TURNS:
            radius_m = max(abs(item.param3), 5.0)
            return GotoTask(north, east, up), max(0.0, item.param1) * 2 * math.pi * radius_m / 5.0
        if cmd == CMD.MAV_CMD_NAV_LOITER_UNLIM:
            return GotoTask(north, east, up), math.inf
        if cmd == CMD.MAV_CMD_NAV_LAND:
            if item.x == 0 and item.y == 0:
                return LandTask(), 0.0
            return LandTask(north, east), 0.0
        if cmd == CMD.MAV_CMD_NAV_RETURN_TO_LAUNCH:
            return self._ctx.new_rtl_task(), 0.0
        return None, 0.0

    def _run_do(self, item: MissionItem) -> int:
        """Execute a DO/CONDITION item; returns the next seq to run."""
        if item.command == CMD.MAV_CMD_DO_CHANGE_SPEED:
            self._ctx.change_speed(int(item.param1), item.param2)
        elif item.command == CMD.MAV_CMD_DO_JUMP:
            target, repeat = int(item.param1), int(item.param2)
            done = self._jump_counts.get(item.seq, 0)
            if repeat < 0 or done < repeat:
                self._jump_counts[item.seq] = done + 1
                return target
        return item.seq + 1
