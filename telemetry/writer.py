"""The ingest writer: batches samples, COPYs them into PostgreSQL, spools to disk when the database is away.

Flow. ``submit`` puts samples (plus events, rejections, vehicle registrations) on a bounded queue; when the
queue holds ``queue_max_rows`` it blocks the caller (backpressure to the drivers). One worker thread takes a
batch itself when ``batch_rows`` are queued or the oldest entry is ``flush_interval_s`` old, and writes it in a
single transaction: record the batch id in ``ingest_batches``, register new vehicles, binary COPY into
``telemetry``, insert events and rejections, upsert ``vehicle_latest`` (only when newer: out-of-order samples
never move it back), commit. A sample counts as stored only after that commit; the ``ack`` callbacks given to
``submit`` run then, on the event loop, in commit order (or once the batch is fsynced to the spool).

Several writers on one database (gateway instances on a shared subscription) wait for each other without
deadlocking: ``vehicle_latest`` rows are locked in key order, announcements in id order, registering a vehicle
that exists locks nothing, and the ``last_seen`` update skips rows another transaction holds. A deadlock that
happens anyway (an announcement meeting another writer's first ``vehicle_latest`` row of that vehicle, whose
foreign key check waits for it) is retried at once.

Errors, sorted by SQLSTATE class as Telegraf's PostgreSQL output does: connection loss and classes 08, 40, 53,
57, 58 are transient: the batch goes to the on-disk spool and the writer reconnects with capped, jittered,
doubling backoff; once back it replays the spool in order before anything new (new batches are spooled behind
it meanwhile), and a batch id already in ``ingest_batches`` is skipped, so a replay never duplicates. Any other
error is permanent for some row of the batch: the batch is bisected until the bad rows are found, and those go
to ``rejected`` with reason ``storage_error:<sqlstate>``; the rest is stored.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import operator
import random
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import msgspec
import orjson
import psycopg
from psycopg.adapt import Dumper
from psycopg.pq import Format
from psycopg.types.json import Jsonb, set_json_dumps

from telemetry import storage
from telemetry.model import Event, Rejection, Sample, VehicleInfo, VehicleKind, utcnow
from telemetry.spool import Spool, SpoolFullError

__all__ = ["Batch", "TelemetryWriter", "WriterSettings", "WriterStats", "is_transient"]

log = logging.getLogger(__name__)

Ack = Callable[[], None]

TELEMETRY_COLUMNS = (
    "vehicle_key", "time", "received_at", "lat", "lon", "alt_msl_m", "alt_rel_m", "heading_deg",
    "ground_speed_mps", "climb_mps", "roll_deg", "pitch_deg", "yaw_deg", "battery_pct", "battery_v", "mode",
    "armed", "gps_fix", "satellites", "link_quality_pct", "odometer_m", "fuel_pct", "rssi_dbm", "seq", "extra",
)
_COPY_TYPES = (
    "int4", "timestamptz", "timestamptz", "float8", "float8", "float4", "float4", "float4", "float4", "float4",
    "float4", "float4", "float4", "float4", "float4", "text", "bool", "int2", "int2", "float4", "float8", "float4",
    "float4", "int8", "jsonb",
)


def _keep_newer(latest: dict[int, tuple[Any, ...]], row: tuple[Any, ...]) -> None:
    """Keep ``row`` as its vehicle's newest (by key time, the row's second column) unless a newer one is there."""
    prev = latest.get(row[0])
    if prev is None or prev[1] <= row[1]:
        latest[row[0]] = row


_COLUMN_LIST = ", ".join(TELEMETRY_COLUMNS)
# vehicle_latest is upserted from a staging temp table filled by COPY: one statement per batch instead of one
# per vehicle (executemany of 1,000 upserts cost more than the COPY of 10,000 samples).
_STAGE_SQL = "CREATE TEMP TABLE IF NOT EXISTS latest_stage (LIKE vehicle_latest) ON COMMIT DELETE ROWS"
_COPY_SQL = f"COPY telemetry ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
_STAGE_COPY_SQL = f"COPY latest_stage ({_COLUMN_LIST}) FROM STDIN (FORMAT BINARY)"
_LATEST_SQL = (
    f"INSERT INTO vehicle_latest ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM latest_stage ORDER BY vehicle_key "
    "ON CONFLICT (vehicle_key) DO UPDATE SET "
    + ", ".join(f"{c} = EXCLUDED.{c}" for c in TELEMETRY_COLUMNS if c != "vehicle_key")
    + " WHERE vehicle_latest.time <= EXCLUDED.time"
)
_VEHICLE_OF = operator.attrgetter("vehicle")
LAST_SEEN_EVERY_S = 10.0
_TRANSIENT_CLASSES = {"08", "40", "53", "57", "58"}


def is_transient(exc: BaseException) -> bool:
    """True for errors worth retrying later (connection loss, overload, shutdown), False for bad data."""
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError | OSError):
        sqlstate = getattr(exc, "sqlstate", None)
        return sqlstate is None or sqlstate[:2] in _TRANSIENT_CLASSES
    if isinstance(exc, psycopg.Error):
        sqlstate = exc.sqlstate or ""
        return sqlstate[:2] in _TRANSIENT_CLASSES
    return False


@dataclass(frozen=True, slots=True)
class WriterSettings:
    batch_rows: int = 50_000
    flush_interval_s: float = 0.2
    #: Max age of queued rows whose producer waits for an ack (MQTT: the broker holds the next messages until
    #: then). Short enough for latency, long enough that a batch carries more than a handful of rows.
    ack_flush_interval_s: float = 0.02
    queue_max_rows: int = 100_000
    spool_dir: str | None = None
    spool_max_bytes: int = 2 << 30
    backoff_initial_s: float = 0.25
    backoff_max_s: float = 15.0


@dataclass(slots=True)
class WriterStats:
    """Counters; ``rejected`` counts rows per reason that the writer itself stored in ``rejected``."""

    queued: int = 0
    written: int = 0
    spooled: int = 0
    replayed: int = 0
    batches: int = 0
    events: int = 0
    rejected: dict[str, int] = field(default_factory=dict)
    db_errors: int = 0
    db_up: bool = False
    spool_pending_batches: int = 0
    last_commit_ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "queued": self.queued, "written": self.written, "spooled": self.spooled, "replayed": self.replayed,
            "batches": self.batches, "events": self.events, "rejected": dict(self.rejected),
            "db_errors": self.db_errors, "db_up": self.db_up, "spool_pending_batches": self.spool_pending_batches,
            "last_commit_ms": round(self.last_commit_ms, 2),
        }


@dataclass(slots=True)
class Batch:
    """What one transaction writes. ``id`` makes replays idempotent."""

    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    vehicles: list[VehicleInfo] = field(default_factory=list)
    id: uuid.UUID = field(default_factory=uuid.uuid4)

    @property
    def rows(self) -> int:
        return len(self.samples) + len(self.events) + len(self.rejections) + len(self.vehicles)

    # -- spool encoding: orjson of plain lists; times as ISO 8601 strings, bytes as base64 -----------------

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "id": str(self.id),
                "sample_fields": _SAMPLE_FIELDS,
                "samples": [_sample_to_list(s) for s in self.samples],
                "events": [[e.time, e.vehicle, e.type, e.detail, e.kind, e.lat_deg, e.lon_deg] for e in self.events],
                "rejections": [
                    [r.time, r.source, r.reason, r.detail, r.vehicle, base64.b64encode(r.raw).decode()
                     if r.raw is not None else None, r.topic]
                    for r in self.rejections
                ],
                "vehicles": [
                    [v.vehicle, v.kind, v.protocol, v.name, v.mavlink_sysid, v.mqtt_client_id, v.kind_known]
                    for v in self.vehicles
                ],
            }
        )

    @classmethod
    def decode(cls, payload: bytes) -> Batch:
        doc = orjson.loads(payload)
        ts = datetime.fromisoformat
        names = tuple(doc.get("sample_fields", _SPOOL_V1_SAMPLE_FIELDS))
        return cls(
            id=uuid.UUID(doc["id"]),
            samples=[_sample_from_list(names, row) for row in doc["samples"]],
            events=[
                Event(time=ts(t), vehicle=v, type=ty, detail=d, kind=VehicleKind(k) if k else None, lat_deg=la,
                      lon_deg=lo)
                for t, v, ty, d, k, la, lo in doc["events"]
            ],
            rejections=[
                Rejection(time=ts(t), source=so, reason=re_, detail=de, vehicle=ve,
                          raw=base64.b64decode(raw) if raw is not None else None, topic=to)
                for t, so, re_, de, ve, raw, to in doc["rejections"]
            ],
            vehicles=[  # records spooled before kind_known have 6 fields: their kinds were all known
                VehicleInfo(vehicle=v, kind=VehicleKind(k), protocol=p, name=n, mavlink_sysid=s, mqtt_client_id=c,
                            kind_known=known[0] if known else True)
                for v, k, p, n, s, c, *known in doc["vehicles"]
            ],
        )


_SAMPLE_FIELDS = tuple(f for f in Sample.__struct_fields__ if f != "raw")  # raw is never stored
#: The sample fields of spool records written before records named their fields (odometer_m, fuel_pct,
#: rssi_dbm and seq were keys of ``extra`` then): a spool left by that version still replays.
_FIELDS_FORMERLY_EXTRA = ("odometer_m", "fuel_pct", "rssi_dbm", "seq")
_SPOOL_V1_SAMPLE_FIELDS = (
    "time", "vehicle", "kind", "lat_deg", "lon_deg", "vehicle_time", "alt_msl_m", "alt_rel_m", "heading_deg",
    "ground_speed_mps", "climb_mps", "roll_deg", "pitch_deg", "yaw_deg", "battery_pct", "battery_v", "mode",
    "armed", "gps_fix", "satellites", "link_quality_pct", "extra", "source",
)


def _sample_to_list(s: Sample) -> list[Any]:
    return [getattr(s, f) for f in _SAMPLE_FIELDS]


def _sample_from_list(names: tuple[str, ...], row: list[Any]) -> Sample:
    """A spooled sample by the field names its record lists; a v1 record's ``extra`` gives up the keys that
    became fields since."""
    values = dict(zip(names, row, strict=True))
    extra = values.get("extra")
    if extra:
        for name in _FIELDS_FORMERLY_EXTRA:
            if name in extra and name not in values:
                values[name] = extra.pop(name)
        values["extra"] = extra or None
    values["raw"] = None
    values["time"] = datetime.fromisoformat(values["time"])
    if values["vehicle_time"] is not None:
        values["vehicle_time"] = datetime.fromisoformat(values["vehicle_time"])
    values["kind"] = VehicleKind(values["kind"])
    return Sample(**values)


class _JsonbCopyDumper(Dumper):
    """jsonb for the binary COPY of samples (``extra``) in one call: the format version byte, then orjson's bytes.

    psycopg's own dumper takes three Python calls per value; for every row of every batch that was a fifth of
    the writer's time, and the writer's thread competes with ingest for the GIL. Registered by oid only, so it
    serves ``Copy.set_types`` and nothing else.
    """

    format = Format.BINARY
    oid = psycopg.adapters.types["jsonb"].oid

    def dump(self, obj: Any) -> bytes:
        return b"\x01" + orjson.dumps(obj.obj if isinstance(obj, Jsonb) else obj)


class _Store:
    """The synchronous database side, used only from the writer's single worker thread."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: psycopg.Connection[Any] | None = None
        self.keys: dict[str, int] = {}
        self.partition_days: set[date] = set()
        self.backend: str | None = None
        self.last_seen_at: dict[int, float] = {}

    def connect(self) -> None:
        if self.conn is not None and not self.conn.closed:
            return
        if not psycopg.Pipeline.is_supported():  # not a database error: every batch would fail as bad data
            raise RuntimeError(f"the writer needs libpq 14 or newer for pipeline mode; this one is "
                               f"{psycopg.pq.version()} (install psycopg[binary], which bundles a recent libpq)")
        self.conn = psycopg.connect(self.dsn, autocommit=False, connect_timeout=5)
        set_json_dumps(orjson.dumps, context=self.conn)
        self.conn.adapters.register_dumper(None, _JsonbCopyDumper)
        with self.conn.transaction():
            self.backend = storage.current_backend(self.conn)
            if self.backend is None:
                raise RuntimeError("the database has no patrolgate schema; run `patrolgate db upgrade` first")
            self.keys = dict(self.conn.execute("SELECT id, key FROM vehicles").fetchall())
            self.conn.execute(_STAGE_SQL)  # once per session: it outlives every batch's transaction
        self.partition_days = set()

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    def write(self, batch: Batch) -> bool:
        """Write ``batch`` in one transaction; False when its id was already committed (a replay).

        Round trips are few on purpose: each one hands the GIL to the busy event loop, and getting it back takes
        up to the switch interval (5 ms). BEGIN and the batch id go in one pipeline, the upserts and COMMIT in
        another; only the COPYs, and what is rare (new vehicles, events, rejections), have their own. Measured: a
        small batch on an idle machine commits in 2.1 ms instead of 2.6 (eleven round trips before); under full
        MQTT load, where the interpreter lock is the bottleneck, the throughput stayed the same.

        Vehicle keys and partitions created inside the transaction are cached only once it commits: after a
        rollback they do not exist, and a stale cache would fail every later batch.
        """
        assert self.conn is not None
        conn = self.conn
        keys_before, days_before = dict(self.keys), set(self.partition_days)
        try:
            with conn.pipeline():  # BEGIN is sent with the first statement
                claimed = conn.execute(
                    "INSERT INTO ingest_batches (batch_id, rows) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1",
                    (batch.id, batch.rows),
                )
            if claimed.fetchone() is None:
                conn.rollback()
                return False
            self._register(conn, batch)
            with conn.cursor() as cur:
                latest = self._copy_samples(conn, cur, batch.samples) if batch.samples else {}
                if batch.events:
                    self._insert_events(conn, batch.events)
                if batch.rejections:
                    self._insert_rejections(conn, batch.rejections)
                touching = False
                with conn.pipeline():
                    if latest:
                        cur.execute(_LATEST_SQL)
                        touching = self._touch_last_seen(cur, latest)
                    conn.commit()
                touched = [key for (key,) in cur.fetchall()] if touching else []
            now = time.monotonic()
            for key in touched:  # only once committed: a rolled-back update must be made again
                self.last_seen_at[key] = now
        except BaseException:
            self.keys, self.partition_days = keys_before, days_before
            if not conn.closed:
                with contextlib.suppress(psycopg.Error):
                    conn.rollback()
            raise
        return True

    def _register(self, conn: psycopg.Connection[Any], batch: Batch) -> None:
        """Register the batch's announced vehicles, and any sample's or event's vehicle not known yet, in one
        statement each.

        One statement for all: a fleet appearing at once (1,000 cars after a restart) cost 1,000 round trips
        in the first batch, each waiting for the GIL behind ingest, half a second before its COPY began.
        """
        if batch.vehicles:
            # One row per vehicle (ON CONFLICT cannot touch a row twice): later announcements win field by field,
            # and a known kind wins over a default one.
            announced: dict[str, tuple[tuple[Any, ...], bool]] = {}
            for v in batch.vehicles:
                row = (v.vehicle, str(v.kind), v.protocol, v.name, v.mavlink_sysid, v.mqtt_client_id)
                known = v.kind_known
                if (before := announced.get(v.vehicle)) is not None:
                    old_row, old_known = before
                    row = tuple(new if new is not None else old for new, old in zip(row, old_row, strict=True))
                    if old_known and not known:
                        row, known = (row[0], old_row[1], *row[2:]), True
                announced[v.vehicle] = (row, known)
            for set_kind in (True, False):
                rows = [row for row, known in announced.values() if known is set_kind]
                if rows:
                    self._upsert_vehicles(conn, rows, update=True, set_kind=set_kind)
        unknown = set(map(_VEHICLE_OF, batch.samples)).union(map(_VEHICLE_OF, batch.events)).difference(self.keys)
        if unknown:
            missing: dict[str, tuple[str, str, str | None, None, None, None]] = {}
            for s in batch.samples:
                if s.vehicle in unknown and s.vehicle not in missing:
                    missing[s.vehicle] = (s.vehicle, str(s.kind), s.source.split(":", 1)[0] or None, None, None,
                                          None)
            for e in batch.events:
                if e.vehicle in unknown and e.vehicle not in missing:
                    missing[e.vehicle] = (e.vehicle, str(e.kind or VehicleKind.DRONE), None, None, None, None)
            self._upsert_vehicles(conn, list(missing.values()), update=False)

    def _upsert_vehicles(self, conn: psycopg.Connection[Any], rows: list[tuple[Any, ...]], *, update: bool,
                         set_kind: bool = False) -> None:
        """Insert vehicles (id, kind, protocol, name, mavlink_sysid, mqtt_client_id); cache their keys.

        ``update``: a driver's announcement refreshes protocol and the names it knows, and with ``set_kind`` the
        kind (a vehicle first registered from an event or a status, whose kind was the default, gets its real
        one); otherwise an existing row is left as it is (a sample only needs the key).
        """
        # Sorted by id: two gateways registering overlapping fleets lock the rows in the same order (no deadlock).
        columns = [list(c) for c in zip(*sorted(rows, key=lambda row: row[0]), strict=True)]
        insert = (
            "INSERT INTO vehicles (id, kind, protocol, name, mavlink_sysid, mqtt_client_id) "
            "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::int[], %s::text[]) "
        )
        if update:
            result = conn.execute(
                insert + "ON CONFLICT (id) DO UPDATE SET "
                + ("kind = EXCLUDED.kind, " if set_kind else "") + "protocol = EXCLUDED.protocol, "
                "name = coalesce(EXCLUDED.name, vehicles.name), "
                "mavlink_sysid = coalesce(EXCLUDED.mavlink_sysid, vehicles.mavlink_sysid), "
                "mqtt_client_id = coalesce(EXCLUDED.mqtt_client_id, vehicles.mqtt_client_id) RETURNING id, key",
                columns,
            ).fetchall()
        else:
            # DO NOTHING locks no existing row, so this never waits behind (or deadlocks with) another writer's
            # transaction on a vehicle both know; the keys come from a plain read.
            with conn.pipeline():
                conn.execute(insert + "ON CONFLICT (id) DO NOTHING", columns)
                found = conn.execute("SELECT id, key FROM vehicles WHERE id = ANY(%s)", (columns[0],))
            result = found.fetchall()
        for vehicle, key in result:
            self.keys[vehicle] = int(key)

    def _ensure_partitions(self, conn: psycopg.Connection[Any], samples: Sequence[Sample]) -> None:
        """Create missing daily partitions for the batch's UTC days (plain PostgreSQL only)."""
        if self.backend != "postgresql":
            return
        days = {s.key_time.date() for s in samples} - self.partition_days
        if days:
            storage.ensure_partitions(conn, days)
            self.partition_days |= days

    def _copy_samples(
        self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], samples: list[Sample]
    ) -> dict[int, tuple[Any, ...]]:
        """COPY the samples into ``telemetry``, and each vehicle's newest row into ``latest_stage``; returns those
        rows by vehicle key (the caller upserts ``vehicle_latest`` from the stage)."""
        if self.backend == "postgresql":
            latest = self._copy_into_partitions(conn, cur, samples)
        else:
            latest = self._copy_telemetry(cur, samples)
        with cur.copy(_STAGE_COPY_SQL) as copy:
            copy.set_types(_COPY_TYPES)
            for row in latest.values():
                copy.write_row(row)
        return latest

    def _copy_into_partitions(
        self, conn: psycopg.Connection[Any], cur: psycopg.Cursor[Any], samples: list[Sample]
    ) -> dict[int, tuple[Any, ...]]:
        """Plain PostgreSQL: the COPY in a savepoint, so a row outside the known partitions (an old log, a skewed
        clock) costs one retry with the partitions created, not a per-row check of every batch."""
        if not {samples[0].key_time.date(), samples[-1].key_time.date()} <= self.partition_days:
            self._ensure_partitions(conn, samples)
        try:
            with conn.transaction():
                return self._copy_telemetry(cur, samples)
        except psycopg.errors.CheckViolation:
            # A day this connection made may be gone since (retention drops old partitions): forget the batch's
            # days, make whatever is missing, and try once more (a second failure fails the batch).
            self.partition_days -= {s.key_time.date() for s in samples}
            self._ensure_partitions(conn, samples)
            return self._copy_telemetry(cur, samples)

    def _copy_telemetry(self, cur: psycopg.Cursor[Any], samples: list[Sample]) -> dict[int, tuple[Any, ...]]:
        """The binary COPY into ``telemetry``; returns each vehicle's newest row (by key time) by vehicle key."""
        keys = self.keys  # every sample's vehicle was registered by _register
        latest: dict[int, tuple[Any, ...]] = {}
        with cur.copy(_COPY_SQL) as copy:
            copy.set_types(_COPY_TYPES)
            add = copy.write_row
            vehicle, key, newest = None, 0, None
            for s in samples:
                if s.vehicle is not vehicle:  # identity: the samples of one message share the string
                    if newest is not None:
                        _keep_newer(latest, newest)
                    vehicle, newest = s.vehicle, None
                    key = keys[vehicle]
                # The row written out in TELEMETRY_COLUMNS order (a function building it cost a call per row):
                # the two computed columns, then the Sample's attributes.
                t = s.vehicle_time or s.time
                row = (key, t, s.time, s.lat_deg, s.lon_deg, s.alt_msl_m, s.alt_rel_m, s.heading_deg,
                       s.ground_speed_mps, s.climb_mps, s.roll_deg, s.pitch_deg, s.yaw_deg, s.battery_pct,
                       s.battery_v, s.mode, s.armed, s.gps_fix, s.satellites, s.link_quality_pct, s.odometer_m,
                       s.fuel_pct, s.rssi_dbm, s.seq, s.extra)
                add(row)
                if newest is None or newest[1] <= t:
                    newest = row
            if newest is not None:
                _keep_newer(latest, newest)
        return latest

    def _touch_last_seen(self, cur: psycopg.Cursor[Any], latest: dict[int, tuple[Any, ...]]) -> bool:
        """Move ``vehicles.last_seen`` forward, at most once per LAST_SEEN_EVERY_S per vehicle; True when an
        update was sent, whose result rows are the keys it updated (the caller marks them once committed).

        The exact last contact is ``vehicle_latest.received_at``; the registry column only needs to be close,
        and updating 1,000 registry rows in every batch cost more than the batch's vehicle_latest upsert.
        """
        now = time.monotonic()
        due = [k for k in latest if now - self.last_seen_at.get(k, -1e9) >= LAST_SEEN_EVERY_S]
        if due:
            # Rows another transaction holds (another writer registering or touching them) are skipped, not
            # waited for: a wait here, in key order, could close a cycle with registrations, which go in id order.
            # A skipped vehicle is due again at the next batch.
            cur.execute(
                "WITH mine AS (SELECT key FROM vehicles WHERE key = ANY(%s) FOR NO KEY UPDATE SKIP LOCKED) "
                "UPDATE vehicles v SET last_seen = greatest(v.last_seen, u.t) "
                "FROM mine JOIN unnest(%s::int[], %s::timestamptz[]) AS u(k, t) ON u.k = mine.key "
                "WHERE v.key = mine.key RETURNING v.key",
                (due, due, [latest[k][2] for k in due]),
            )
        return bool(due)

    def _insert_events(self, conn: psycopg.Connection[Any], events: list[Event]) -> None:
        rows = []
        for e in events:  # every event's vehicle was registered by _register
            rows.append((e.time, self.keys[e.vehicle], e.type, e.lat_deg, e.lon_deg, Jsonb(e.detail or {})))
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO events (time, vehicle_key, type, lat, lon, detail) VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )

    def _insert_rejections(self, conn: psycopg.Connection[Any], rejections: list[Rejection]) -> None:
        """Store the rejections, each raw message once per batch.

        The samples of a batched message share its payload, and so do the bad elements of one: a car with a
        skewed clock had its 12.8 KB message stored with each of its 50 samples (500 MB for 40 k rejected
        samples). Later rejections carrying the same bytes keep their own reason and detail, and say where the
        bytes are.
        """
        stored: set[bytes] = set()
        with conn.cursor() as cur, cur.copy(
            "COPY rejected (time, source, reason, vehicle, topic, detail, raw) FROM STDIN"
        ) as copy:
            for r in rejections:
                raw, detail = r.raw, r.detail
                if raw is not None:
                    if raw in stored:
                        raw, detail = None, f"{detail} (raw message stored with an earlier rejection of its batch)"
                    else:
                        stored.add(raw)
                copy.write_row((r.time, r.source, r.reason, r.vehicle, r.topic, detail, raw))


class TelemetryWriter:
    """Async front of the writer; see the module docstring for the flow and the guarantees.

    The database side is one worker thread that takes its next batch itself, from a queue guarded by a lock:
    between two commits it never waits for the event loop. (It used to be handed each batch by a task on the
    loop; under a burst of ingest every hop of that hand-over waited behind the loop's other work, and the
    database sat idle 40-80 ms between batches.) The loop only queues rows and runs the ``ack`` callbacks,
    which the worker posts back to it in commit order.
    """

    def __init__(self, dsn: str, settings: WriterSettings | None = None) -> None:
        self.settings = settings or WriterSettings()
        self.stats = WriterStats()
        self._store = _Store(dsn)
        self._spool: Spool | None = None
        # Shared with the worker thread, guarded by ``_work``: the queue and the stopping flag.
        self._work = threading.Condition(threading.Lock())
        self._pending: deque[tuple[float, Batch, list[Ack], int]] = deque()  # (queued at, batch, acks, submits)
        self._pending_rows = 0
        self._pending_acks = 0
        self._stopping = False
        self._closed = False  # set by the worker, in the same hold of the lock as its last look at the queue
        # Worker-thread only.
        self._backoff_s = self.settings.backoff_initial_s
        self._next_attempt = 0.0
        # Event-loop only.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._finished: asyncio.Future[None] | None = None
        self._room: asyncio.Event | None = None  # set when the worker took rows off a full queue
        self._settled: asyncio.Event | None = None  # set when a batch's acks have run
        self._unsettled = 0  # submits whose batch is not committed or spooled yet
        self._failure: BaseException | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        import tempfile

        spool_dir = self.settings.spool_dir or tempfile.mkdtemp(prefix="patrolgate-spool-")
        self._spool = Spool(spool_dir, max_bytes=self.settings.spool_max_bytes)
        self.stats.spool_pending_batches = self._spool.pending
        self._loop = asyncio.get_running_loop()
        connecting = asyncio.ensure_future(asyncio.to_thread(self._store.connect))
        try:
            await asyncio.shield(connecting)
            self.stats.db_up = True
        except Exception as exc:
            if not is_transient(exc):
                self._store.close()  # connect() may fail after opening the connection
                self._spool.close()
                raise
            log.warning("database not reachable at start (%s); spooling until it is", exc)
            self.stats.db_up = False
        except BaseException:  # cancelled: no worker will ever own the spool, nor the connection being made
            self._spool.close()
            connecting.add_done_callback(self._close_when_connected)
            raise
        # Only now: after a failed start, stop() has nothing to wait for and submit() refuses.
        self._room, self._settled = asyncio.Event(), asyncio.Event()
        self._finished = self._loop.create_future()
        self._thread = threading.Thread(target=self._worker, name="patrolgate-writer", daemon=True)
        self._thread.start()

    def _close_when_connected(self, connecting: asyncio.Future[None]) -> None:
        if not connecting.cancelled():
            connecting.exception()  # retrieved: a connect failing after a cancelled start is nobody's error
        self._store.close()

    async def stop(self) -> None:
        """Flush everything queued (to the database, or to the spool if it is down), then close."""
        with self._work:
            self._stopping = True
            self._work.notify()
        if self._finished is not None:
            await asyncio.shield(self._finished)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        if self._failure is not None:  # rows queued at stop() may be neither stored nor spooled: say so
            raise RuntimeError(f"the telemetry writer stopped: {self._failure!r}") from self._failure

    # -- producers ------------------------------------------------------------------------------------------

    async def submit(
        self,
        samples: Sequence[Sample] = (),
        *,
        events: Sequence[Event] = (),
        rejections: Sequence[Rejection] = (),
        vehicles: Sequence[VehicleInfo] = (),
        ack: Ack | None = None,
    ) -> None:
        """Queue rows; blocks while the queue is full. ``ack`` fires once they are committed or spooled."""
        assert self._room is not None, "start() the writer first"
        self._check_alive()
        while self._pending_rows >= self.settings.queue_max_rows and not self._stopping:
            self._room.clear()
            if self._pending_rows < self.settings.queue_max_rows:  # the worker took some meanwhile
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._room.wait()
            self._check_alive()
        batch = Batch(list(samples), list(events), list(rejections), list(vehicles))
        rows = batch.rows
        with self._work:
            if self._closed:  # the worker is gone (stopped or crashed): nobody would ever take these rows
                raise RuntimeError("the telemetry writer is stopped") from self._failure
            self._unsettled += 1
            was_idle = not self._pending
            self._pending.append((time.monotonic(), batch, [ack] if ack else [], 1))
            self._pending_rows += rows
            first_ack = ack is not None and not self._pending_acks
            if ack is not None:
                self._pending_acks += 1
            self.stats.queued += len(samples)
            # Wake the worker only when its deadline moves: a first entry, a first waiting ack, a full batch.
            if was_idle or first_ack or self._pending_rows >= self.settings.batch_rows:
                self._work.notify()

    async def flush(self) -> None:
        """Wait until everything submitted so far is committed or spooled, and its acks have run."""
        assert self._settled is not None
        while self._unsettled:
            self._check_alive()
            self._settled.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._settled.wait()

    def _check_alive(self) -> None:
        """Surface a crashed worker to producers instead of letting them wait forever."""
        if self._failure is not None:
            raise RuntimeError(f"the telemetry writer stopped: {self._failure!r}") from self._failure

    @property
    def backlog_rows(self) -> int:
        return self._pending_rows

    # -- back on the event loop -----------------------------------------------------------------------------

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        """Run ``callback(*args)`` on the event loop, in order with everything posted before it."""
        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to tell
            self._loop.call_soon_threadsafe(callback, *args)

    def _settle(self, acks: list[Ack], parts: int) -> None:
        for ack in acks:
            try:
                ack()
            except Exception:  # an ack callback must never stop the writer
                log.exception("ack callback failed")
        self._unsettled -= parts
        assert self._settled is not None
        self._settled.set()

    def _room_made(self) -> None:
        assert self._room is not None
        self._room.set()

    def _worker_finished(self, failure: BaseException | None) -> None:
        self._failure = failure
        assert self._finished is not None and self._room is not None and self._settled is not None
        self._room.set()
        self._settled.set()
        if not self._finished.done():
            self._finished.set_result(None)

    # -- the worker thread: takes batches, writes them --------------------------------------------------------

    def _take_batch(self) -> tuple[Batch, list[Ack], int]:
        """Under ``_work``: merge queued parts up to ``batch_rows`` rows; returns the batch, its acks, its submits."""
        merged = Batch()
        acks: list[Ack] = []
        taken = parts = 0
        while self._pending and (taken < self.settings.batch_rows or not merged.rows):
            _, part, part_acks, part_submits = self._pending.popleft()
            merged.samples += part.samples
            merged.events += part.events
            merged.rejections += part.rejections
            merged.vehicles += part.vehicles
            acks += part_acks
            taken += part.rows
            parts += part_submits
        self._pending_rows -= taken
        self._pending_acks -= len(acks)
        return merged, acks, parts

    def _due(self) -> bool:
        """A batch is due when full or old enough; sooner when a producer waits for an ack (group commit).

        Producers that pass ``ack`` (MQTT: the broker holds its next messages until we PUBACK) are served
        within ``ack_flush_interval_s``; rows that arrive meanwhile ride along, so batches grow with the load.
        """
        if not self._pending:
            return False
        if self._stopping or self._pending_rows >= self.settings.batch_rows:
            return True
        return time.monotonic() - self._pending[0][0] >= self._max_age()

    def _max_age(self) -> float:
        return self.settings.ack_flush_interval_s if self._pending_acks else self.settings.flush_interval_s

    def _retry_due(self) -> bool:
        return bool(self._spool and self._spool.pending) and time.monotonic() >= self._next_attempt

    def _wait_for_work(self) -> None:
        """Under ``_work``: sleep until a batch is due, a spool retry is due, or we are stopping."""
        while not (self._due() or self._stopping or self._retry_due()):
            now = time.monotonic()
            timeout = self.settings.flush_interval_s
            if self._pending:
                timeout = self._pending[0][0] + self._max_age() - now
            if self._spool and self._spool.pending:
                timeout = min(timeout, self._next_attempt - now)
            self._work.wait(max(0.001, timeout))

    def _worker(self) -> None:
        failure: BaseException | None = None
        try:
            self._work_until_stopped()
        except BaseException as exc:  # surfaced to producers by _check_alive
            failure = exc
            log.exception("the telemetry writer stopped")
        finally:
            with self._work:
                self._closed = True
            with contextlib.suppress(Exception):
                self._store.close()
            if self._spool is not None:
                self._spool.close()
            self._post(self._worker_finished, failure)

    def _work_until_stopped(self) -> None:
        while True:
            with self._work:
                self._wait_for_work()
                if self._stopping and not self._pending:
                    self._closed = True  # under the lock submit() appends with: nothing can slip in after
                    break
                batch, acks, parts = self._take_batch() if self._due() else (Batch(), [], 0)
            if parts:
                self._post(self._room_made)
            try:
                self._persist(batch)
            except SpoolFullError:
                # Nowhere to put it: keep it at the head of the queue and wait for the database.
                with self._work:
                    self._pending.appendleft((time.monotonic(), batch, acks, parts))
                    self._pending_rows += batch.rows
                    self._pending_acks += len(acks)
                    self._work.wait(min(1.0, self._backoff_s))
                continue
            if parts:
                self._post(self._settle, acks, parts)
        if self._spool and self._spool.pending and self.stats.db_up:
            self._drain_spool()

    def _persist(self, batch: Batch) -> None:
        """Runs in the worker thread: drain the spool if possible, then write or spool ``batch``."""
        assert self._spool is not None
        self._drain_spool()
        if not batch.rows:
            return
        if self._spool.pending or not self.stats.db_up:
            self._to_spool(batch)
            return
        try:
            self._write(batch)
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._db_down(exc)
            self._to_spool(batch)

    def _to_spool(self, batch: Batch) -> None:
        assert self._spool is not None
        self._spool.append(batch.encode())
        self.stats.spooled += len(batch.samples)
        self.stats.spool_pending_batches = self._spool.pending

    def _db_down(self, exc: BaseException) -> None:
        self.stats.db_errors += 1
        if self.stats.db_up:
            log.warning("database unavailable (%s); spooling to disk", exc)
        self.stats.db_up = False
        self._store.close()
        self._next_attempt = time.monotonic() + self._backoff_s * random.uniform(0.5, 1.5)
        self._backoff_s = min(self.settings.backoff_max_s, self._backoff_s * 2)

    def _drain_spool(self) -> None:
        assert self._spool is not None
        if not self._spool.pending:
            if not self.stats.db_up and time.monotonic() >= self._next_attempt:
                self._try_connect()
            return
        if not self.stats.db_up and (time.monotonic() < self._next_attempt or not self._try_connect()):
            return
        while (record := self._spool.peek()) is not None:
            batch = Batch.decode(record.payload)
            try:
                written = self._write(batch)
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._db_down(exc)
                return
            self._spool.ack(record)
            if written:
                self.stats.replayed += len(batch.samples)
            self.stats.spool_pending_batches = self._spool.pending
        log.info("spool drained; writing directly again")

    def _try_connect(self) -> bool:
        try:
            self._store.connect()
        except Exception as exc:
            if not is_transient(exc):
                raise
            self._db_down(exc)
            return False
        log.info("database reachable again")
        self.stats.db_up = True
        self._backoff_s = self.settings.backoff_initial_s
        return True

    def _write(self, batch: Batch, *, isolate_bad_rows: bool = True) -> bool:
        """Write one batch; False when it had been committed before (a replayed duplicate)."""
        started = time.perf_counter()
        try:
            self._store.connect()
            try:
                written = self._store.write(batch)
            except (psycopg.errors.DeadlockDetected, psycopg.errors.SerializationFailure) as exc:
                # Another writer's transaction in the way: nothing is wrong with the database, so once more at
                # once rather than spooling and backing off as for a lost connection.
                log.info("batch retried after %s", type(exc).__name__)
                written = self._store.write(batch)
        except Exception as exc:
            if is_transient(exc) or not isolate_bad_rows:
                raise
            log.warning("batch of %d rows failed permanently (%s); isolating the bad rows", batch.rows, exc)
            self._bisect(batch, exc)
            return True
        self.stats.last_commit_ms = (time.perf_counter() - started) * 1000
        if written:
            self.stats.batches += 1
            self.stats.written += len(batch.samples)
            self.stats.events += len(batch.events)
            for r in batch.rejections:
                self.stats.rejected[r.reason] = self.stats.rejected.get(r.reason, 0) + 1
        return written

    def _bisect(self, batch: Batch, exc: BaseException) -> None:
        """Split a batch that fails on bad data until the failing rows are found; store them as rejected."""
        parts = _split(batch)
        if parts is None:
            sqlstate = getattr(exc, "sqlstate", None) or type(exc).__name__
            rejected = _as_rejection(batch, f"storage_error:{sqlstate}", str(exc))
            try:
                self._write(Batch(rejections=[rejected]), isolate_bad_rows=False)
            except Exception as again:  # not even storable as a rejection: say so, never recurse
                if is_transient(again):
                    raise
                log.error("a row could not be stored, not even as a rejection (%s): %r", again, rejected.raw[:300])
                self.stats.rejected["unstorable"] = self.stats.rejected.get("unstorable", 0) + 1
            return
        for part in parts:
            self._write(part)


def _split(batch: Batch) -> list[Batch] | None:
    """Halve a batch, keeping its parts' ids deterministic (derived from the parent's) for idempotent replays."""
    items: list[tuple[str, Any]] = (
        [("s", x) for x in batch.samples] + [("e", x) for x in batch.events]
        + [("r", x) for x in batch.rejections] + [("v", x) for x in batch.vehicles]
    )
    if len(items) <= 1:
        return None
    mid = len(items) // 2
    out = []
    for i, chunk in enumerate((items[:mid], items[mid:])):
        part = Batch(id=uuid.uuid5(batch.id, str(i)))
        for tag, x in chunk:
            {"s": part.samples, "e": part.events, "r": part.rejections, "v": part.vehicles}[tag].append(x)
        out.append(part)
    return out


def _jsonable(obj: Any) -> Any:
    """orjson's fallback: a Sample (a msgspec Struct) as its fields, anything else as text (bytes, say)."""
    return msgspec.structs.asdict(obj) if isinstance(obj, msgspec.Struct) else str(obj)


def _as_rejection(batch: Batch, reason: str, detail: str) -> Rejection:
    item: Any = (batch.samples or batch.events or batch.rejections or batch.vehicles)[0]
    try:
        raw = orjson.dumps(item, default=_jsonable)
    except TypeError:  # what made the row fail may also defeat orjson (an integer beyond 64 bits): keep its repr
        raw = repr(item).encode()
    vehicle = getattr(item, "vehicle", None)
    # PostgreSQL text cannot hold NUL: a row may have failed for just that, and its rejection must not fail too.
    return Rejection(time=utcnow(), source="writer", reason=reason, detail=detail[:2000].replace("\x00", "\\x00"),
                     vehicle=vehicle.replace("\x00", "\\x00") if isinstance(vehicle, str) else None, raw=raw)
