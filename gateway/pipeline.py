"""The processing chain from drivers to storage, listed once, in order.

1. validate: implausible samples become rejections with a reason (telemetry.validation);
2. live: the in-memory latest state and the live stream see accepted samples and events;
3. store: everything goes to the writer, which batches, commits or spools, then acknowledges.

Everything for one vehicle passes through this one path, so its order is kept. A failing optional stage (live)
is logged and counted, and the chain goes on: storage is never skipped.
"""

from __future__ import annotations

import asyncio
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

#: Samples validated between two turns of the event loop.
VALIDATE_CHUNK = 4096


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
        good, bad = await self._validate(samples)
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

    async def _validate(self, samples: Sequence[Sample]) -> tuple[list[Sample], list[Rejection]]:
        """Validate in pieces of VALIDATE_CHUNK, giving the event loop a turn between them.

        A driver held back by a full writer queue hands over tens of thousands of samples at once; validated in
        one go that held the loop for up to 80 ms, and the writer, which needs a few loop turns to collect one
        commit and start the next, left the database idle for 100-200 ms between batches.
        """
        if len(samples) <= VALIDATE_CHUNK:
            return self.validator.split(list(samples), source="pipeline") if samples else ([], [])
        good: list[Sample] = []
        bad: list[Rejection] = []
        for at in range(0, len(samples), VALIDATE_CHUNK):
            if at:
                await asyncio.sleep(0)
            g, b = self.validator.split(list(samples[at : at + VALIDATE_CHUNK]), source="pipeline")
            good += g
            bad += b
        return good, bad

    def stats(self) -> dict[str, object]:
        return {
            "received": self.received,
            "accepted": self.validator.accepted,
            "rejected_by_reason": dict(self.validator.rejected),
            "stage_errors": dict(self.stage_errors),
            "writer": self.writer.stats.as_dict(),
        }
