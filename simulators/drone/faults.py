"""Fault-injection configuration: lossy/slow links, link outages, GPS glitches, a failing battery.

A FaultConfig describes faults from the start of a run (times are simulated seconds after the drone
starts). The same faults can be triggered on a running drone through SimulatedDrone's methods.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class LinkDrop:
    """The radio link goes silent in both directions from start_s for duration_s (simulated seconds)."""

    start_s: float
    duration_s: float


@dataclass(frozen=True, slots=True)
class GpsGlitch:
    """The reported position jumps offset_m away (bearing_deg, random if None) for duration_s."""

    start_s: float
    duration_s: float = 5.0
    offset_m: float = 300.0
    bearing_deg: float | None = None


@dataclass(frozen=True, slots=True)
class LowBattery:
    """The pack's remaining charge drops to remaining_pct at start_s (triggers the battery failsafe)."""

    start_s: float
    remaining_pct: float = 15.0


@dataclass(slots=True)
class FaultConfig:
    """Faults for every drone of a fleet (or only the sysids listed in `sysids`).

    packet_loss_pct: each MAVLink frame is lost with this probability, independently in each direction.
    latency_ms: one-way delay added to each direction, in *wall* milliseconds (the peer is real-time).
    """

    packet_loss_pct: float = 0.0
    latency_ms: float = 0.0
    link_drops: list[LinkDrop] = field(default_factory=list)
    gps_glitches: list[GpsGlitch] = field(default_factory=list)
    low_batteries: list[LowBattery] = field(default_factory=list)
    sysids: frozenset[int] | None = None

    def link_drop(self, start_s: float, duration_s: float) -> FaultConfig:
        """Schedule a link outage; returns self for chaining."""
        self.link_drops.append(LinkDrop(start_s, duration_s))
        return self

    def gps_glitch(
        self,
        start_s: float = 0.0,
        duration_s: float = 5.0,
        offset_m: float = 300.0,
        bearing_deg: float | None = None,
    ) -> FaultConfig:
        """Schedule a GPS position jump; returns self for chaining."""
        self.gps_glitches.append(GpsGlitch(start_s, duration_s, offset_m, bearing_deg))
        return self

    def low_battery(self, start_s: float = 0.0, remaining_pct: float = 15.0) -> FaultConfig:
        """Schedule a sudden battery drop; returns self for chaining."""
        self.low_batteries.append(LowBattery(start_s, remaining_pct))
        return self

    def applies_to(self, sysid: int) -> bool:
        return self.sysids is None or sysid in self.sysids

    def timeline(self) -> list[tuple[float, LinkDrop | GpsGlitch | LowBattery]]:
        """Scheduled faults in start order."""
        events: list[tuple[float, LinkDrop | GpsGlitch | LowBattery]] = [
            (f.start_s, f) for f in (*self.link_drops, *self.gps_glitches, *self.low_batteries)
        ]
        events.sort(key=lambda e: e[0])
        return events
