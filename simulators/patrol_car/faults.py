"""Fault injection settings: what real patrol cars do to a gateway (drop offline, skewed clocks, duplicates,
backlog bursts, garbage payloads), so the gateway's handling of each can be tested on purpose.

Probabilities are per telemetry sample (per car). Durations are wall-clock seconds, because a network outage
happens in real time even when the simulation runs faster.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["MALFORMED_KINDS", "CarFaults"]

MALFORMED_KINDS = ("not_json", "wrong_types", "lat_out_of_range", "unknown_version")


@dataclass
class CarFaults:
    """Faults applied to every car of a fleet. Runtime faults for single cars are methods on `CarFleet`.

    - ``disconnect_prob`` / ``disconnect_for_s``: the car's TCP connection is cut abruptly (no MQTT
      DISCONNECT, so the broker publishes the last will ``offline``); it reconnects after ``disconnect_for_s``
      with its persistent session.
    - ``burst_on_reconnect``: samples taken while offline are kept (at most ``max_backlog``, oldest dropped)
      and published all at once after the reconnect, as arrays of up to ``burst_batch`` samples
      (0 = the fleet's ``batch``, i.e. one message per sample when not batching). Off: they are dropped.
    - ``clock_skew_s`` (+ a per-car uniform offset in ``±clock_skew_spread_s``): added to every ``ts``.
    - ``duplicate_prob``: a telemetry message is published twice (identical payload).
    - ``malformed_prob``: an extra bad telemetry payload is published next to the good one, one of
      ``malformed_kinds``: ``not_json`` (truncated JSON), ``wrong_types`` (strings for numbers),
      ``lat_out_of_range`` (|lat| > 90), ``unknown_version`` (``"v": 99``).
    """

    disconnect_prob: float = 0.0
    disconnect_for_s: float = 5.0
    burst_on_reconnect: bool = True
    burst_batch: int = 0
    max_backlog: int = 3600
    clock_skew_s: float = 0.0
    clock_skew_spread_s: float = 0.0
    duplicate_prob: float = 0.0
    malformed_prob: float = 0.0
    malformed_kinds: tuple[str, ...] = MALFORMED_KINDS

    def __post_init__(self) -> None:
        for name in ("disconnect_prob", "duplicate_prob", "malformed_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.disconnect_for_s < 0 or self.clock_skew_spread_s < 0:
            raise ValueError("disconnect_for_s and clock_skew_spread_s must be >= 0")
        if not 0 <= self.burst_batch <= 1000:
            raise ValueError("burst_batch must be in [0, 1000] (the contract allows 1000 samples per array)")
        if self.max_backlog < 0:
            raise ValueError("max_backlog must be >= 0")
        self.malformed_kinds = tuple(self.malformed_kinds)
        unknown = set(self.malformed_kinds) - set(MALFORMED_KINDS)
        if unknown or not self.malformed_kinds:
            raise ValueError(f"malformed_kinds must be a non-empty subset of {MALFORMED_KINDS}")
