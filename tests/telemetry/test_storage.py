from __future__ import annotations

from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from helpers import fresh_database, query

from gateway.embedded import EmbeddedPostgres
from telemetry import storage

pytestmark = pytest.mark.postgres

TABLES = {"vehicles", "telemetry", "vehicle_latest", "events", "rejected", "schema_migrations", "ingest_batches"}


def test_upgrade_from_empty_then_rerun_is_idempotent(pg_server: EmbeddedPostgres) -> None:
    dsn = fresh_database(pg_server.dsn, "mig_empty")
    applied = storage.upgrade(dsn)
    assert applied == list(range(1, storage.SCHEMA_VERSION + 1))
    names = {r[0] for r in query(dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'")}
    assert names >= TABLES
    assert storage.upgrade(dsn) == []
    assert query(dsn, "SELECT max(version) FROM schema_migrations") == [(storage.SCHEMA_VERSION,)]
    assert query(dsn, "SELECT value FROM storage_info WHERE key = 'backend'") == [("postgresql",)]


def test_refuses_a_database_newer_than_the_code(db: str) -> None:
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, 'future')",
                     (storage.SCHEMA_VERSION + 1,))
    with pytest.raises(storage.SchemaTooNewError, match="newer"):
        storage.upgrade(db)


def test_plain_postgres_partitions_ahead_and_retention(db: str) -> None:
    now = datetime(2026, 11, 28, 12, tzinfo=UTC)
    settings = storage.StorageSettings(partitions_ahead_days=2, retention=timedelta(days=3))
    with psycopg.connect(db, autocommit=True) as conn:
        storage.ensure_partitions(conn, {(now - timedelta(days=10)).date()})
    report = storage.maintain(db, settings, now=now)
    info = storage.storage_info(db)
    assert info["backend"] == "postgresql"
    for day in (now.date(), (now + timedelta(days=2)).date()):
        assert storage.partition_name(day) in info["partitions"]
    old = storage.partition_name((now - timedelta(days=10)).date())
    assert old in report["dropped"]
    assert old not in info["partitions"]


def test_the_1_minute_summary_has_the_same_shape_on_plain_postgres(db: str) -> None:
    cols = [r[0] for r in query(db, "SELECT column_name FROM information_schema.columns "
                                    "WHERE table_name = 'telemetry_1m' ORDER BY ordinal_position")]
    assert cols == ["bucket", "vehicle_key", "last_lat", "last_lon", "max_speed_mps", "min_battery_pct", "samples"]


def test_backend_postgresql_is_forced_when_asked(pg_server: EmbeddedPostgres) -> None:
    dsn = fresh_database(pg_server.dsn, "mig_forced")
    storage.upgrade(dsn, storage.StorageSettings(backend="postgresql"))
    assert storage.storage_info(dsn)["backend"] == "postgresql"


def test_asking_for_timescaledb_without_it_is_a_clear_error(pg_server: EmbeddedPostgres) -> None:
    from gateway.embedded import timescaledb_available

    if timescaledb_available():
        pytest.skip("TimescaleDB is installed here; this checks the error on servers without it")
    dsn = fresh_database(pg_server.dsn, "mig_tsdb_missing")
    with pytest.raises(RuntimeError, match="timescaledb"):
        storage.upgrade(dsn, storage.StorageSettings(backend="timescaledb"))


@pytest.mark.timescaledb
def test_timescaledb_hypertable_compression_and_aggregate() -> None:
    with EmbeddedPostgres(timescaledb=True) as pg:
        settings = storage.StorageSettings(chunk_interval=timedelta(hours=6), retention=timedelta(days=30))
        storage.upgrade(pg.dsn, settings)
        info = storage.storage_info(pg.dsn)
        assert info["backend"] == "timescaledb"
        ht = query(pg.dsn, "SELECT hypertable_name FROM timescaledb_information.hypertables")
        assert ("telemetry",) in ht
        jobs = {r[0] for r in query(pg.dsn, "SELECT proc_name FROM timescaledb_information.jobs")}
        assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= jobs
        interval = query(pg.dsn, "SELECT time_interval FROM timescaledb_information.dimensions "
                                 "WHERE hypertable_name = 'telemetry'")
        assert interval == [(timedelta(hours=6),)]
