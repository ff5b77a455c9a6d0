"""A fleet of simulated drones sharing one simulated clock and one event loop."""

from __future__ import annotations

import asyncio
import math
import random
from collections.abc import Iterator
from typing import Any

from .clock import SimClock
from .drone import DEFAULT_HOME, SimulatedDrone
from .faults import FaultConfig
from .geo import offset_latlon
from .transport import parse_endpoint

DEFAULT_SPACING_M = 25.0


def spawn_points(count: int, home: tuple[float, float], spacing_m: float) -> list[tuple[float, float]]:
    """A square grid starting at home and growing north/east, spacing_m apart (drone 0 sits on home)."""
    cols = max(1, math.ceil(math.sqrt(count)))
    points = []
    for i in range(count):
        row, col = divmod(i, cols)
        points.append(offset_latlon(home[0], home[1], row * spacing_m, col * spacing_m))
    return points


class DroneFleet:
    """Owns `count` drones with consecutive sysids, all talking to `to` (each on its own socket)."""

    def __init__(
        self,
        count: int,
        to: str,
        *,
        first_sysid: int = 1,
        time_factor: float = 1.0,
        home: tuple[float, float] | None = None,
        faults: FaultConfig | None = None,
        seed: int | None = None,
        signing_key: bytes | None = None,
        spacing_m: float = DEFAULT_SPACING_M,
        stream_rate_cap_hz: float | None = None,
        **drone_kwargs: Any,
    ) -> None:
        if count < 1:
            raise ValueError("count must be >= 1")
        if first_sysid < 1 or first_sysid + count - 1 > 255:
            raise ValueError("sysids must fit in 1..255")
        endpoint = parse_endpoint(to)
        self.clock = SimClock(time_factor)
        rng = random.Random(seed)
        points = spawn_points(count, home or DEFAULT_HOME, spacing_m)
        self.drones: list[SimulatedDrone] = [
            SimulatedDrone(
                first_sysid + i,
                endpoint,
                home=points[i],
                yaw_deg=rng.uniform(0.0, 360.0),
                clock=self.clock,
                faults=faults,
                seed=rng.getrandbits(32) if seed is not None else None,
                signing_key=signing_key,
                stream_rate_cap_hz=stream_rate_cap_hz,
                endpoint_index=i,
                **drone_kwargs,
            )
            for i in range(count)
        ]

    def __len__(self) -> int:
        return len(self.drones)

    def __iter__(self) -> Iterator[SimulatedDrone]:
        return iter(self.drones)

    def __getitem__(self, index: int) -> SimulatedDrone:
        return self.drones[index]

    def by_sysid(self, sysid: int) -> SimulatedDrone:
        for drone in self.drones:
            if drone.sysid == sysid:
                return drone
        raise KeyError(sysid)

    async def start(self) -> None:
        await asyncio.gather(*(d.start() for d in self.drones))

    async def stop(self) -> None:
        await asyncio.gather(*(d.stop() for d in self.drones), return_exceptions=True)

    async def __aenter__(self) -> DroneFleet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


async def run_drone_fleet(
    count: int,
    to: str,
    *,
    first_sysid: int = 1,
    time_factor: float = 1.0,
    home: tuple[float, float] | None = None,
    faults: FaultConfig | None = None,
    stop: asyncio.Event | None = None,
    seed: int | None = None,
    signing_key: bytes | None = None,
    stream_rate_cap_hz: float | None = None,
) -> None:
    """Run a fleet until `stop` is set (forever if None; cancelling the task also stops it cleanly)."""
    fleet = DroneFleet(
        count,
        to,
        first_sysid=first_sysid,
        time_factor=time_factor,
        home=home,
        faults=faults,
        seed=seed,
        signing_key=signing_key,
        stream_rate_cap_hz=stream_rate_cap_hz,
    )
    await fleet.start()
    try:
        await (stop or asyncio.Event()).wait()
    finally:
        await fleet.stop()
