"""The writer's lifecycle with its worker thread (which takes its own batches): a failed start, stop() racing a
held-back producer, submits after stop, and a worker that dies while flushing. No producer waits forever, and
rows that cannot be stored are never acknowledged in silence.

Each test states the guarantee it checks; all run against the real PostgreSQL of the ``db`` fixture.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from helpers import fresh_database, make_sample, query, until, writer_settings

from telemetry.writer import TelemetryWriter

pytestmark = [pytest.mark.postgres, pytest.mark.backends("postgresql")]


async def test_stop_after_a_failed_start_returns(db: str, tmp_path: Path) -> None:
    """start() fails (a database without the schema: a permanent error); the usual ``finally: await stop()``
    must return, not wait forever for a worker thread that was never started."""
    bare = fresh_database(db, "t_review_no_schema")
    writer = TelemetryWriter(bare, writer_settings(tmp_path))
    with pytest.raises(RuntimeError, match="no patrolgate schema"):
        await writer.start()
    await asyncio.wait_for(writer.stop(), 5)


async def test_a_producer_held_back_when_stop_is_called_is_stored_or_told(db: str, tmp_path: Path) -> None:
    """A producer parked in submit() (queue full) when stop() is called must end with its rows stored and
    acked, or with an error; never with submit() returning normally and its rows dropped.

    Interleaving: the worker takes the whole queue (queue_max_rows <= batch_rows), posts _room_made, commits,
    finds the queue empty with _stopping set and exits, all before the loop gets round to resuming the parked
    producer (here the loop is held by joining the worker thread; in service it is any busy stretch of the
    loop). The producer then sees ``_stopping``, leaves its wait and appends to a queue nobody reads.
    """
    writer = TelemetryWriter(db, writer_settings(tmp_path, batch_rows=10, queue_max_rows=10, flush_interval_s=0.05))
    await writer.start()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    await writer.submit([make_sample("car-01", t0)])
    await writer.flush()  # car-01 registered, partitions made: the next COPY waits only for the lock
    acked: list[str] = []
    with psycopg.connect(db) as locker:
        locker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")
        await writer.submit([make_sample("car-01", t0 + timedelta(seconds=1))], ack=lambda: acked.append("held"))
        await until(lambda: writer.backlog_rows == 0, what="the worker took the first batch")
        await writer.submit([make_sample("car-01", t0 + timedelta(seconds=2, milliseconds=i)) for i in range(10)],
                            ack=lambda: acked.append("full"))
        assert writer.backlog_rows == 10  # the queue is full
        parked = asyncio.create_task(writer.submit([make_sample("car-01", t0 + timedelta(seconds=3))],
                                                   ack=lambda: acked.append("parked")))
        await asyncio.sleep(0.2)
        assert not parked.done()
        stopping = asyncio.create_task(writer.stop())
        await asyncio.sleep(0.05)
        assert not stopping.done()
        locker.rollback()
    assert writer._thread is not None
    writer._thread.join(10)  # holds the loop until the worker has finished (it needs nothing from the loop)
    assert not writer._thread.is_alive()
    await asyncio.wait_for(stopping, 5)
    try:
        await asyncio.wait_for(parked, 5)
    except RuntimeError:
        told = True
    else:
        told = False
    stored = query(db, "SELECT count(*) FROM telemetry")[0][0]
    assert told or (stored == 13 and acked == ["held", "full", "parked"]), (
        f"submit() returned normally but its row was not stored (stored={stored}, acks run={acked})")


async def test_submit_after_stop_is_refused(db: str, tmp_path: Path) -> None:
    """After stop() nothing reads the queue: a submit must fail, not return as if its rows were queued
    (and a flush() after it must not wait forever)."""
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    await writer.stop()
    with pytest.raises(RuntimeError):
        await writer.submit([make_sample("car-01")])
    await asyncio.wait_for(writer.flush(), 3)


def _unreachable_dsn() -> str:
    """A database that refuses connections (a closed loopback port): the writer starts with it "down"."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=nowhere user=nobody connect_timeout=2"


async def _writer_that_dies_in_stop(tmp_path: Path) -> tuple[TelemetryWriter, list[int]]:
    """A writer whose database is down and whose spool folder is gone by the time it flushes: spooling the
    batch raises FileNotFoundError (an OSError, not SpoolFullError), which ends the worker. The same happens
    with ENOSPC on a full disk. Rows are submitted but not due yet, so stop() is what makes the worker take them."""
    settings = writer_settings(tmp_path, flush_interval_s=30.0, ack_flush_interval_s=30.0)
    writer = TelemetryWriter(_unreachable_dsn(), settings)
    await writer.start()
    assert not writer.stats.db_up
    shutil.rmtree(str(settings.spool_dir))
    acked: list[int] = []
    await writer.submit([make_sample("car-01")], ack=lambda: acked.append(1))
    return writer, acked


async def test_stop_surfaces_a_worker_that_died_while_flushing(tmp_path: Path) -> None:
    """The worker dies on the batch stop() makes it flush: that row is neither stored nor spooled and its ack
    never runs, so stop() must raise (the flush-loop design did: ``await self._task`` re-raised), not return
    as if everything had been flushed."""
    writer, acked = await _writer_that_dies_in_stop(tmp_path)
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(writer.stop(), 30)
    assert acked == []


async def test_a_flush_waiting_when_the_worker_dies_during_stop_is_told(tmp_path: Path) -> None:
    """A producer's flush() in progress when stop() begins and the worker then dies must raise, not wait forever
    (``_check_alive`` is silenced by ``_stopping``, and nothing will ever settle the rows)."""
    writer, _ = await _writer_that_dies_in_stop(tmp_path)
    flushing = asyncio.create_task(writer.flush())
    await asyncio.sleep(0.05)
    assert not flushing.done()
    with contextlib.suppress(RuntimeError):  # whether stop() surfaces the failure is the test above
        await asyncio.wait_for(writer.stop(), 30)
    assert isinstance(writer._failure, FileNotFoundError)  # the worker did die, on the spool write
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(flushing, 5)


async def test_a_row_whose_rejection_needs_escaping_is_kept_and_the_writer_lives_on(db: str, tmp_path: Path) -> None:
    """A vehicle id with a NUL (PostgreSQL text cannot hold one) fails its batch; the row is kept in
    ``rejected`` with the NUL escaped. Storing the rejection verbatim used to fail again and recurse."""
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    await writer.submit([make_sample("car-01", t0), make_sample("car\x00x", t0)])
    await writer.flush()
    await writer.submit([make_sample("car-01", t0 + timedelta(seconds=1))])
    await writer.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(2,)]
    [(reason, vehicle, raw)] = query(db, "SELECT reason, vehicle, raw FROM rejected")
    assert reason.startswith("storage_error:") and vehicle == "car\\x00x"
    assert b'"vehicle":"car\\u0000x"' in bytes(raw)
