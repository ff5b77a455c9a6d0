"""One interface for commanding any vehicle: the fleet routes each command to the driver that owns it.

The API and the task dispatcher call ``await fleet.execute("drone-7", Takeoff(20))`` or the shorthand
methods, and never care whether the vehicle speaks MAVLink or MQTT.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from drivers.commands import (
    Command,
    CommandResult,
    CommandTarget,
    DownloadMission,
    MissionItem,
    StartMission,
    UnknownVehicle,
    UploadMission,
)

__all__ = ["Fleet"]


class Fleet:
    def __init__(self) -> None:
        self._targets: list[CommandTarget] = []

    def add(self, driver: Any) -> None:
        """Register a driver if it can command vehicles (has ``owns`` and ``execute``)."""
        if callable(getattr(driver, "owns", None)) and callable(getattr(driver, "execute", None)):
            self._targets.append(driver)

    def target_for(self, vehicle: str) -> CommandTarget:
        for target in self._targets:
            if target.owns(vehicle):
                return target
        raise UnknownVehicle(vehicle, "-", "no connected driver knows this vehicle")

    async def execute(self, vehicle: str, command: Command) -> CommandResult:
        return await self.target_for(vehicle).execute(vehicle, command)

    async def upload_mission(self, vehicle: str, items: Sequence[MissionItem]) -> CommandResult:
        return await self.execute(vehicle, UploadMission(tuple(items)))

    async def download_mission(self, vehicle: str) -> list[MissionItem]:
        result = await self.execute(vehicle, DownloadMission())
        return list(result.value)

    async def start_mission(self, vehicle: str) -> CommandResult:
        return await self.execute(vehicle, StartMission())
