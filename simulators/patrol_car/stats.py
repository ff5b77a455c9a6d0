"""Counters of what the fleet sent and received, so tests and benchmarks can compare them with what arrived."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["FleetStats"]


@dataclass
class FleetStats:
    """What the simulated fleet did. Message counts are PUBLISH packets handed to the MQTT client.

    ``samples`` counts every good telemetry sample once (an array of 10 counts 10), including samples sent
    late in a reconnect burst; ``duplicate_*`` and ``malformed_sent`` are extra on top. ``puback_received``
    is how many QoS 1 publishes the broker confirmed (as of reading ``CarFleet.stats``).
    """

    published_messages: int = 0  # every PUBLISH: telemetry, duplicates, malformed, status, events, acks
    telemetry_messages: int = 0  # good telemetry PUBLISHes (objects or arrays), duplicates excluded
    samples: int = 0
    duplicates_sent: int = 0  # extra telemetry PUBLISHes with the same payload
    duplicate_samples: int = 0
    malformed_sent: int = 0
    malformed_by_kind: dict[str, int] = field(default_factory=dict)
    status_messages: int = 0
    events_sent: int = 0
    acks_sent: int = 0
    commands_received: int = 0
    samples_buffered: int = 0  # taken while offline and kept for the reconnect burst
    samples_dropped: int = 0  # taken while offline and lost (burst off, or the backlog overflowed)
    burst_messages: int = 0  # telemetry PUBLISHes that carried backlog after a reconnect
    disconnects: int = 0  # connection losses (injected or real)
    reconnects: int = 0  # successful re-connections after a loss
    connect_failures: int = 0
    late_ticks: int = 0  # the tick loop fell behind schedule (CPU overload)
    puback_received: int = 0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)
