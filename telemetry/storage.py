"""Schema migrations and time-series housekeeping on TimescaleDB or plain PostgreSQL.

The backend is chosen once, at the first ``upgrade``: TimescaleDB when the extension can be created (and the
settings allow it), plain PostgreSQL otherwise, and recorded in ``storage_info``. Everything above this module
sees the same tables and the same ``telemetry_1m`` relation either way; only ``maintain`` differs (TimescaleDB
policies vs. native daily partitions created ahead and dropped by the same retention setting).
"""

from __future__ import annotations

import contextlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from importlib import resources
from typing import Any, Literal

import psycopg
from psycopg import sql

__all__ = [
    "SCHEMA_VERSION",
    "Backend",
    "SchemaTooNewError",
    "StorageSettings",
    "ensure_partitions",
    "maintain",
    "partition_name",
    "recent_key_times",
    "storage_info",
    "upgrade",
]

log = logging.getLogger(__name__)

Backend = Literal["timescaledb", "postgresql"]

_MIGRATION_RE = re.compile(r"^(\d{4})_([a-z0-9_]+?)(?:\.(timescaledb|postgresql))?\.sql$")


@dataclass(frozen=True, slots=True)
class StorageSettings:
    """Storage knobs; see gateway.config for their documentation and defaults."""

    backend: Literal["auto", "timescaledb", "postgresql"] = "auto"
    chunk_interval: timedelta = timedelta(days=1)
    compress_after: timedelta | None = timedelta(days=7)
    retention: timedelta | None = None
    partitions_ahead_days: int = 3


class SchemaTooNewError(RuntimeError):
    """The database was migrated by a newer patrolgate than this one; refusing to touch it."""


@dataclass(frozen=True, slots=True)
class _Migration:
    version: int
    name: str
    files: dict[str | None, str]  # backend (None = both) -> resource file name


def _migrations() -> list[_Migration]:
    found: dict[int, _Migration] = {}
    for entry in resources.files("telemetry.migrations").iterdir():
        m = _MIGRATION_RE.match(entry.name)
        if not m:
            continue
        version, name, backend = int(m.group(1)), m.group(2), m.group(3)
        mig = found.setdefault(version, _Migration(version, name, {}))
        mig.files[backend] = entry.name
    return [found[v] for v in sorted(found)]


SCHEMA_VERSION = max(m.version for m in _migrations())


def _sql_for(mig: _Migration, backend: Backend) -> str:
    name = mig.files.get(backend) or mig.files.get(None)
    if name is None:
        raise RuntimeError(f"migration {mig.version:04d}_{mig.name} has no file for backend {backend}")
    return resources.files("telemetry.migrations").joinpath(name).read_text(encoding="utf-8")


def _interval_literal(value: timedelta) -> str:
    return f"'{int(value.total_seconds())} seconds'"


def _timescaledb_preloaded(conn: psycopg.Connection[Any]) -> bool | None:
    """Whether the server preloads TimescaleDB; None when this role may not read shared_preload_libraries."""
    try:
        with conn.transaction():
            row = conn.execute("SELECT current_setting('shared_preload_libraries')").fetchone()
    except psycopg.errors.InsufficientPrivilege:
        return None
    libs = [lib.strip().strip('"') for lib in (row[0] if row else "").split(",")]
    return any(lib == "timescaledb" or lib.startswith("timescaledb-") for lib in libs)


def _try_create_timescaledb(dsn: str) -> str | None:
    """Create the extension on a connection of its own; returns why it failed, or None.

    A server that has the extension installed but not preloaded ends the session with FATAL ("must be
    preloaded"), so the attempt must not use the connection that holds the migration lock.
    """
    try:
        with psycopg.connect(dsn, autocommit=True) as probe:
            probe.execute("CREATE EXTENSION IF NOT EXISTS timescaledb")
    except psycopg.Error as exc:
        return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return None


def _choose_backend(conn: psycopg.Connection[Any], dsn: str, settings: StorageSettings) -> Backend:
    if settings.backend == "postgresql":
        return "postgresql"
    created = conn.execute("SELECT count(*) FROM pg_extension WHERE extname = 'timescaledb'").fetchone()
    if created and created[0]:
        return "timescaledb"
    available = conn.execute(
        "SELECT count(*) FROM pg_available_extensions WHERE name = 'timescaledb'"
    ).fetchone()
    if available and available[0]:
        if _timescaledb_preloaded(conn) is False:
            problem: str | None = "the server does not preload it (add 'timescaledb' to shared_preload_libraries)"
        else:
            problem = _try_create_timescaledb(dsn)
        if problem is None:
            return "timescaledb"
        if settings.backend == "timescaledb":
            raise RuntimeError(f"storage.backend = timescaledb but the extension cannot be created: {problem}")
        log.warning("TimescaleDB is installed but not usable (%s); using plain PostgreSQL", problem)
        return "postgresql"
    if settings.backend == "timescaledb":
        raise RuntimeError(
            "storage.backend = timescaledb but the extension is not installed on this server; "
            "install it or set storage.backend = 'auto'"
        )
    return "postgresql"


def current_version(conn: psycopg.Connection[Any]) -> int:
    exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return 0
    row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()
    return int(row[0]) if row else 0


def current_backend(conn: psycopg.Connection[Any]) -> Backend | None:
    exists = conn.execute("SELECT to_regclass('storage_info') IS NOT NULL").fetchone()
    if not exists or not exists[0]:
        return None
    row = conn.execute("SELECT value FROM storage_info WHERE key = 'backend'").fetchone()
    return row[0] if row else None  # type: ignore[return-value]


def upgrade(dsn: str, settings: StorageSettings | None = None, *, up_to: int | None = None,
            then_maintain: bool = True) -> list[int]:
    """Apply every migration not yet applied (or those up to version ``up_to``), each in its own transaction;
    returns the versions applied. Then runs `maintain` unless ``then_maintain`` is False (the gateway runs it
    in the background instead: it took 50 ms of every start, before the first message could be taken).

    Idempotent. Refuses (``SchemaTooNewError``) a database whose schema version is newer than this code's.
    Concurrent upgrades are serialized by an advisory lock.
    """
    settings = settings or StorageSettings()
    applied: list[int] = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_advisory_lock(727274)")
        try:
            conn.execute(
                "CREATE TABLE IF NOT EXISTS schema_migrations ("
                " version integer PRIMARY KEY, name text NOT NULL,"
                " applied_at timestamptz NOT NULL DEFAULT now())"
            )
            version = current_version(conn)
            if version > SCHEMA_VERSION:
                raise SchemaTooNewError(
                    f"database schema version {version} is newer than this patrolgate's {SCHEMA_VERSION}; "
                    "upgrade patrolgate instead"
                )
            backend = current_backend(conn) or _choose_backend(conn, dsn, settings)
            for mig in _migrations():
                if mig.version <= version or (up_to is not None and mig.version > up_to):
                    continue
                text = _sql_for(mig, backend).replace("{chunk_interval}", _interval_literal(settings.chunk_interval))
                with conn.transaction():
                    conn.execute(text)  # type: ignore[arg-type]  # trusted migration file
                    if mig.version == 1:
                        conn.execute(
                            "INSERT INTO storage_info (key, value) VALUES ('backend', %s) "
                            "ON CONFLICT (key) DO NOTHING",
                            (backend,),
                        )
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (mig.version, mig.name)
                    )
                applied.append(mig.version)
                log.info("applied migration %04d_%s (%s)", mig.version, mig.name, backend)
        finally:
            conn.execute("SELECT pg_advisory_unlock(727274)")
    if then_maintain:
        maintain(dsn, settings)
    return applied


def partition_name(day: date) -> str:
    return f"telemetry_p{day:%Y%m%d}"


def ensure_partitions(conn: psycopg.Connection[Any], days: set[date]) -> None:
    """Create the daily partitions of ``telemetry`` for ``days`` (plain PostgreSQL only; no-op otherwise).

    Safe beside another session creating the same day (the gateway's start-up housekeeping and its writer, two
    gateways on one database at midnight): ``IF NOT EXISTS`` is checked before the lock, so the second creator
    waits for the first and then fails with DuplicateTable. Each day has its own savepoint and that failure means
    the partition is there: the caller's transaction (a batch of telemetry) goes on.
    """
    if not days:
        return
    kind = conn.execute("SELECT relkind FROM pg_class WHERE oid = 'telemetry'::regclass").fetchone()
    if not kind or kind[0] != "p":  # a TimescaleDB hypertable makes its own chunks
        return
    for day in sorted(days):
        start = datetime(day.year, day.month, day.day, tzinfo=UTC)
        create = sql.SQL("CREATE TABLE IF NOT EXISTS {} PARTITION OF telemetry FOR VALUES FROM ({}) TO ({})").format(
            sql.Identifier(partition_name(day)), sql.Literal(start), sql.Literal(start + timedelta(days=1))
        )
        with contextlib.suppress(psycopg.errors.DuplicateTable), conn.transaction():
            conn.execute(create)


#: How long one maintenance statement waits for a lock (milliseconds) before the run fails and is retried.
MAINTAIN_LOCK_TIMEOUT_MS = 10_000


def maintain(dsn: str, settings: StorageSettings, now: datetime | None = None) -> dict[str, Any]:
    """Housekeeping the gateway runs at start and then hourly.

    Plain PostgreSQL: create partitions for today and ``partitions_ahead_days`` ahead, drop whole partitions
    older than the retention. TimescaleDB: (re)apply the compression, retention and continuous-aggregate
    policies so changed settings take effect. Also prunes ``ingest_batches`` ids older than 7 days.
    """
    now = now or datetime.now(UTC)
    report: dict[str, Any] = {"created": [], "dropped": []}
    with psycopg.connect(dsn, autocommit=True) as conn:
        # A long query holding a lock on telemetry fails this run (retried later), not the gateway's stop.
        conn.execute(f"SET lock_timeout = {MAINTAIN_LOCK_TIMEOUT_MS}")
        backend = current_backend(conn)
        report["backend"] = backend
        if backend == "postgresql":
            today = now.date()
            wanted = {today + timedelta(days=i) for i in range(-1, settings.partitions_ahead_days + 1)}
            existing = _partition_days(conn)
            missing = wanted - existing
            ensure_partitions(conn, missing)
            report["created"] = sorted(partition_name(d) for d in missing)
            if settings.retention is not None:
                cutoff = (now - settings.retention).date()
                for day in sorted(existing):
                    if day + timedelta(days=1) <= cutoff:
                        conn.execute(sql.SQL("DROP TABLE IF EXISTS {}").format(sql.Identifier(partition_name(day))))
                        report["dropped"].append(partition_name(day))
        elif backend == "timescaledb":
            report["policies"] = _apply_timescale_policies(conn, settings)
        conn.execute("DELETE FROM ingest_batches WHERE committed_at < now() - interval '7 days'")
    return report


def _partition_days(conn: psycopg.Connection[Any]) -> set[date]:
    rows = conn.execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = 'telemetry'::regclass"
    ).fetchall()
    days: set[date] = set()
    for (name,) in rows:
        m = re.fullmatch(r"telemetry_p(\d{8})", name)
        if m:
            days.add(datetime.strptime(m.group(1), "%Y%m%d").date())
    return days


#: The continuous-aggregate refresh policy of ``telemetry_1m``: the last day, up to a minute ago, every minute
#: (newer buckets are computed from the raw rows on read: the aggregate is real-time).
_CAGG_POLICY = {"start_offset": timedelta(days=1), "end_offset": timedelta(minutes=1),
                "schedule_interval": timedelta(minutes=1)}


def _telemetry_jobs(conn: psycopg.Connection[Any], proc_name: str) -> list[tuple[int, dict[str, Any], timedelta]]:
    """(job_id, config, schedule_interval) of the ``proc_name`` policies on ``telemetry`` or ``telemetry_1m``."""
    rows = conn.execute(
        "SELECT j.job_id, j.config, j.schedule_interval FROM timescaledb_information.jobs j "
        "LEFT JOIN timescaledb_information.continuous_aggregates ca "
        "  ON ca.materialization_hypertable_schema = j.hypertable_schema "
        " AND ca.materialization_hypertable_name = j.hypertable_name "
        "WHERE j.proc_name = %s "
        "  AND ((j.hypertable_schema = current_schema() AND j.hypertable_name = 'telemetry') "
        "    OR (ca.view_schema = current_schema() AND ca.view_name = 'telemetry_1m'))",
        (proc_name,),
    ).fetchall()
    return [(int(r[0]), dict(r[1] or {}), r[2]) for r in rows]


def _same_intervals(conn: psycopg.Connection[Any], pairs: list[tuple[Any, timedelta]]) -> bool:
    """Whether each job-config interval text equals the wanted interval (compared by PostgreSQL)."""
    for have, want in pairs:
        if have is None:
            return False
        row = conn.execute("SELECT %s::interval = %s::interval", (str(have), want)).fetchone()
        if not row or not row[0]:
            return False
    return True


def _apply_timescale_policies(conn: psycopg.Connection[Any], settings: StorageSettings) -> dict[str, str]:
    """Make the chunk interval and the policies match ``settings``; returns what each one is now.

    Runs at every start and then hourly, so a policy already as wanted is left alone: dropping and re-adding
    it would give it a new job id, lose its run history and reset its schedule every hour.
    """
    done: dict[str, str] = {}
    row = conn.execute(
        "SELECT time_interval FROM timescaledb_information.dimensions "
        "WHERE hypertable_schema = current_schema() AND hypertable_name = 'telemetry' AND column_name = 'time'"
    ).fetchone()
    if row and row[0] != settings.chunk_interval:
        conn.execute("SELECT set_chunk_time_interval('telemetry', %s::interval)", (settings.chunk_interval,))
        done["chunk_interval"] = "changed"  # for chunks created from now on
    else:
        done["chunk_interval"] = "kept"

    for proc, key, want, add_sql, remove_sql in (
        ("policy_compression", "compress_after", settings.compress_after,
         "SELECT add_compression_policy('telemetry', %s::interval)",
         "SELECT remove_compression_policy('telemetry', if_exists => true)"),
        ("policy_retention", "drop_after", settings.retention,
         "SELECT add_retention_policy('telemetry', %s::interval)",
         "SELECT remove_retention_policy('telemetry', if_exists => true)"),
    ):
        jobs = _telemetry_jobs(conn, proc)
        if want is None:
            if jobs:
                conn.execute(remove_sql)
                done[proc] = "removed"
            else:
                done[proc] = "none"
        elif len(jobs) == 1 and _same_intervals(conn, [(jobs[0][1].get(key), want)]):
            done[proc] = "kept"
        else:
            with conn.transaction():
                conn.execute(remove_sql)
                conn.execute(add_sql, (want,))
            done[proc] = "replaced" if jobs else "added"

    proc = "policy_refresh_continuous_aggregate"
    jobs = _telemetry_jobs(conn, proc)
    if len(jobs) == 1 and jobs[0][2] == _CAGG_POLICY["schedule_interval"] and _same_intervals(
        conn, [(jobs[0][1].get(k), _CAGG_POLICY[k]) for k in ("start_offset", "end_offset")]
    ):
        done[proc] = "kept"
    else:
        with conn.transaction():
            conn.execute("SELECT remove_continuous_aggregate_policy('telemetry_1m', if_exists => true)")
            conn.execute(
                "SELECT add_continuous_aggregate_policy('telemetry_1m', start_offset => %(start_offset)s::interval, "
                "end_offset => %(end_offset)s::interval, schedule_interval => %(schedule_interval)s::interval)",
                _CAGG_POLICY,
            )
        done[proc] = "replaced" if jobs else "added"
    return done


def storage_info(dsn: str) -> dict[str, Any]:
    """What `patrolgate db info` prints: backend, schema version, row counts and sizes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        info: dict[str, Any] = {
            "backend": current_backend(conn),
            "schema_version": current_version(conn),
            "code_schema_version": SCHEMA_VERSION,
            "server_version": conn.info.server_version,
        }
        if info["backend"] is None:
            return info
        sizes: dict[str, Any] = {}
        if info["backend"] == "timescaledb":
            row = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'timescaledb'"
            ).fetchone()
            info["timescaledb_version"] = row[0] if row else None
            row = conn.execute("SELECT coalesce(hypertable_size('telemetry'), 0)").fetchone()
            sizes["telemetry_bytes"] = int(row[0]) if row else 0
            row = conn.execute(
                "SELECT coalesce(hypertable_size(format('%I.%I', materialization_hypertable_schema, "
                "materialization_hypertable_name)::regclass), 0) "
                "FROM timescaledb_information.continuous_aggregates "
                "WHERE view_schema = current_schema() AND view_name = 'telemetry_1m'"
            ).fetchone()
            sizes["telemetry_1m_bytes"] = int(row[0]) if row else 0
            row = conn.execute(
                "SELECT time_interval FROM timescaledb_information.dimensions "
                "WHERE hypertable_schema = current_schema() AND hypertable_name = 'telemetry' "
                "AND column_name = 'time'"
            ).fetchone()
            info["chunk_interval_s"] = int(row[0].total_seconds()) if row and row[0] is not None else None
            row = conn.execute(
                "SELECT count(*), count(*) FILTER (WHERE is_compressed) FROM timescaledb_information.chunks "
                "WHERE hypertable_schema = current_schema() AND hypertable_name = 'telemetry'"
            ).fetchone()
            info["chunks"] = int(row[0]) if row else 0
            comp = conn.execute(
                "SELECT coalesce(sum(before_compression_total_bytes), 0), "
                "coalesce(sum(after_compression_total_bytes), 0) FROM hypertable_compression_stats('telemetry')"
            ).fetchone()
            info["compression"] = {
                "compressed_chunks": int(row[1]) if row else 0,
                "before_bytes": int(comp[0]) if comp else 0,
                "after_bytes": int(comp[1]) if comp else 0,
            }
            info["policies"] = {
                proc: {k: str(v) for k, v in config.items() if k.endswith(("_after", "_offset"))}
                for proc in ("policy_compression", "policy_retention", "policy_refresh_continuous_aggregate")
                for _job, config, _every in _telemetry_jobs(conn, proc)
            }
        else:
            row = conn.execute(
                "SELECT coalesce(sum(pg_total_relation_size(i.inhrelid)), 0) FROM pg_inherits i "
                "WHERE i.inhparent = 'telemetry'::regclass"
            ).fetchone()
            sizes["telemetry_bytes"] = int(row[0]) if row else 0
            info["partitions"] = sorted(partition_name(d) for d in _partition_days(conn))
        for table in ("vehicles", "vehicle_latest", "events", "rejected"):
            row = conn.execute(
                sql.SQL("SELECT pg_total_relation_size({})").format(sql.Literal(table))
            ).fetchone()
            sizes[f"{table}_bytes"] = int(row[0]) if row else 0
        info["sizes"] = sizes
        counts: dict[str, int] = {}
        for table in ("vehicles", "telemetry", "events", "rejected"):
            row = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
            counts[table] = int(row[0]) if row else 0
        info["rows"] = counts
        return info


def recent_key_times(
    dsn: str, window: timedelta = timedelta(minutes=2), limit: int = 50_000
) -> dict[str, list[datetime]]:
    """Fix times of the newest stored samples per vehicle, for the duplicate check after a restart.

    A broker redelivers what was in flight when the gateway stopped: messages committed but not yet
    acknowledged. They are among the last samples stored, so the newest ``limit`` within ``window`` of the
    newest one suffice (``vehicle_latest`` gives that newest time without scanning ``telemetry``).
    """
    with psycopg.connect(dsn, autocommit=True) as conn:
        newest = conn.execute("SELECT max(time) FROM vehicle_latest").fetchone()
        if not newest or newest[0] is None:
            return {}
        rows = conn.execute(
            "SELECT v.id, t.time FROM telemetry t JOIN vehicles v ON v.key = t.vehicle_key "
            "WHERE t.time > %s ORDER BY t.time DESC LIMIT %s",
            (newest[0] - window, limit),
        ).fetchall()
    out: dict[str, list[datetime]] = {}
    for vehicle, t in reversed(rows):
        out.setdefault(vehicle, []).append(t)
    return out
