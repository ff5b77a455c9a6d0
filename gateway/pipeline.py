"""The processing chain from drivers to storage, listed once, in order.

1. validate: implausible samples become rejections with a reason (telemetry.validation);
2. live: the in-memory latest state and the live stream see accepted samples and events;
3. store: everything goes to the writer, which batches, commits or spools, then acknowledges.

Everything for one vehicle passes through this one path, so its order is kept. A failing optional stage (live)
is logged and counted, and the chain goes on: storage is never skipped.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

from drivers.base import Ack
from gateway.live import LiveState
from telemetry.model import Event, Rejection, Sample, VehicleInfo
from telemetry.validation import Validator
from telemetry.writer import TelemetryWriter

__all__ = ["Pipeline"]

log = logging.getLogger(__name__)


class Pipeline:
    """Callable as a driver's ``Emit``."""

    def __init__(self, writer: TelemetryWriter, validator: Validator | None = None,
                 live: LiveState | None = None) -> None:
        self.writer = writer
        self.validator = validator or Validator()
        self.live = live or LiveState()
        self.stage_errors: Counter[str] = Counter()
        self.received = 0

    async def __call__(
        self,
        samples: Sequence[Sample] = (),
        *,
        events: Sequence[Event] = (),
        rejections: Sequence[Rejection] = (),
        vehicles: Sequence[VehicleInfo] = (),
        ack: Ack | None = None,
    ) -> None:
        self.received += len(samples)
        good, bad = self.validator.split(list(samples), source="pipeline") if samples else ([], [])
        try:
            if good:
                self.live.update(good)
            if events:
                self.live.record_events(events)
        except Exception:
            self.stage_errors["live"] += 1
            log.exception("live stage failed; storing anyway")
        if bad:
            rejections = [*rejections, *bad]
        await self.writer.submit(good, events=events, rejections=rejections, vehicles=vehicles, ack=ack)

    def stats(self) -> dict[str, object]:
        return {
            "received": self.received,
            "accepted": self.validator.accepted,
            "rejected_by_reason": dict(self.validator.rejected),
            "stage_errors": dict(self.stage_errors),
            "writer": self.writer.stats.as_dict(),
        }
