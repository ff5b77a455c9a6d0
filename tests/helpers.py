"""Small builders shared by tests (imported as `from helpers import ...`; tests/ is on sys.path via conftest)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from telemetry.model import Sample, VehicleKind
from telemetry.writer import WriterSettings


def make_sample(vehicle: str = "car-01", t: datetime | None = None, **fields: Any) -> Sample:
    base: dict[str, Any] = {
        "time": t or datetime.now(UTC) - timedelta(seconds=5),
        "vehicle": vehicle,
        "kind": VehicleKind.PATROL_CAR if vehicle.startswith("car") else VehicleKind.DRONE,
        "lat_deg": 31.2304,
        "lon_deg": 121.4737,
        "source": "test",
    }
    base.update(fields)
    return Sample(**base)


def writer_settings(tmp_path: Path, **overrides: Any) -> WriterSettings:
    """Writer settings for tests: small batches, short intervals and backoff, a spool under ``tmp_path``."""
    base: dict[str, Any] = {"batch_rows": 500, "flush_interval_s": 0.05, "spool_dir": str(tmp_path / "spool"),
                            "backoff_initial_s": 0.05, "backoff_max_s": 0.5}
    base.update(overrides)
    return WriterSettings(**base)


def fresh_database(server_dsn: str, name: str) -> str:
    """Create an empty database on the session server and return its DSN."""
    with psycopg.connect(server_dsn, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return server_dsn.rsplit("/", 1)[0] + f"/{name}"


def query(dsn: str, sql: str, *params: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn) as conn:
        return conn.execute(sql, params or None).fetchall()  # type: ignore[arg-type]


async def until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
                poll_s: float = 0.02) -> None:
    """Wait for ``predicate()`` to hold: tests wait on conditions, never on fixed sleeps."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(poll_s)
