"""What every driver is given and what it offers: the contract between drivers and the gateway.

A driver turns a protocol into the telemetry model and back. It is handed an ``Emit`` (like a Telegraf
accumulator) and never sees the next stage: no SQL, no HTTP. It may be asked for commands through
``CommandTarget``; the gateway's fleet routes each command to the driver that owns the vehicle.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from telemetry.model import Event, Rejection, Sample, VehicleInfo

__all__ = ["Ack", "Driver", "Emit", "cancel_tasks"]

#: Called once the rows it came with are durable (committed, or fsynced to the spool).
Ack = Callable[[], None]


class Emit(Protocol):
    """The one way a driver hands data on. Awaiting it may block: that is backpressure, by design."""

    async def __call__(
        self,
        samples: Sequence[Sample] = (),
        *,
        events: Sequence[Event] = (),
        rejections: Sequence[Rejection] = (),
        vehicles: Sequence[VehicleInfo] = (),
        ack: Ack | None = None,
    ) -> None: ...


class Driver(abc.ABC):
    """A protocol driver: started with an ``Emit``, stopped before storage so its last data is flushed."""

    name: str = "driver"

    @abc.abstractmethod
    async def start(self, emit: Emit) -> None:
        """Open the links and begin emitting; returns once the driver is running."""

    @abc.abstractmethod
    async def stop(self) -> None:
        """Close the links; emit nothing after returning."""

    async def flush(self) -> None:  # noqa: B027 - optional: most drivers hand on as they go
        """Hand on at once whatever the driver holds for its next hand-over (for an orderly flush of the
        whole gateway); drivers that hand on as they go need nothing here."""

    def stats(self) -> dict[str, Any]:
        """Counters for the status API and logs."""
        return {}


async def cancel_tasks(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel a driver's background tasks and wait until each has ended; empties the list."""
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    tasks.clear()
