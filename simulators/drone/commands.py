"""COMMAND_LONG / COMMAND_INT handling: normalise both forms, dispatch, answer with COMMAND_ACK.

Each handler returns a MAV_RESULT and, when a command is refused for a reason a pilot should see, the
autopilot also sends the STATUSTEXT ArduCopter would (for example "PreArm: Need 3D Fix").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .autopilot import FORCE_MAGIC, Autopilot
from .geo import GeoPoint
from .mission_store import AMSL_FRAMES, GLOBAL_FRAMES
from .modes import CopterMode
from .streams import AUTOPILOT_VERSION, DATA_STREAM_GROUPS, HOME_POSITION, StreamScheduler

M = mavlink2
ACCEPTED = M.MAV_RESULT_ACCEPTED
DENIED = M.MAV_RESULT_DENIED
FAILED = M.MAV_RESULT_FAILED
UNSUPPORTED = M.MAV_RESULT_UNSUPPORTED
WARNING = M.MAV_SEVERITY_WARNING


@dataclass(slots=True)
class Command:
    """A command in one shape: lat/lon (params 5/6) in degrees, alt (param 7) in metres, with the frame
    saying how to read the altitude (COMMAND_LONG has none: ArduPilot assumes relative-to-home)."""

    command: int
    params: tuple[float, float, float, float, float, float, float]
    frame: int
    src_system: int
    src_component: int

    @classmethod
    def from_message(cls, msg: mavlink2.MAVLink_message) -> Command:
        if msg.get_type() == "COMMAND_INT":
            if msg.frame in GLOBAL_FRAMES:
                p5, p6 = msg.x / 1e7, msg.y / 1e7
            else:
                p5, p6 = float(msg.x), float(msg.y)
            params = (msg.param1, msg.param2, msg.param3, msg.param4, p5, p6, msg.z)
            frame = msg.frame
        else:
            params = (msg.param1, msg.param2, msg.param3, msg.param4, msg.param5, msg.param6, msg.param7)
            frame = M.MAV_FRAME_GLOBAL_RELATIVE_ALT
        return cls(msg.command, params, frame, msg.get_srcSystem(), msg.get_srcComponent())


class CommandContext(Protocol):
    """What command handling needs from the drone."""

    ap: Autopilot
    streams: StreamScheduler

    def send(self, msg: mavlink2.MAVLink_message) -> None: ...
    def send_now(self, msg_id: int) -> bool: ...
    def text(self, severity: int, text: str) -> None: ...


class CommandHandler:
    def __init__(self, ctx: CommandContext) -> None:
        self._ctx = ctx
        self._handlers: dict[int, Callable[[Command], int]] = {
            M.MAV_CMD_COMPONENT_ARM_DISARM: self._arm_disarm,
            M.MAV_CMD_NAV_TAKEOFF: self._takeoff,
            M.MAV_CMD_NAV_LAND: lambda c: self._mode(CopterMode.LAND),
            M.MAV_CMD_NAV_RETURN_TO_LAUNCH: lambda c: self._mode(CopterMode.RTL),
            M.MAV_CMD_NAV_LOITER_UNLIM: lambda c: self._mode(CopterMode.LOITER),
            M.MAV_CMD_DO_SET_MODE: self._do_set_mode,
            M.MAV_CMD_MISSION_START: self._mission_start,
            M.MAV_CMD_DO_SET_MISSION_CURRENT: self._set_mission_current,
            M.MAV_CMD_DO_REPOSITION: self._reposition,
            M.MAV_CMD_DO_CHANGE_SPEED: self._change_speed,
            M.MAV_CMD_DO_PAUSE_CONTINUE: self._pause_continue,
            M.MAV_CMD_CONDITION_YAW: self._condition_yaw,
            M.MAV_CMD_DO_SET_HOME: self._set_home,
            M.MAV_CMD_GET_HOME_POSITION: lambda c: self._request(HOME_POSITION),
            M.MAV_CMD_SET_MESSAGE_INTERVAL: self._set_message_interval,
            M.MAV_CMD_GET_MESSAGE_INTERVAL: self._get_message_interval,
            M.MAV_CMD_REQUEST_MESSAGE: lambda c: self._request(int(c.params[0])),
            M.MAV_CMD_REQUEST_AUTOPILOT_CAPABILITIES: lambda c: self._request(AUTOPILOT_VERSION),
        }

    def handle(self, msg: mavlink2.MAVLink_message) -> None:
        """Execute COMMAND_LONG or COMMAND_INT and acknowledge it to the sender."""
        cmd = Command.from_message(msg)
        handler = self._handlers.get(cmd.command)
        result = handler(cmd) if handler is not None else UNSUPPORTED
        self._ctx.send(M.MAVLink_command_ack_message(cmd.command, result, 0, 0, cmd.src_system, cmd.src_component))

    def request_data_stream(self, msg: mavlink2.MAVLink_message) -> None:
        """Legacy REQUEST_DATA_STREAM: set a whole group of messages to one rate (0 or stop = off)."""
        rate_hz = msg.req_message_rate if msg.start_stop else 0
        for msg_id in DATA_STREAM_GROUPS.get(msg.req_stream_id, ()):
            self._ctx.streams.set_rate_hz(msg_id, rate_hz, self._ctx.ap.now_s)

    # ----------------------------------------------------------------- handlers

    def _refused(self, reason: str | None) -> int:
        if reason:
            self._ctx.text(WARNING, reason)
        return FAILED

    def _arm_disarm(self, cmd: Command) -> int:
        force = round(cmd.params[1]) == FORCE_MAGIC
        ap = self._ctx.ap
        ok, reason = ap.arm(force) if cmd.params[0] >= 0.5 else ap.disarm(force)
        return ACCEPTED if ok else self._refused(reason)

    def _takeoff(self, cmd: Command) -> int:
        ok, reason = self._ctx.ap.takeoff(cmd.params[6])
        return ACCEPTED if ok else self._refused(reason)

    def _mode(self, mode: int) -> int:
        ok, reason = self._ctx.ap.set_mode(mode)
        return ACCEPTED if ok else self._refused(reason)

    def _do_set_mode(self, cmd: Command) -> int:
        if not int(cmd.params[0]) & M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
            return UNSUPPORTED  # only ArduPilot custom modes are meaningful
        return self._mode(int(cmd.params[1]))

    def _mission_start(self, cmd: Command) -> int:
        ok, reason = self._ctx.ap.start_mission(max(0, int(cmd.params[0])))
        return ACCEPTED if ok else self._refused(reason)

    def _set_mission_current(self, cmd: Command) -> int:
        return ACCEPTED if self._ctx.ap.set_current(int(cmd.params[0])) else DENIED

    def _reposition(self, cmd: Command) -> int:
        """DO_REPOSITION: GUIDED goto; NaN/0 lat-lon keeps the position, NaN alt keeps the height."""
        ap = self._ctx.ap
        speed, flags, _, yaw, lat, lon, alt = cmd.params
        if ap.mode != CopterMode.GUIDED:
            if not int(flags) & M.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE:
                return DENIED
            ok, reason = ap.set_mode(CopterMode.GUIDED)
            if not ok:
                return self._refused(reason)
        v = ap.vehicle
        if math.isnan(lat) or math.isnan(lon) or (lat == 0 and lon == 0):
            north, east = v.north_m, v.east_m
        else:
            north, east = ap.frame.to_local(lat, lon)
        up = None if math.isnan(alt) else ap.up_from_alt(alt, cmd.frame in AMSL_FRAMES)
        if not ap.guided_goto(north, east, up, speed if speed > 0 else None):
            return FAILED
        if not math.isnan(yaw):
            ap.set_yaw(yaw)
        return ACCEPTED

    def _change_speed(self, cmd: Command) -> int:
        self._ctx.ap.change_speed(int(cmd.params[0]), cmd.params[1])
        return ACCEPTED

    def _pause_continue(self, cmd: Command) -> int:
        return ACCEPTED if self._ctx.ap.pause(cmd.params[0] < 0.5) else FAILED

    def _condition_yaw(self, cmd: Command) -> int:
        ap = self._ctx.ap
        angle, _, direction, relative = cmd.params[:4]
        if relative:
            angle = ap.vehicle.heading_deg + (angle if direction >= 0 else -angle)
        return ACCEPTED if ap.set_yaw(angle) else FAILED

    def _set_home(self, cmd: Command) -> int:
        ap = self._ctx.ap
        if cmd.params[0] >= 0.5:
            if not ap.gps.has_3d_fix:
                return FAILED
            ap.set_home(ap.estimated_position())
            return ACCEPTED
        lat, lon, alt = cmd.params[4:7]
        if not (-90 <= lat <= 90 and -180 <= lon <= 180) or (lat == 0 and lon == 0):
            return DENIED
        ap.set_home(GeoPoint(lat, lon, alt))
        return ACCEPTED

    def _set_message_interval(self, cmd: Command) -> int:
        streams, now_s = self._ctx.streams, self._ctx.ap.now_s
        return ACCEPTED if streams.set_interval_us(int(cmd.params[0]), cmd.params[1], now_s) else DENIED

    def _get_message_interval(self, cmd: Command) -> int:
        msg_id = int(cmd.params[0])
        self._ctx.send(M.MAVLink_message_interval_message(msg_id, self._ctx.streams.interval_us(msg_id)))
        return ACCEPTED

    def _request(self, msg_id: int) -> int:
        return ACCEPTED if self._ctx.send_now(msg_id) else DENIED
