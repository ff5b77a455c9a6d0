"""Test harness: a real throwaway PostgreSQL and a real mosquitto per session, on free loopback ports.

The ``db`` fixture gives a fresh migrated database. For the storage and writer tests (``tests/telemetry``) it is
parametrized over both storage backends: ``[postgresql]`` on a plain server and ``[timescaledb]`` on a server
that preloads the extension. Where the extension is not installed the ``[timescaledb]`` variants are skipped
with the reason; a test that only makes sense on some backends says so with ``@pytest.mark.backends(...)``.
Elsewhere ``db`` is plain PostgreSQL only, to keep the end-to-end suites at one run each.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gateway.embedded import EmbeddedMosquitto, EmbeddedPostgres, timescaledb_available

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # for `from helpers import ...`

BACKENDS = ("postgresql", "timescaledb")
#: Test folders whose `db` tests run on every backend (the others run on plain PostgreSQL only).
BOTH_BACKENDS_DIRS = (Path(__file__).resolve().parent / "telemetry",)
NO_TIMESCALEDB = "the TimescaleDB extension is not installed for this PostgreSQL server"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "backends(*names): run this `db` test only on these storage backends (postgresql, timescaledb)"
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_backend" not in metafunc.fixturenames:
        return
    path = Path(str(metafunc.definition.path)).resolve()
    wanted: tuple[str, ...] = BACKENDS if any(d in path.parents for d in BOTH_BACKENDS_DIRS) else ("postgresql",)
    marker = metafunc.definition.get_closest_marker("backends")
    if marker is not None:
        unknown = set(marker.args) - set(BACKENDS)
        if unknown:
            raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown backends {sorted(unknown)}")
        wanted = tuple(b for b in BACKENDS if b in marker.args)
    if wanted == ("postgresql",):
        return  # the plain `db_backend` fixture below: no parameter, test ids unchanged
    metafunc.parametrize(
        "db_backend",
        [pytest.param(b, marks=[pytest.mark.timescaledb] if b == "timescaledb" else [], id=b) for b in wanted],
    )


@pytest.fixture(scope="session")
def pg_server() -> Iterator[EmbeddedPostgres]:
    """One plain-PostgreSQL server for the session (never preloads TimescaleDB, even where it is installed)."""
    with EmbeddedPostgres(timescaledb=False) as server:
        yield server


@pytest.fixture(scope="session")
def tsdb_server() -> Iterator[EmbeddedPostgres]:
    """One TimescaleDB server for the session; skips where the extension is not installed."""
    if not timescaledb_available():
        pytest.skip(NO_TIMESCALEDB)
    with EmbeddedPostgres(timescaledb=True) as server:
        yield server


@pytest.fixture
def db_backend() -> str:
    """The storage backend of `db`; parametrized over BACKENDS by `pytest_generate_tests` where wanted."""
    return "postgresql"


@pytest.fixture
def db(db_backend: str, request: pytest.FixtureRequest) -> str:
    """A fresh, empty database migrated to the current schema on ``db_backend`` (see the module docstring)."""
    from helpers import fresh_database

    from telemetry import storage

    server: EmbeddedPostgres = request.getfixturevalue("tsdb_server" if db_backend == "timescaledb" else "pg_server")
    name = "t_" + request.node.name.lower().replace("[", "_").replace("]", "")[:55]
    dsn = fresh_database(server.dsn, name)
    storage.upgrade(dsn, storage.StorageSettings(backend=db_backend))  # type: ignore[arg-type]
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
    skip = pytest.mark.skip(reason=NO_TIMESCALEDB)
    for item in items:
        if "timescaledb" in item.keywords:
            item.add_marker(skip)
