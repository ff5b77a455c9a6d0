from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from helpers import fresh_database, query

from gateway.config import load_settings
from gateway.embedded import EmbeddedPostgres
from gateway.service import Gateway
from telemetry import storage

pytestmark = pytest.mark.postgres

_SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    from datetime import UTC, datetime, timedelta
    from gateway.config import load_settings
    from gateway.service import Gateway
    from telemetry.model import Sample, VehicleKind

    async def main() -> None:
        gw = Gateway(load_settings())
        task = asyncio.create_task(gw.run_until_signalled())
        while gw.pipeline is None:
            await asyncio.sleep(0.01)
        t0 = datetime.now(UTC) - timedelta(minutes=10)
        for i in range(0, 5000, 50):
            await gw.pipeline([Sample(time=t0 + timedelta(milliseconds=j), vehicle=f"car-{j % 7:02d}",
                                      kind=VehicleKind.PATROL_CAR, lat_deg=31.23, lon_deg=121.47)
                               for j in range(i, i + 50)])
        assert gw.writer.stats.written == 0, "nothing may be flushed before the signal in this test"
        print("READY", flush=True)
        await task
        print("WRITTEN", gw.writer, flush=True)

    asyncio.run(main())
    """
)


def test_sigterm_flushes_everything_before_exit(db: str, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.update({
        "PATROLGATE_DATABASE__DSN": db,
        "PATROLGATE_WRITER__FLUSH_INTERVAL": "10m",
        "PATROLGATE_WRITER__BATCH_ROWS": "1000000",
        "PATROLGATE_WRITER__QUEUE_MAX_ROWS": "1000000",
        "PATROLGATE_WRITER__SPOOL_DIR": str(tmp_path / "spool"),
        "PATROLGATE_API__ENABLED": "false",
        "PATROLGATE_MAVLINK__ENDPOINTS": "[]",
    })
    proc = subprocess.Popen([sys.executable, "-c", _SCRIPT], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "READY", proc.stderr.read() if proc.stderr else ""
    assert query(db, "SELECT count(*) FROM telemetry") == [(0,)]
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert query(db, "SELECT count(*) FROM telemetry") == [(5000,)]
    assert query(db, "SELECT count(*) FROM vehicle_latest") == [(7,)]


def test_validation_rejections_are_stored_with_reason(db: str, tmp_path: Path) -> None:
    import asyncio
    from datetime import UTC, datetime, timedelta

    from helpers import make_sample

    from gateway.pipeline import Pipeline
    from telemetry.writer import TelemetryWriter, WriterSettings

    async def go() -> Pipeline:
        writer = TelemetryWriter(db, WriterSettings(spool_dir=str(tmp_path / "spool")))
        await writer.start()
        pipeline = Pipeline(writer)
        t = datetime.now(UTC) - timedelta(seconds=30)
        await pipeline([make_sample("car-01", t), make_sample("car-01", t), make_sample("car-02", t, lat_deg=95.0)])
        await writer.stop()
        return pipeline

    pipeline = asyncio.run(go())
    assert query(db, "SELECT count(*) FROM telemetry") == [(1,)]
    assert sorted(query(db, "SELECT reason, vehicle FROM rejected")) == [
        ("duplicate", "car-01"), ("invalid_coordinates", "car-02")]
    assert pipeline.stats()["rejected_by_reason"] == {"duplicate": 1, "invalid_coordinates": 1}


@contextlib.asynccontextmanager
async def _gateway_with_its_maintenance_held_up(
        pg_server: EmbeddedPostgres, tmp_path: Path, name: str) -> AsyncIterator[tuple[Gateway, psycopg.Connection]]:
    """A gateway started on plain PostgreSQL while the yielded session holds ``telemetry``: its start-up
    maintenance (partitions ahead) waits for that lock until the session rolls back."""
    dsn = fresh_database(pg_server.dsn, name)
    storage.upgrade(dsn, storage.StorageSettings(backend="postgresql"), then_maintain=False)
    settings = load_settings(
        database={"dsn": dsn}, api={"enabled": False}, mavlink={"endpoints": []},
        storage={"backend": "postgresql", "partitions_ahead_days": 3}, writer={"spool_dir": str(tmp_path)},
    )
    with psycopg.connect(dsn) as blocker:
        blocker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")
        gw = Gateway(settings)
        await gw.start()
        await asyncio.sleep(0.3)
        yield gw, blocker


async def test_stop_waits_for_a_storage_maintenance_under_way(pg_server: EmbeddedPostgres, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """Maintenance runs in a thread, which cancelling housekeeping cannot stop: stop() waits for it, so it never
    goes on against a database being shut down."""
    finished: list[dict[str, object]] = []
    maintain = storage.maintain

    def recorded(*args: object, **kwargs: object) -> dict[str, object]:
        report = maintain(*args, **kwargs)  # type: ignore[arg-type]
        finished.append(report)
        return report

    monkeypatch.setattr(storage, "maintain", recorded)
    async with _gateway_with_its_maintenance_held_up(pg_server, tmp_path, "stop_waits") as (gw, blocker):
        assert not finished
        stopping = asyncio.create_task(gw.stop())
        await asyncio.sleep(0.3)
        assert not stopping.done()  # waiting for the maintenance, not gone past it
        blocker.rollback()
        await asyncio.wait_for(stopping, 30)
    assert finished and finished[0]["created"]


async def test_stop_waits_for_a_maintenance_only_so_long(
        pg_server: EmbeddedPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """A maintenance stuck behind a lock does not hold up the stop past MAINTENANCE_STOP_WAIT_S: stop() says so
    and goes on."""
    import gateway.service as service

    monkeypatch.setattr(service, "MAINTENANCE_STOP_WAIT_S", 0.3)
    async with _gateway_with_its_maintenance_held_up(pg_server, tmp_path, "stop_wait_bounded") as (gw, blocker):
        await asyncio.wait_for(gw.stop(), 10)
        assert "storage housekeeping still running after 0 s" in caplog.text
        blocker.rollback()


async def test_storage_maintenance_runs_at_start_beside_ingest(pg_server: EmbeddedPostgres, tmp_path: Path) -> None:
    """The start migrates but does not wait for maintenance (50 ms before the first message could be taken):
    housekeeping runs it at once in the background, so the partitions days ahead appear without any sample."""
    dsn = fresh_database(pg_server.dsn, "housekeeping_at_start")
    settings = load_settings(
        database={"dsn": dsn}, api={"enabled": False}, mavlink={"endpoints": []},
        storage={"backend": "postgresql", "partitions_ahead_days": 5}, writer={"spool_dir": str(tmp_path)},
    )
    gw = Gateway(settings)
    await gw.start()
    try:
        ahead = storage.partition_name(datetime.now(UTC).date() + timedelta(days=5))
        for _ in range(200):
            if query(dsn, "SELECT count(*) FROM pg_tables WHERE tablename = %s", ahead) == [(1,)]:
                break
            await asyncio.sleep(0.05)
        assert query(dsn, "SELECT count(*) FROM pg_tables WHERE tablename = %s", ahead) == [(1,)]
    finally:
        await gw.stop()
