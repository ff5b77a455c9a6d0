"""One ingest worker process: decodes, validates and stores the MQTT telemetry of its share of the vehicles.

The gateway's ``IngestPool`` (``gateway.ingest_pool``) starts these and hands each one the undecoded payloads of
the vehicles it owns. Here they become samples (``drivers.mqtt.contract``), pass a validator of their own (a
vehicle always goes to the same worker, so its duplicate and jump checks see its whole stream, in order), and are
written by a ``TelemetryWriter`` of their own: own connection, own spool folder, the same guarantees.

The wire, both ways over one Unix socket: frames of ``length (u32 big-endian) | kind (u8) | body``. Control
frames and reports (kind 0) are pickled: both ends are this program, never a peer on the network. Hand-overs of
telemetry (kind 1, ``encode_batch``) are a table of lengths followed by the strings and payloads: one exact-size
buffer and one copy of the payloads. Pickling them cost a quarter of the gateway process's time (its output
buffer grows by doubling, each growth a copy of megabytes and their page faults).

- pool -> worker: ``("start",)`` once the database schema is ready, then ``("batch", token, [RawTelemetry, ...])``
  (kind 1) and at last ``("stop",)``;
- worker -> pool: ``("ready",)`` once connected to the database; ``("seen", [(vehicle, kind)], [newest sample
  per vehicle])`` after a batch is validated (the pool registers vehicles and feeds the live view with it);
  ``("done", [token, ...], stats)`` when the rows of those batches are durable (committed or spooled); and
  ``("stopped", stats)`` after the last commit at stop.
"""

from __future__ import annotations

import asyncio
import logging
import pickle
import signal
import struct
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec

from drivers.mqtt.contract import ContractError, decode_telemetry
from telemetry import storage
from telemetry.model import Rejection, Sample, VehicleKind, utcnow
from telemetry.spool import SpoolInUseError
from telemetry.validation import ValidationLimits, Validator
from telemetry.writer import TelemetryWriter, WriterSettings

__all__ = ["RawTelemetry", "WorkerConfig", "encode_batch", "read_frame", "run_worker", "write_frame"]

log = logging.getLogger(__name__)

#: How long a new worker waits for its spool folder to be released by a predecessor (see ``_start_writer``).
SPOOL_WAIT_S = 30.0
_LENGTH = struct.Struct(">I")
_PICKLED, _BATCH = b"\x00", b"\x01"
_BATCH_HEAD = struct.Struct(">QI")  # token, messages
_BATCH_ITEM = struct.Struct(">HHId")  # vehicle id bytes, topic bytes, payload bytes, received (Unix seconds)

#: One message handed to a worker: vehicle id, topic, payload, received (Unix seconds, UTC).
RawTelemetry = tuple[str, str, bytes, float]


def write_frame(writer: asyncio.StreamWriter, message: tuple[Any, ...]) -> None:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    writer.write(_LENGTH.pack(len(body) + 1) + _PICKLED + body)


def encode_batch(token: int, messages: list[RawTelemetry]) -> bytes:
    """The frame ``("batch", token, messages)``, read back by ``read_frame``."""
    heads: list[bytes] = []
    blobs: list[bytes] = []
    size = 1 + _BATCH_HEAD.size
    for vehicle, topic, payload, received in messages:
        v, t = vehicle.encode(), topic.encode()
        heads.append(_BATCH_ITEM.pack(len(v), len(t), len(payload), received))
        blobs += (v, t, payload)
        size += _BATCH_ITEM.size + len(v) + len(t) + len(payload)
    return b"".join([_LENGTH.pack(size), _BATCH, _BATCH_HEAD.pack(token, len(messages)), *heads, *blobs])


def _decode_batch(body: bytes) -> tuple[str, int, list[RawTelemetry]]:
    token, count = _BATCH_HEAD.unpack_from(body, 1)
    pos = 1 + _BATCH_HEAD.size + _BATCH_ITEM.size * count
    view = memoryview(body)
    messages: list[RawTelemetry] = []
    for v, t, p, received in _BATCH_ITEM.iter_unpack(view[1 + _BATCH_HEAD.size : pos]):
        vehicle = str(view[pos : pos + v], "utf-8")
        topic = str(view[pos + v : pos + v + t], "utf-8")
        pos += v + t
        messages.append((vehicle, topic, bytes(view[pos : pos + p]), received))
        pos += p
    return "batch", token, messages


async def read_frame(reader: asyncio.StreamReader) -> tuple[Any, ...]:
    """The next message; raises ``asyncio.IncompleteReadError`` when the other end is gone."""
    (length,) = _LENGTH.unpack(await reader.readexactly(_LENGTH.size))
    body = await reader.readexactly(length)
    if body[:1] == _BATCH:
        return _decode_batch(body)
    message: tuple[Any, ...] = pickle.loads(memoryview(body)[1:])
    return message


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """What a worker needs; sent to the new process (picklable)."""

    index: int
    dsn: str
    writer: WriterSettings
    limits: ValidationLimits
    log_level: int = logging.INFO


def run_worker(sock: Any, config: WorkerConfig) -> None:
    """The process's entry point (``multiprocessing`` target).

    Ctrl-C in a terminal reaches the whole process group: the worker ignores it and is stopped by the gateway,
    which stops its drivers first. SIGTERM (a service manager stopping every process of the service) makes it
    store what it holds and end, as the end of its socket does.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(level=config.log_level,
                        format=f"%(asctime)s %(levelname)s ingest-worker-{config.index} %(name)s: %(message)s")
    from gateway.runtime import tune_gc_for_ingest

    tune_gc_for_ingest()
    asyncio.run(_Worker(config).serve(sock))


class _Worker:
    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.writer = TelemetryWriter(config.dsn, config.writer)
        self.validator = Validator(config.limits)
        self.kinds: dict[str, VehicleKind] = {}
        self.samples = 0
        self.contract_rejected: dict[str, int] = {}
        self._done: list[int] = []
        self._done_ready = asyncio.Event()
        self._out: asyncio.StreamWriter | None = None

    async def serve(self, sock: Any) -> None:
        reader, out = await asyncio.open_unix_connection(sock=sock)
        self._out = out
        try:
            go = await read_frame(reader)  # the gateway's schema is up to date
        except (asyncio.IncompleteReadError, ConnectionError):
            return
        if go != ("start",):
            return
        await self._start_writer()
        try:
            seeds = await asyncio.to_thread(storage.recent_key_times, self.config.dsn)
        except Exception as exc:  # the database away at start: the writer spools; only redeliveries go unseen
            log.warning("could not read recent samples for the duplicate check: %s", exc)
            seeds = {}
        for vehicle, times in seeds.items():
            self.validator.seed(vehicle, times)
        write_frame(out, ("ready",))
        sender = asyncio.create_task(self._send_done())
        terminated = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, terminated.set)
        stopping = asyncio.ensure_future(terminated.wait())
        try:
            while True:
                reading = asyncio.ensure_future(read_frame(reader))
                await asyncio.wait((reading, stopping), return_when=asyncio.FIRST_COMPLETED)
                if not reading.done():
                    reading.cancel()
                    log.warning("SIGTERM: storing what was handed over, then stopping")
                    break
                try:
                    message = reading.result()
                except (asyncio.IncompleteReadError, ConnectionError):
                    log.warning("the gateway is gone: storing what was handed over, then stopping")
                    break
                if message[0] == "stop":
                    break
                _, token, batch = message
                await self._ingest(token, batch)
        finally:
            stopping.cancel()
            await self.writer.stop()  # commits (or spools) everything queued; its acks run before it returns
            sender.cancel()
            if self._done:
                write_frame(out, ("done", self._done, self.stats()))
            write_frame(out, ("stopped", self.stats()))
            try:
                await out.drain()
                out.close()
                await out.wait_closed()
            except ConnectionError:
                pass

    async def _start_writer(self) -> None:
        """Start the writer once this worker's spool folder is free. A worker of a gateway that was killed
        still holds it while it stores what it was handed: waiting for it also puts those rows in the database
        before this worker reads the newest ones for its duplicate check (the broker redelivers them)."""
        deadline = time.monotonic() + SPOOL_WAIT_S
        while True:
            try:
                await self.writer.start()
                return
            except SpoolInUseError as exc:
                if time.monotonic() > deadline:
                    raise
                log.info("waiting for the spool folder: %s", exc)
                await asyncio.sleep(0.2)

    async def _ingest(self, token: int, batch: list[RawTelemetry]) -> None:
        samples: list[Sample] = []
        rejections: list[Rejection] = []
        for vehicle, topic, payload, received_unix_s in batch:
            received = datetime.fromtimestamp(received_unix_s, UTC)
            try:
                decoded, errors = decode_telemetry(payload, vehicle, received, f"mqtt:{topic}")
            except ContractError as exc:
                decoded, errors = [], [exc]
            except Exception as exc:  # a decoder bug must not lose the message: keep it, with what went wrong
                log.exception("MQTT message on %s could not be decoded", topic)
                decoded, errors = [], [ContractError("internal_error", f"{type(exc).__name__}: {exc}")]
            for error in errors:
                self.contract_rejected[error.reason] = self.contract_rejected.get(error.reason, 0) + 1
                rejections.append(Rejection(utcnow(), "mqtt", error.reason, error.detail, vehicle=vehicle,
                                            raw=bytes(payload[:65536]), topic=topic))
            samples += decoded
        self.samples += len(samples)
        good, bad = self.validator.split(samples, source="pipeline")
        self._report_seen(good)
        await self.writer.submit(good, rejections=[*rejections, *bad], ack=lambda: self._batch_done(token))

    def _report_seen(self, good: list[Sample]) -> None:
        """Send the vehicles heard for the first time, and each vehicle's newest sample (for the live view)."""
        newest: dict[str, Sample] = {}
        for s in good:
            prev = newest.get(s.vehicle)
            if prev is None or (prev.vehicle_time or prev.time) <= (s.vehicle_time or s.time):
                newest[s.vehicle] = s
        if not newest:
            return
        first = [(v, s.kind) for v, s in newest.items() if v not in self.kinds]
        for vehicle, kind in first:
            self.kinds[vehicle] = kind
        assert self._out is not None
        # Without the raw message: it is only kept for a rejection, and would travel back for nothing.
        write_frame(self._out, ("seen", first, [msgspec.structs.replace(s, raw=None) for s in newest.values()]))

    def _batch_done(self, token: int) -> None:
        self._done.append(token)
        self._done_ready.set()

    async def _send_done(self) -> None:
        """Report durable batches as they come, coalesced: one frame per turn of the loop at most."""
        assert self._out is not None
        while True:
            await self._done_ready.wait()
            self._done_ready.clear()
            done, self._done = self._done, []
            write_frame(self._out, ("done", done, self.stats()))
            await self._out.drain()

    def stats(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "accepted": self.validator.accepted,
            "contract_rejected_by_reason": dict(self.contract_rejected),
            "validation_rejected_by_reason": dict(self.validator.rejected),
            "writer": self.writer.stats.as_dict(),
        }
