"""Simulated time: wall-clock time scaled by a time factor.

Everything that happens *inside* the vehicle (physics, battery, loiter timers, fault durations) runs on
simulated seconds so a test can fly a ten-minute patrol in thirty wall seconds. Only the network link to
the real peer (latency, reconnect back-off) runs on wall time, because the peer does not speed up.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass


class SimClock:
    """Monotonic simulated clock shared by every drone of a fleet so they stay time-aligned."""

    def __init__(self, time_factor: float = 1.0) -> None:
        if time_factor <= 0:
            raise ValueError("time_factor must be > 0")
        self._time_factor = float(time_factor)
        self._wall_base_s = time.monotonic()
        self._sim_base_s = 0.0
        self._unix_base_s = time.time()

    @property
    def time_factor(self) -> float:
        """How many simulated seconds pass per wall second."""
        return self._time_factor

    def set_time_factor(self, time_factor: float) -> None:
        """Change speed without a jump in simulated time (rebases the clock)."""
        if time_factor <= 0:
            raise ValueError("time_factor must be > 0")
        now_wall_s = time.monotonic()
        self._sim_base_s = self.now_s()
        self._wall_base_s = now_wall_s
        self._time_factor = float(time_factor)

    def now_s(self) -> float:
        """Simulated seconds since the clock was created."""
        return self._sim_base_s + (time.monotonic() - self._wall_base_s) * self._time_factor

    def unix_s(self, sim_s: float) -> float:
        """Simulated UNIX time for a simulated instant (start wall time + simulated elapsed)."""
        return self._unix_base_s + sim_s

    def wall_s(self, sim_s: float) -> float:
        """Wall seconds that `sim_s` simulated seconds take at the current factor."""
        return sim_s / self._time_factor

    async def sleep(self, sim_s: float) -> None:
        """Sleep for simulated seconds."""
        await asyncio.sleep(max(0.0, sim_s / self._time_factor))


@dataclass(slots=True)
class Deadline:
    """A protocol timeout in simulated seconds with a wall-clock floor.

    The peer (gateway, ground station) runs in real time, so at 50x a 1.5 s mission-item retry would be
    only 30 ms of wall time; the floor keeps retries from firing before a real peer could possibly answer.
    """

    sim_at_s: float
    wall_at_s: float

    @classmethod
    def after(cls, clock: SimClock, sim_s: float, min_wall_s: float) -> Deadline:
        return cls(clock.now_s() + sim_s, time.monotonic() + min_wall_s)

    def expired(self, clock: SimClock) -> bool:
        return clock.now_s() >= self.sim_at_s and time.monotonic() >= self.wall_at_s
