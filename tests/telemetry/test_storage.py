from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import psycopg
import pytest
from helpers import fresh_database, make_sample, query

from gateway.embedded import EmbeddedPostgres
from telemetry import storage
from telemetry.writer import TelemetryWriter, WriterSettings

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


@pytest.mark.backends("postgresql")
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


@pytest.mark.backends("postgresql")
def test_maintenance_gives_up_on_a_lock_instead_of_waiting_behind_it(db: str,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A long transaction holding telemetry (a big export, say) fails the run, which housekeeping retries; it
    must not hold up the gateway's stop for as long as that transaction lasts."""
    monkeypatch.setattr(storage, "MAINTAIN_LOCK_TIMEOUT_MS", 200)
    with psycopg.connect(db) as other, ThreadPoolExecutor(1) as pool:
        other.execute("LOCK TABLE telemetry IN ACCESS SHARE MODE")
        run = pool.submit(storage.maintain, db, storage.StorageSettings(partitions_ahead_days=40))
        try:
            with pytest.raises(psycopg.errors.LockNotAvailable):
                run.result(timeout=20)  # a wait without end fails here instead of hanging the suite
        finally:
            other.rollback()


def test_the_1_minute_summary_has_the_same_shape_on_both_backends(db: str) -> None:
    cols = query(db, "SELECT column_name, data_type FROM information_schema.columns "
                     "WHERE table_name = 'telemetry_1m' ORDER BY ordinal_position")
    assert cols == [("bucket", "timestamp with time zone"), ("vehicle_key", "integer"),
                    ("last_lat", "double precision"), ("last_lon", "double precision"), ("max_speed_mps", "real"),
                    ("min_battery_pct", "real"), ("samples", "bigint")]


def test_the_1_minute_summary_is_current_and_keeps_the_last_known_position(db: str) -> None:
    """Right after a write, without waiting for a refresh; a sample without a fix does not blank the position."""
    t0 = (datetime.now(UTC) - timedelta(minutes=10)).replace(second=0, microsecond=0)
    with psycopg.connect(db, autocommit=True) as conn:
        key = conn.execute("INSERT INTO vehicles (id, kind) VALUES ('car-01', 'patrol_car') RETURNING key").fetchone()
        assert key is not None
        rows = [(5, 31.1, 121.1, 5.0, 80.0), (20, 31.2, 121.2, 9.0, 79.0), (40, None, None, 7.0, 78.5),
                (60, 31.3, 121.3, 1.0, 78.0)]
        for second, lat, lon, speed, battery in rows:
            t = t0 + timedelta(seconds=second)
            conn.execute("INSERT INTO telemetry (time, vehicle_key, received_at, lat, lon, ground_speed_mps, "
                         "battery_pct) VALUES (%s, %s, %s, %s, %s, %s, %s)", (t, key[0], t, lat, lon, speed, battery))
    got = query(db, "SELECT bucket, last_lat, last_lon, max_speed_mps, min_battery_pct, samples FROM telemetry_1m "
                    "ORDER BY bucket")
    assert got == [(t0, 31.2, 121.2, 9.0, 78.5, 3), (t0 + timedelta(minutes=1), 31.3, 121.3, 1.0, 78.0, 1)]


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
def test_auto_uses_plain_postgres_when_timescaledb_is_installed_but_not_preloaded(
    pg_server: EmbeddedPostgres, caplog: pytest.LogCaptureFixture
) -> None:
    """The session's plain server has the extension installed but not in shared_preload_libraries."""
    dsn = fresh_database(pg_server.dsn, "mig_tsdb_not_preloaded")
    storage.upgrade(dsn)
    assert storage.storage_info(dsn)["backend"] == "postgresql"
    assert "shared_preload_libraries" in caplog.text
    dsn = fresh_database(pg_server.dsn, "mig_tsdb_not_preloaded_forced")
    with pytest.raises(RuntimeError, match="shared_preload_libraries"):
        storage.upgrade(dsn, storage.StorageSettings(backend="timescaledb"))


def _jobs(dsn: str) -> dict[str, tuple[int, dict[str, object]]]:
    rows = query(dsn, "SELECT proc_name, job_id, config FROM timescaledb_information.jobs WHERE job_id >= 1000")
    return {name: (job_id, config) for name, job_id, config in rows}


@pytest.mark.timescaledb
def test_timescaledb_hypertable_compression_and_aggregate(tsdb_server: EmbeddedPostgres) -> None:
    dsn = fresh_database(tsdb_server.dsn, "tsdb_policies")
    settings = storage.StorageSettings(chunk_interval=timedelta(hours=6), retention=timedelta(days=30))
    storage.upgrade(dsn, settings)
    info = storage.storage_info(dsn)
    assert info["backend"] == "timescaledb"
    assert info["chunk_interval_s"] == 6 * 3600
    ht = query(dsn, "SELECT hypertable_name FROM timescaledb_information.hypertables")
    assert ("telemetry",) in ht
    jobs = _jobs(dsn)
    assert {"policy_compression", "policy_retention", "policy_refresh_continuous_aggregate"} <= set(jobs)
    assert info["policies"]["policy_compression"] == {"compress_after": "7 days"}
    assert info["policies"]["policy_retention"] == {"drop_after": "30 days"}
    interval = query(dsn, "SELECT time_interval FROM timescaledb_information.dimensions "
                          "WHERE hypertable_name = 'telemetry'")
    assert interval == [(timedelta(hours=6),)]
    assert query(dsn, "SELECT materialized_only FROM timescaledb_information.continuous_aggregates "
                      "WHERE view_name = 'telemetry_1m'") == [(False,)]

    # The hourly maintain leaves policies that are as wanted alone (same jobs, same schedule).
    report = storage.maintain(dsn, settings)
    assert set(report["policies"].values()) == {"kept"}
    assert _jobs(dsn) == jobs

    # Changed settings take effect: compression off, another retention, another chunk interval.
    changed = storage.StorageSettings(chunk_interval=timedelta(days=1), compress_after=None,
                                      retention=timedelta(days=90))
    report = storage.maintain(dsn, changed)
    assert report["policies"] == {"chunk_interval": "changed", "policy_compression": "removed",
                                  "policy_retention": "replaced", "policy_refresh_continuous_aggregate": "kept"}
    now = _jobs(dsn)
    assert "policy_compression" not in now
    assert now["policy_retention"][1]["drop_after"] == "90 days"
    assert storage.storage_info(dsn)["chunk_interval_s"] == 86400


@pytest.mark.backends("timescaledb")
async def test_timescaledb_compressed_chunks_still_take_late_samples(db: str, tmp_path: Path) -> None:
    """A replayed old log lands in a chunk that the compression policy has already compressed."""
    old = datetime.now(UTC) - timedelta(days=20)
    writer = TelemetryWriter(db, WriterSettings(spool_dir=str(tmp_path / "spool"), flush_interval_s=0.05))
    await writer.start()
    await writer.submit([make_sample(f"car-{i % 4:02d}", old + timedelta(seconds=i)) for i in range(400)])
    await writer.flush()
    [(job_id, _config)] = [v for k, v in _jobs(db).items() if k == "policy_compression"]
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CALL run_job(%s)", (job_id,))
    info = storage.storage_info(db)
    assert info["compression"]["compressed_chunks"] == info["chunks"] == 1
    assert info["compression"]["before_bytes"] > 0 and info["compression"]["after_bytes"] > 0
    await writer.submit([make_sample("car-09", old + timedelta(seconds=1000), battery_pct=42.0)])
    await writer.stop()
    assert writer.stats.rejected == {}
    assert query(db, "SELECT count(*), count(DISTINCT vehicle_key) FROM telemetry") == [(401, 5)]
    assert query(db, "SELECT battery_pct FROM telemetry WHERE time = %s", old + timedelta(seconds=1000)) == [(42.0,)]
    assert query(db, "SELECT sum(samples) FROM telemetry_1m") == [(401,)]


def test_migration_3_moves_car_fields_out_of_extra(db_backend: str, request: pytest.FixtureRequest) -> None:
    """Rows stored by schema 2 kept odometer, fuel, RSSI and seq in ``extra``; schema 3 moves them into their
    columns (on TimescaleDB also in a compressed chunk), leaves other keys, and empties ``extra`` to NULL."""
    server: EmbeddedPostgres = request.getfixturevalue("tsdb_server" if db_backend == "timescaledb" else "pg_server")
    dsn = fresh_database(server.dsn, f"mig3_{db_backend}")
    settings = storage.StorageSettings(backend=db_backend)  # type: ignore[arg-type]
    assert storage.upgrade(dsn, settings, up_to=2) == [1, 2]
    t0 = datetime.now(UTC) - timedelta(days=20)
    with psycopg.connect(dsn, autocommit=True) as conn:
        (key,) = conn.execute("INSERT INTO vehicles (id, kind) VALUES ('car-01', 'patrol_car') RETURNING key"
                              ).fetchone()  # type: ignore[misc]
        if db_backend == "postgresql":
            storage.ensure_partitions(conn, {t0.date()})
        extras = ['{"seq": 7, "odometer_m": 1234.5, "fuel_pct": 55, "rssi_dbm": -71}',
                  '{"seq": 8, "siren": true}', None]
        for i, extra in enumerate(extras):
            conn.execute("INSERT INTO telemetry (time, vehicle_key, received_at, lat, lon, extra) "
                         "VALUES (%s, %s, %s, 31.2, 121.4, %s::jsonb)", (t0 + timedelta(seconds=i), key, t0, extra))
        conn.execute("INSERT INTO vehicle_latest (vehicle_key, time, received_at, extra) VALUES (%s, %s, %s, %s)",
                     (key, t0, t0, extras[0]))
        if db_backend == "timescaledb":
            conn.execute("SELECT compress_chunk(c) FROM show_chunks('telemetry') c")
    assert storage.upgrade(dsn, settings) == list(range(3, storage.SCHEMA_VERSION + 1))
    rows = query(dsn, "SELECT seq, odometer_m, fuel_pct, rssi_dbm, extra FROM telemetry ORDER BY time")
    assert rows == [(7, 1234.5, 55.0, -71.0, None), (8, None, None, None, {"siren": True}),
                    (None, None, None, None, None)]
    assert query(dsn, "SELECT seq, odometer_m, fuel_pct, rssi_dbm, extra FROM vehicle_latest") == [
        (7, 1234.5, 55.0, -71.0, None)]
    # Migration 4 swapped the time index under the compressed chunk too; a time window still finds its rows.
    assert _telemetry_indexes(dsn) == {("telemetry_time_brin", "brin", "time"),
                                       ("telemetry_vehicle_time_idx", "btree", "vehicle_key, time DESC")}
    assert query(dsn, "SELECT count(*) FROM telemetry WHERE time BETWEEN %s AND %s",
                 t0, t0 + timedelta(seconds=1)) == [(2,)]


def _telemetry_indexes(dsn: str) -> set[tuple[str, str, str]]:
    """(name, access method, key columns) of the indexes on ``telemetry`` itself (not its chunks/partitions)."""
    rows = query(dsn, """
        SELECT i.relname, am.amname, pg_get_indexdef(i.oid)
        FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid JOIN pg_am am ON am.oid = i.relam
        WHERE x.indrelid = 'telemetry'::regclass""")
    return {(name, method, definition.rsplit("(", 1)[1].rstrip(")").replace('"', ""))
            for name, method, definition in rows}


def test_time_is_indexed_by_brin_on_both_backends(db: str) -> None:
    """Per-vehicle tracks have their b-tree; a time window across the fleet is found by a BRIN index, which costs
    almost nothing per inserted row (TimescaleDB's default b-tree on time cost a third of COPY's server time)."""
    assert _telemetry_indexes(db) == {("telemetry_time_brin", "brin", "time"),
                                      ("telemetry_vehicle_time_idx", "btree", "vehicle_key, time DESC")}


def test_a_partition_another_session_creates_meanwhile_is_taken_as_it_is(pg_server: EmbeddedPostgres) -> None:
    """The gateway's start-up housekeeping and its writer (or two gateways at midnight) may create the same
    day's partition at once: the second waits for the first, then must go on, not fail its batch."""
    dsn = fresh_database(pg_server.dsn, "partition_race")
    storage.upgrade(dsn, storage.StorageSettings(backend="postgresql"), then_maintain=False)
    day = date(2031, 1, 2)
    first = psycopg.connect(dsn)
    try:
        storage.ensure_partitions(first, {day})  # not committed yet: the other session has to wait
        outcome: dict[str, object] = {}

        def second() -> None:
            try:
                with psycopg.connect(dsn) as conn, conn.transaction():
                    storage.ensure_partitions(conn, {day})
                    conn.execute("SELECT 1")  # the caller's transaction is still usable
                outcome["ok"] = True
            except Exception as exc:  # reported to the test thread
                outcome["error"] = exc

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        assert thread.is_alive()  # blocked behind the first session
        first.commit()
        thread.join(10)
        assert outcome == {"ok": True}
    finally:
        first.close()
    assert query(dsn, "SELECT count(*) FROM pg_tables WHERE tablename = %s", storage.partition_name(day)) == [(1,)]


async def test_a_partition_dropped_under_the_writer_is_made_again(pg_server: EmbeddedPostgres, tmp_path: Path) -> None:
    """Retention drops old daily partitions while the writer still remembers having made them: a late sample
    for such a day (a replayed old log) gets its partition again, instead of the writer retrying on the cached
    day until RecursionError and rejecting the batch."""
    dsn = fresh_database(pg_server.dsn, "partition_dropped")
    storage.upgrade(dsn, storage.StorageSettings(backend="postgresql"), then_maintain=False)
    old = datetime(2025, 3, 4, 12, 0, tzinfo=UTC)
    writer = TelemetryWriter(dsn, WriterSettings(spool_dir=str(tmp_path / "spool"), flush_interval_s=0.05))
    await writer.start()
    try:
        await writer.submit([make_sample("car-01", old)])
        await writer.flush()
        with psycopg.connect(dsn, autocommit=True) as conn:  # what retention does
            conn.execute(f"DROP TABLE {storage.partition_name(old.date())}")
        await writer.submit([make_sample("car-01", old + timedelta(seconds=1), battery_pct=61.0)])
        await writer.flush()
    finally:
        await writer.stop()
    assert writer.stats.rejected == {}
    assert query(dsn, "SELECT battery_pct FROM telemetry") == [(61.0,)]
