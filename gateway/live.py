"""In-memory live view of the fleet: the latest sample per vehicle and a fan-out of updates to subscribers.

The API's fleet list and live stream read from here, not from the database, so the wall screen refreshes at
the rate vehicles report without a query per update. A slow subscriber loses its oldest queued updates (and
is told how many through ``dropped``), never blocks ingest.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from telemetry.model import Event, Sample

__all__ = ["LiveState", "Subscription"]


@dataclass(eq=False)
class Subscription:
    queue: asyncio.Queue[dict[str, Any]]
    vehicles: frozenset[str] | None = None
    dropped: int = 0

    def offer(self, item: dict[str, Any]) -> None:
        if self.vehicles is not None and item.get("vehicle") not in self.vehicles:
            return
        while True:
            try:
                self.queue.put_nowait(item)
                return
            except asyncio.QueueFull:
                with contextlib.suppress(asyncio.QueueEmpty):
                    self.queue.get_nowait()
                    self.dropped += 1


@dataclass
class LiveState:
    latest: dict[str, Sample] = field(default_factory=dict)
    online: dict[str, bool] = field(default_factory=dict)
    _subs: set[Subscription] = field(default_factory=set)

    def update(self, samples: Iterable[Sample]) -> None:
        latest = self.latest
        for s in samples:
            prev = latest.get(s.vehicle)
            # key_time written out: the property call, twice per sample, was a third of this loop
            if prev is None or (prev.vehicle_time or prev.time) <= (s.vehicle_time or s.time):
                latest[s.vehicle] = s
                if self._subs:
                    item = {"type": "sample", "vehicle": s.vehicle, "sample": s}
                    for sub in self._subs:
                        sub.offer(item)

    def record_events(self, events: Iterable[Event]) -> None:
        for e in events:
            if e.type in ("online", "offline"):
                self.online[e.vehicle] = e.type == "online"
            if self._subs:
                item = {"type": "event", "vehicle": e.vehicle, "event": e}
                for sub in self._subs:
                    sub.offer(item)

    @contextlib.asynccontextmanager
    async def subscribe(
        self, vehicles: Iterable[str] | None = None, maxsize: int = 1000
    ) -> AsyncIterator[Subscription]:
        sub = Subscription(asyncio.Queue(maxsize), frozenset(vehicles) if vehicles is not None else None)
        self._subs.add(sub)
        try:
            yield sub
        finally:
            self._subs.discard(sub)
