"""`patrolgate bench ingest`: the writer's rows/s against the database's own ceiling, in the same run.

The ceiling is `psql \\copy ... FROM file WITH (FORMAT binary)` of exactly the same rows into the same, emptied
``telemetry`` table (same indexes, same partitions). The writer run includes everything the gateway does per
batch (vehicle keys, COPY, ``vehicle_latest`` upsert, batch id, commit) and the producer making the samples.
"""

from __future__ import annotations

import asyncio
import resource
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg

from gateway.bench import database
from gateway.bench.fleet_mix import fleet_mix
from telemetry import storage
from telemetry.model import Sample
from telemetry.writer import TELEMETRY_COLUMNS, TelemetryWriter, WriterSettings

__all__ = ["run_ingest_bench"]


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0




def _reset(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE telemetry, vehicle_latest, ingest_batches")
        conn.execute("CHECKPOINT")


def _psql_copy(dsn: str, sql: str) -> float:
    psql = shutil.which("psql")
    if psql is None:
        raise RuntimeError("psql not found: the ceiling needs the PostgreSQL client (postgresql-client)")
    started = time.perf_counter()
    subprocess.run([psql, "-X", "-q", "-v", "ON_ERROR_STOP=1", dsn, "-c", sql], check=True, capture_output=True)
    return time.perf_counter() - started


_POOL_ROWS = 100_000


def _shifted(pool: list[list[Sample]], rows: int, span: timedelta) -> Iterator[list[Sample]]:
    """``rows`` samples from a pre-made pool, each lap moved ``span`` later so no two rows repeat.

    The pool is made before the clock starts, so the figure is the writer's, not the sample generator's; the
    samples are reused only after the writer committed them (the queue bound is below the pool size).
    """
    sent = 0
    lap = 0
    while sent < rows:
        for chunk in pool:
            if lap:
                for s in chunk:
                    s.time += span
                    if s.vehicle_time is not None:
                        s.vehicle_time += span
            take = chunk[: rows - sent]
            sent += len(take)
            yield take
            if sent >= rows:
                return
        lap += 1


async def _writer_run(
    dsn: str, rows: int, settings: WriterSettings, seed: int
) -> tuple[float, dict[str, Any]]:
    pool = list(fleet_mix(min(rows, _POOL_ROWS), seed=seed, chunk=500))
    span = pool[-1][-1].time - pool[0][0].time + timedelta(seconds=1)
    writer = TelemetryWriter(dsn, settings)
    await writer.start()
    started = time.perf_counter()
    for chunk in _shifted(pool, rows, span):
        await writer.submit(chunk)
    await writer.flush()
    elapsed = time.perf_counter() - started
    stats = writer.stats.as_dict()
    await writer.stop()
    return elapsed, stats


def run_ingest_bench(rows: int = 1_000_000, dsn: str | None = None, batch_rows: int = 50_000,
                     seed: int = 7) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the CLI for their meaning)."""
    with database(dsn) as db, tempfile.TemporaryDirectory(prefix="patrolgate-bench-") as tmp:
        storage.upgrade(db)
        backend = storage.storage_info(db)["backend"]
        # 1. The exact rows the writer will write, through the writer once, exported in binary COPY format.
        settings = WriterSettings(
            batch_rows=batch_rows, queue_max_rows=_POOL_ROWS // 2, spool_dir=str(Path(tmp) / "spool")
        )
        asyncio.run(_writer_run(db, rows, settings, seed))
        columns = ", ".join(TELEMETRY_COLUMNS)
        rows_file = Path(tmp) / "rows.bin"
        rows_file.touch(mode=0o644)
        _psql_copy(db, f"\\copy (SELECT {columns} FROM telemetry) TO '{rows_file}' WITH (FORMAT binary)")
        size_bytes = rows_file.stat().st_size
        # 2. The ceiling: psql \copy of those rows into the emptied table.
        _reset(db)
        ceiling_s = _psql_copy(db, f"\\copy telemetry ({columns}) FROM '{rows_file}' WITH (FORMAT binary)")
        # 3. The writer, into the emptied table again.
        _reset(db)
        writer_s, stats = asyncio.run(_writer_run(db, rows, settings, seed))
        with psycopg.connect(db) as conn:
            stored = conn.execute("SELECT count(*) FROM telemetry").fetchone()[0]  # type: ignore[index]
    return {
        "rows": rows,
        "stored": int(stored),
        "rows_per_s": round(rows / writer_s),
        "ceiling_rows_per_s": round(rows / ceiling_s),
        "ratio": round(ceiling_s / writer_s, 3),
        "writer_s": round(writer_s, 3),
        "ceiling_s": round(ceiling_s, 3),
        "batch_rows": batch_rows,
        "backend": backend,
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        "copy_file_mb": round(size_bytes / 1e6, 1),
        "writer_stats": stats,
    }
