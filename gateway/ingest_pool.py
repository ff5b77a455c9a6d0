"""Ingest worker processes for MQTT telemetry: how one gateway uses more than one core.

Why. In one process, decoding, validating and formatting the rows of MQTT telemetry all need the interpreter
lock: with batched payloads the gateway process held it 85 % of the time (0.85 core) while PostgreSQL used
0.65 and a core stayed idle. With ``[mqtt] ingest_workers = N`` the gateway process only receives, routes and
acknowledges, and N worker processes (``gateway.ingest_worker``) decode, validate and store, each with its own
interpreter and database connection. The MQTT driver sees this as its ``TelemetryOffload``.

How. ``submit`` routes a payload by its vehicle (CRC-32 of the id modulo N: the same worker for the vehicle's
whole stream, so its duplicate and jump checks stay whole and its rows stay in order). ``flush`` sends each
worker its share as one frame; the hand-over's ``ack`` runs once every worker involved reports those rows
durable, and only then does the driver send the PUBACKs. A frame is kept until then: when a worker dies, it is
started again and handed every frame it had not reported durable (what the dead one had already committed comes
back as duplicates: its successor seeds its duplicate check from the database, as a restarted gateway does).

Spools: worker i spools to ``<spool_dir>/worker-<i>``. ``adopt_orphan_spools`` moves the folders of workers a
configuration no longer has (fewer workers, or none) into the gateway's own spool before it starts, so those
batches are replayed, not stranded.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import multiprocessing
import socket
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from gateway.ingest_worker import (
    SPOOL_WAIT_S,
    RawTelemetry,
    WorkerConfig,
    encode_batch,
    read_frame,
    run_worker,
    write_frame,
)
from telemetry.model import Sample, VehicleKind
from telemetry.spool import Spool, SpoolInUseError
from telemetry.validation import ValidationLimits
from telemetry.writer import WriterSettings

__all__ = ["IngestPool", "adopt_orphan_spools", "worker_spool_dir"]

log = logging.getLogger(__name__)

#: A new worker has this long to connect to the database and say it is ready (imports take ~1 s).
START_TIMEOUT_S = 60.0
#: At stop, a worker has this long to commit what it holds before it is killed (its rows are then spooled or
#: redelivered by the broker: the messages were not acknowledged).
STOP_TIMEOUT_S = 60.0
RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0)


def worker_spool_dir(spool_dir: str | Path, index: int) -> Path:
    return Path(spool_dir) / f"worker-{index}"


def adopt_orphan_spools(spool_dir: str | Path, workers: int, wait_s: float = SPOOL_WAIT_S) -> int:
    """Move the spools of workers numbered ``workers`` and up into ``spool_dir``'s own; returns the records
    moved. Call before anything opens those spools (the gateway does, before its writer starts). A folder still
    held (a worker of a killed gateway storing what it held) is waited for, up to ``wait_s``."""
    orphans = sorted(p for p in Path(spool_dir).glob("worker-*")
                     if p.is_dir() and p.name[7:].isdigit() and int(p.name[7:]) >= workers)
    if not orphans:
        return 0
    moved = 0
    deadline = time.monotonic() + wait_s
    with Spool(spool_dir) as spool:
        for orphan in orphans:
            while True:
                try:
                    records = spool.adopt(orphan)
                    break
                except SpoolInUseError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
            if records:
                log.warning("ingest worker spool %s: %d batches moved to %s, to be replayed by the gateway",
                            orphan, records, spool_dir)
            moved += records
    return moved


@dataclass(eq=False)
class _Slot:
    """One worker: its process, its socket, what it was handed and has not reported durable."""

    config: WorkerConfig
    process: BaseProcess | None = None
    #: The socket to the current process, from its launch on.
    link: asyncio.StreamWriter | None = None
    #: The current process said it is ready and was handed what it has to store: hand-overs go to it directly.
    ready: bool = False
    reader: asyncio.Task[None] | None = None
    outbox: list[RawTelemetry] = field(default_factory=list)
    #: token -> (frame, callback), in the order sent; resent in that order to a restarted worker.
    sent: dict[int, tuple[bytes, Callable[[], None]]] = field(default_factory=dict)
    sent_bytes: int = 0
    stats: dict[str, Any] = field(default_factory=dict)
    #: Counters of this slot's earlier processes (a restarted worker counts from zero).
    retired: dict[str, Any] = field(default_factory=dict)
    restarts: int = 0


class IngestPool:
    """N ingest worker processes behind the MQTT driver (a ``TelemetryOffload``)."""

    def __init__(self, count: int, dsn: str, writer: WriterSettings, limits: ValidationLimits, *,
                 on_latest: Callable[[list[Sample]], None] | None = None) -> None:
        if count < 1:
            raise ValueError("an ingest pool has at least one worker")
        level = logging.getLogger().getEffectiveLevel()
        self._slots = [
            _Slot(WorkerConfig(i, dsn, replace(writer, spool_dir=str(worker_spool_dir(writer.spool_dir, i))
                                               if writer.spool_dir else None), limits, level))
            for i in range(count)
        ]
        self.on_seen: Callable[[Iterable[tuple[str, VehicleKind]]], None] | None = None
        self.on_latest = on_latest
        self._route: dict[str, _Slot] = {}
        self._tokens = itertools.count(1)
        self._pending_bytes = 0
        self._stopping = False
        self._reported = asyncio.Event()  # set at each report of durable batches
        self._launched: asyncio.Future[list[Any]] | None = None
        # A fork server, started once per gateway with the worker module imported, forks the workers: no second
        # import of the gateway's command line (which ``spawn`` repeats in every child), and a restart forks in
        # 0.06 s instead of starting an interpreter (0.25 s and more). Forked from that server, not from the
        # gateway, a worker inherits no threads, locks or sockets of the gateway's.
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(["gateway.ingest_worker"])

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def launch(self) -> None:
        """Start the worker processes without waiting for them: their start (the fork server's interpreter and
        imports, a quarter of a second) overlaps the gateway's own. ``start`` then waits until they are ready."""
        if self._launched is None:
            self._launched = asyncio.gather(*(self._launch(slot) for slot in self._slots), return_exceptions=True)
        await asyncio.sleep(0)

    async def start(self) -> None:
        """Start every worker (see ``launch``); returns when all are connected to the database (or spooling)."""
        started = time.monotonic()
        await self.launch()
        assert self._launched is not None
        launched = await self._launched
        results = await asyncio.gather(*(self._ready(slot, reader) for slot, reader in zip(self._slots, launched,
                                                                                            strict=True)
                                         if not isinstance(reader, BaseException)), return_exceptions=True)
        failures = [r for r in (*launched, *results) if isinstance(r, BaseException)]
        if failures:
            await self.stop()
            raise failures[0]
        log.info("%d ingest worker processes ready in %.2f s", len(self._slots), time.monotonic() - started)

    async def _launch(self, slot: _Slot) -> asyncio.StreamReader:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        process = self._context.Process(target=run_worker, args=(theirs, slot.config), daemon=True,
                                        name=f"patrolgate-ingest-{slot.config.index}")
        try:
            await asyncio.to_thread(process.start)
        finally:
            theirs.close()
        reader, slot.link = await asyncio.open_unix_connection(sock=ours)
        slot.process, slot.ready = process, False
        return reader

    async def _ready(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        """Tell a launched worker to connect, wait until it is ready, then hand it what it has to store."""
        assert slot.process is not None and slot.link is not None
        link, process = slot.link, slot.process
        write_frame(link, ("start",))
        try:
            async with asyncio.timeout(START_TIMEOUT_S):
                ready = await read_frame(reader)
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            slot.link = None
            link.close()
            await asyncio.to_thread(process.join, 5)
            if process.is_alive():
                process.kill()
            raise RuntimeError(f"ingest worker {slot.config.index} did not start "
                               f"(exit code {process.exitcode}); see its log lines above") from None
        assert ready == ("ready",), ready
        # In token order, and before anything new: until ``ready`` is set, flush() only keeps its frames here.
        for data, _ in slot.sent.values():
            link.write(data)
        slot.ready = True
        slot.reader = asyncio.create_task(self._read(slot, reader), name=f"ingest-worker-{slot.config.index}")

    async def stop(self) -> None:
        """Let every worker store what it was handed, then end it (killed past ``STOP_TIMEOUT_S``)."""
        self._stopping = True
        if self._launched is not None:  # launched, and the gateway's start failed before start(): reach them too
            await asyncio.gather(self._launched, return_exceptions=True)
        for slot in self._slots:
            if slot.link is not None and not slot.link.is_closing():
                write_frame(slot.link, ("stop",))
                with contextlib.suppress(ConnectionError):
                    await slot.link.drain()
        for slot in self._slots:
            # A restart under way runs in the reader task and ends at its next look at ``_stopping``; a reader
            # it started meanwhile replaces ``slot.reader``: wait for that one too.
            while slot.reader is not None and not slot.reader.done():
                done, _ = await asyncio.wait({slot.reader}, timeout=STOP_TIMEOUT_S)
                if not done:
                    log.error("ingest worker %d did not report its last commit in %.0f s",
                              slot.config.index, STOP_TIMEOUT_S)
                    slot.reader.cancel()
                    break
            await self._end_process(slot)

    async def _end_process(self, slot: _Slot) -> None:
        """Close the worker's socket (it stores what it holds and ends), wait for it, kill it past 5 s."""
        slot.ready = False
        if slot.link is not None:
            slot.link.close()
            slot.link = None
        if slot.process is not None:
            await asyncio.to_thread(slot.process.join, 5)
            if slot.process.is_alive():
                log.error("ingest worker %d did not stop; killing it", slot.config.index)
                slot.process.kill()
                await asyncio.to_thread(slot.process.join, 5)

    # -- TelemetryOffload -----------------------------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        return self._pending_bytes

    @property
    def held_bytes(self) -> int:
        """Hand-overs kept for workers being started again: no socket takes them meanwhile."""
        return sum(slot.sent_bytes for slot in self._slots if not slot.ready)

    def submit(self, vehicle: str, topic: str, payload: bytes, received: datetime) -> None:
        slot = self._route.get(vehicle)
        if slot is None:
            slot = self._route[vehicle] = self._slots[self.worker_of(vehicle)]
        slot.outbox.append((vehicle, topic, payload, received.timestamp()))
        self._pending_bytes += len(payload)

    async def flush(self, ack: Callable[[], None]) -> None:
        slots = [slot for slot in self._slots if slot.outbox]
        self._pending_bytes = 0
        if not slots:
            ack()
            return
        remaining = len(slots)

        def part_done() -> None:
            nonlocal remaining
            remaining -= 1
            if not remaining:
                ack()

        for slot in slots:
            token = next(self._tokens)
            data = encode_batch(token, slot.outbox)
            slot.outbox = []
            slot.sent[token] = (data, part_done)
            slot.sent_bytes += len(data)
            if slot.ready and slot.link is not None and not slot.link.is_closing():  # else: when restarted
                slot.link.write(data)
        for slot in slots:
            if slot.ready and slot.link is not None:
                with contextlib.suppress(ConnectionError):  # a worker that died: restarted, handed it again
                    await slot.link.drain()

    async def settle(self) -> None:
        """Wait until everything handed to the workers is durable (and counted in ``stats``)."""
        while any(slot.sent for slot in self._slots):
            self._reported.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._reported.wait()

    # -- reports from the workers ---------------------------------------------------------------------------

    async def _read(self, slot: _Slot, reader: asyncio.StreamReader) -> None:
        try:
            while True:
                message = await read_frame(reader)
                if message[0] == "done":
                    _, tokens, slot.stats = message
                    for token in tokens:
                        entry = slot.sent.pop(token, None)
                        if entry is not None:
                            slot.sent_bytes -= len(entry[0])
                            _call(entry[1])
                    self._reported.set()
                elif message[0] == "seen":
                    _, first, newest = message
                    if first and self.on_seen is not None:
                        _call(self.on_seen, first)
                    if newest and self.on_latest is not None:
                        _call(self.on_latest, newest)
                elif message[0] == "stopped":  # told to (stop()), or on its own (SIGTERM): restarted then
                    slot.stats = message[1]
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        except Exception:  # a report that cannot be read: this worker is treated as dead, and replaced
            log.exception("ingest worker %d sent what could not be read", slot.config.index)
        if not self._stopping:
            await self._restart(slot)

    async def _restart(self, slot: _Slot) -> None:
        """Start a dead worker again and hand it what it had not stored; retried with backoff until it runs."""
        process = slot.process
        assert process is not None
        await self._end_process(slot)  # from now on flush() keeps the frames for the successor
        log.error("ingest worker %d ended unexpectedly (exit code %s); starting it again with the %d batches it "
                  "had not stored", slot.config.index, process.exitcode, len(slot.sent))
        _add(slot.retired, slot.stats)
        slot.stats, slot.process = {}, None
        slot.restarts += 1
        for attempt in itertools.count():
            if self._stopping:
                return
            try:
                reader = await self._launch(slot)
                if self._stopping:  # stop() did not see this one: end it before it takes anything
                    await self._end_process(slot)
                    return
                await self._ready(slot, reader)
                return
            except Exception as exc:
                delay = RESTART_BACKOFF_S[min(attempt, len(RESTART_BACKOFF_S) - 1)]
                log.error("ingest worker %d could not be started again (%s); retrying in %.1f s",
                          slot.config.index, exc, delay)
                await asyncio.sleep(delay)

    def worker_pids(self) -> list[int | None]:
        """The process id of each worker (None while one is being started again)."""
        return [slot.process.pid if slot.process is not None and slot.ready else None for slot in self._slots]

    def worker_of(self, vehicle: str) -> int:
        """The index of the worker that decodes, validates and stores ``vehicle``'s telemetry."""
        return zlib.crc32(vehicle.encode()) % len(self._slots)

    def stats(self) -> dict[str, Any]:
        """The workers' counters summed (``samples`` decoded, ``accepted``, ``written``, rejections by reason).

        Exact while no worker was started again. After a restart, hand-overs handed again are decoded (and
        counted) again, and rows a dead worker committed after its last report are in the database but not
        in ``written``: the database is the reference then."""
        total: dict[str, Any] = {}
        for slot in self._slots:
            _add(total, slot.retired)
            _add(total, slot.stats)
        writer = total.pop("writer", {})
        return {
            "workers": len(self._slots),
            "alive": sum(slot.ready for slot in self._slots),
            "restarts": sum(slot.restarts for slot in self._slots),
            "pids": self.worker_pids(),
            "in_flight_batches": sum(len(slot.sent) for slot in self._slots),
            "samples": total.get("samples", 0),
            "accepted": total.get("accepted", 0),
            "written": writer.get("written", 0),
            "writer_batches": writer.get("batches", 0),
            "spooled": writer.get("spooled", 0),
            "contract_rejected_by_reason": total.get("contract_rejected_by_reason", {}),
            "validation_rejected_by_reason": total.get("validation_rejected_by_reason", {}),
        }


def _call(callback: Callable[..., None], *args: Any) -> None:
    try:
        callback(*args)
    except Exception:  # a consumer's failure must not stop the reports of the other batches
        log.exception("ingest pool callback failed")


def _add(into: dict[str, Any], stats: dict[str, Any]) -> None:
    """Add ``stats``'s numbers into ``into``, nested dictionaries too (flags and other values are skipped)."""
    for key, value in stats.items():
        if isinstance(value, dict):
            _add(into.setdefault(key, {}), value)
        elif isinstance(value, int | float) and not isinstance(value, bool):
            into[key] = into.get(key, 0) + value
