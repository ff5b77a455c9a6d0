"""Commands any vehicle can be sent, whatever protocol it speaks, and their results.

The gateway's ``Fleet`` routes a command to the driver that owns the vehicle; the driver translates it
(MAVLink COMMAND_LONG/INT, the mission protocol, SET_MODE; an MQTT ``cmd`` message) and waits for the
vehicle's answer. Results come back as ``CommandResult``; failures as the exceptions below, never as a
protocol's own error types. Positions are WGS84 degrees, altitudes metres above home, speeds m/s.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

__all__ = [
    "Arm",
    "Command",
    "CommandError",
    "CommandRejected",
    "CommandResult",
    "CommandTarget",
    "CommandTimeout",
    "Disarm",
    "DownloadMission",
    "FollowRoute",
    "Goto",
    "Hold",
    "Land",
    "MissionItem",
    "ResumePatrol",
    "ReturnHome",
    "SetMode",
    "StartMission",
    "Takeoff",
    "UnknownVehicle",
    "UnsupportedCommand",
    "UploadMission",
]


@dataclass(frozen=True, slots=True)
class MissionItem:
    """One mission item, as MAVLink's MISSION_ITEM_INT carries it (lat/lon in degrees, alt in metres).

    ``command`` is a MAV_CMD number (16 NAV_WAYPOINT, 22 NAV_TAKEOFF, 20 NAV_RETURN_TO_LAUNCH, 21 NAV_LAND,
    19 NAV_LOITER_TIME, 178 DO_CHANGE_SPEED); ``frame`` a MAV_FRAME (3 GLOBAL_RELATIVE_ALT by default).
    """

    command: int
    lat_deg: float = 0.0
    lon_deg: float = 0.0
    alt_m: float = 0.0
    frame: int = 3
    param1: float = 0.0
    param2: float = 0.0
    param3: float = 0.0
    param4: float = 0.0
    autocontinue: bool = True


class Command:
    """Base of all commands; ``name`` is what results and logs call it."""

    name = "command"


@dataclass(frozen=True, slots=True)
class Arm(Command):
    name = "arm"


@dataclass(frozen=True, slots=True)
class Disarm(Command):
    force: bool = False
    name = "disarm"


@dataclass(frozen=True, slots=True)
class Takeoff(Command):
    alt_rel_m: float = 10.0
    name = "takeoff"


@dataclass(frozen=True, slots=True)
class Land(Command):
    name = "land"


@dataclass(frozen=True, slots=True)
class ReturnHome(Command):
    """Drones: RTL. Patrol cars: return to base."""

    name = "return_home"


@dataclass(frozen=True, slots=True)
class Goto(Command):
    lat_deg: float
    lon_deg: float
    alt_rel_m: float | None = None
    speed_mps: float | None = None
    name = "goto"


@dataclass(frozen=True, slots=True)
class SetMode(Command):
    mode: str
    name = "set_mode"


@dataclass(frozen=True, slots=True)
class StartMission(Command):
    name = "start_mission"


@dataclass(frozen=True, slots=True)
class Hold(Command):
    """Stop and hold position (drones: LOITER/BRAKE; cars: stop)."""

    name = "hold"


@dataclass(frozen=True, slots=True)
class ResumePatrol(Command):
    name = "resume"


@dataclass(frozen=True, slots=True)
class FollowRoute(Command):
    waypoints: tuple[tuple[float, float], ...]
    loop: bool = False
    speed_mps: float | None = None
    name = "route"


@dataclass(frozen=True, slots=True)
class UploadMission(Command):
    items: tuple[MissionItem, ...]
    name = "upload_mission"


@dataclass(frozen=True, slots=True)
class DownloadMission(Command):
    name = "download_mission"


@dataclass(slots=True)
class CommandResult:
    vehicle: str
    command: str
    result: str = "accepted"  # accepted | completed | in_progress
    detail: str = ""
    value: Any = None
    elapsed_s: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


class CommandError(Exception):
    """A command did not succeed; ``vehicle`` and ``command`` say which."""

    def __init__(self, vehicle: str, command: str, detail: str) -> None:
        super().__init__(f"{command} for {vehicle}: {detail}")
        self.vehicle = vehicle
        self.command = command
        self.detail = detail


class CommandRejected(CommandError):
    """The vehicle answered and said no (MAV_RESULT_DENIED/FAILED, MQTT ack `rejected`/`failed`)."""

    def __init__(self, vehicle: str, command: str, detail: str, result: str = "rejected") -> None:
        super().__init__(vehicle, command, detail)
        self.result = result


class CommandTimeout(CommandError):
    """No answer within the timeout (after the configured retries)."""


class UnsupportedCommand(CommandError):
    """The vehicle or its driver cannot do this command."""


class UnknownVehicle(CommandError):
    """No driver knows this vehicle (never seen, or not connected)."""


class CommandTarget(Protocol):
    """Implemented by drivers that can command their vehicles."""

    def owns(self, vehicle: str) -> bool: ...

    async def execute(self, vehicle: str, command: Command) -> CommandResult: ...
