"""Commands from the gateway: validate a contract v1 command object, apply it to a car, and build the ack.

Validation is strict like real vehicle firmware: a bad parameter gives ``rejected`` with a reason, an unknown
type ``unsupported``; the car never half-applies a command.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from typing import Any

import orjson

from simulators.patrol_car.motion import SimulatedCar

__all__ = ["SUPPORTED_COMMANDS", "CommandProcessor", "ack_object"]

SUPPORTED_COMMANDS = ("goto", "route", "return_to_base", "hold", "resume")
AREA_MARGIN_M = 500.0  # targets this far outside the district are still accepted (snapped to the edge roads)
MAX_WAYPOINTS = 200


class _Reject(Exception):
    """A command parameter is invalid; the message is the ack's reason."""


def ack_object(cmd_id: str | None, result: str, reason: str | None, ts_ms: int) -> dict[str, Any]:
    return {"v": 1, "id": cmd_id, "ts": ts_ms, "result": result, "reason": reason}


def _number(params: dict[str, Any], key: str, *, required: bool = True) -> float | None:
    value = params.get(key)
    if value is None:
        if required:
            raise _Reject(f"missing {key}")
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _Reject(f"{key} must be a number")
    return float(value)


def _speed(params: dict[str, Any]) -> float | None:
    speed = _number(params, "speed_mps", required=False)
    if speed is not None and not 0.5 <= speed <= 40.0:
        raise _Reject("speed_mps must be in [0.5, 40]")
    return speed


class CommandProcessor:
    """Parses and executes commands for one car; repeats the ack of a command id it has already executed
    (a QoS 1 redelivery after a reconnect must not run the command twice)."""

    def __init__(self, car: SimulatedCar, memory: int = 64) -> None:
        self.car = car
        self._done: OrderedDict[str, tuple[str, str | None]] = OrderedDict()
        self._memory = memory

    def handle(self, payload: bytes, ts_ms: int) -> dict[str, Any]:
        """Execute one command payload and return the ack object to publish."""
        try:
            cmd = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return ack_object(None, "rejected", "payload is not JSON", ts_ms)
        if not isinstance(cmd, dict):
            return ack_object(None, "rejected", "command must be a JSON object", ts_ms)
        cmd_id = cmd.get("id")
        if cmd_id is not None and not isinstance(cmd_id, str):
            cmd_id = str(cmd_id)
        if cmd_id is not None and cmd_id in self._done:
            result, reason = self._done[cmd_id]
            return ack_object(cmd_id, result, reason, ts_ms)
        result, reason = self._execute(cmd)
        if cmd_id is not None:
            self._done[cmd_id] = (result, reason)
            while len(self._done) > self._memory:
                self._done.popitem(last=False)
        return ack_object(cmd_id, result, reason, ts_ms)

    def _execute(self, cmd: dict[str, Any]) -> tuple[str, str | None]:
        if cmd.get("v") != 1:
            return "rejected", "unknown_version"
        ctype = cmd.get("type")
        if not isinstance(ctype, str):
            return "rejected", "missing type"
        if ctype not in SUPPORTED_COMMANDS:
            return "unsupported", f"unknown command type {ctype!r}"
        params = cmd.get("params")
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return "rejected", "params must be an object"
        try:
            getattr(self, f"_cmd_{ctype}")(params)
        except _Reject as exc:
            return "rejected", str(exc)
        return "accepted", None

    def _point(self, lat: float, lon: float) -> tuple[float, float]:
        if not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0):
            raise _Reject("lat/lon out of range")
        x, y = self.car.grid.to_xy(lat, lon)
        if not self.car.grid.contains(x, y, AREA_MARGIN_M):
            raise _Reject("target outside the patrol district")
        return x, y

    def _cmd_goto(self, params: dict[str, Any]) -> None:
        lat = _number(params, "lat")
        lon = _number(params, "lon")
        assert lat is not None and lon is not None
        x, y = self._point(lat, lon)
        self.car.goto(x, y, _speed(params))

    def _cmd_route(self, params: dict[str, Any]) -> None:
        waypoints = params.get("waypoints")
        if not isinstance(waypoints, list) or not waypoints:
            raise _Reject("waypoints must be a non-empty list of [lat, lon]")
        if len(waypoints) > MAX_WAYPOINTS:
            raise _Reject(f"at most {MAX_WAYPOINTS} waypoints")
        points = []
        for wp in waypoints:
            if not isinstance(wp, list | tuple) or len(wp) != 2:
                raise _Reject("each waypoint must be [lat, lon]")
            pair = {"lat": wp[0], "lon": wp[1]}
            lat, lon = _number(pair, "lat"), _number(pair, "lon")
            assert lat is not None and lon is not None
            points.append(self._point(lat, lon))
        loop = params.get("loop", False)
        if not isinstance(loop, bool):
            raise _Reject("loop must be true or false")
        self.car.follow_route(points, loop=loop, speed_mps=_speed(params))

    def _cmd_return_to_base(self, params: dict[str, Any]) -> None:
        self.car.return_to_base()

    def _cmd_hold(self, params: dict[str, Any]) -> None:
        self.car.hold()

    def _cmd_resume(self, params: dict[str, Any]) -> None:
        self.car.resume()
