"""Test harness: a real throwaway PostgreSQL and a real mosquitto per session, on free loopback ports."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.embedded import EmbeddedMosquitto, EmbeddedPostgres, timescaledb_available

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `from helpers import ...`


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One plain-PostgreSQL server for the session (TimescaleDB tests use their own)."""
    with EmbeddedPostgres(timescaledb=False) as server:
        yield server


@pytest.fixture
def db(pg_server: EmbeddedPostgres, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database on the session server, migrated to the current schema."""
    from helpers import fresh_database

    from telemetry import storage

    dsn = fresh_database(pg_server.dsn, "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:50])
    storage.upgrade(dsn)
    return dsn


@pytest.fixture(scope="session")
def mqtt_broker() -> Iterator[EmbeddedMosquitto]:
    """One anonymous mosquitto broker for the session; `.host`, `.port`, `.url`."""
    with EmbeddedMosquitto() as broker:
        yield broker


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """../shared beside the project; a user's clone has none, so tests that need it skip."""
    if not SHARED.is_dir():
        pytest.skip(f"{SHARED} is not there (a user's clone has no ../shared test data)")
    return SHARED


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if timescaledb_available():
        return
    skip = pytest.mark.skip(reason="the TimescaleDB extension is not installed for this PostgreSQL server")
    for item in items:
        if "timescaledb" in item.keywords:
            item.add_marker(skip)
