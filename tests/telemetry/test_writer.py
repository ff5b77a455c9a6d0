from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import orjson
import psycopg
import pytest
from helpers import make_sample, query, writer_settings

from gateway.embedded import EmbeddedPostgres
from telemetry import storage
from telemetry.model import Event, Rejection, VehicleInfo, VehicleKind
from telemetry.validation import Validator
from telemetry.writer import Batch, TelemetryWriter

pytestmark = pytest.mark.postgres


async def test_round_trip_of_every_field(db: str, tmp_path: Path) -> None:
    t = datetime(2026, 11, 28, 8, 30, 1, 123456, tzinfo=UTC)
    s = make_sample(
        "drone-7", t, kind=VehicleKind.DRONE, vehicle_time=t - timedelta(milliseconds=40), lat_deg=31.2304561,
        lon_deg=121.4737123, alt_msl_m=64.5, alt_rel_m=60.25, heading_deg=271.5, ground_speed_mps=9.75,
        climb_mps=-0.5, roll_deg=2.5, pitch_deg=-4.0, yaw_deg=-88.5, battery_pct=76.5, battery_v=22.75,
        mode="AUTO", armed=True, gps_fix=6, satellites=17, link_quality_pct=93.0,
        extra={"hdop": 0.7, "landed_state": "in_air"}, source="mavlink:udpin:0.0.0.0:14550",
    )
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    acked: list[int] = []
    await writer.submit([s], vehicles=[VehicleInfo("drone-7", VehicleKind.DRONE, "mavlink", mavlink_sysid=7)],
                        ack=lambda: acked.append(1))
    await writer.stop()
    assert acked == [1]
    rows = query(db, "SELECT t.time, t.received_at, lat, lon, alt_msl_m, alt_rel_m, heading_deg, ground_speed_mps,"
                     " climb_mps, roll_deg, pitch_deg, yaw_deg, battery_pct, battery_v, mode, armed, gps_fix,"
                     " satellites, link_quality_pct, extra, v.id, v.kind, v.protocol, v.mavlink_sysid"
                     " FROM telemetry t JOIN vehicles v ON v.key = t.vehicle_key")
    assert rows == [(
        t - timedelta(milliseconds=40), t, 31.2304561, 121.4737123, 64.5, 60.25, 271.5, 9.75, -0.5, 2.5, -4.0,
        -88.5, 76.5, 22.75, "AUTO", True, 6, 17, 93.0, {"hdop": 0.7, "landed_state": "in_air"}, "drone-7",
        "drone", "mavlink", 7,
    )]
    latest = query(db, "SELECT lat, battery_pct, mode FROM vehicle_latest")
    assert latest == [(31.2304561, 76.5, "AUTO")]


async def test_a_fleet_appearing_at_once_is_registered_in_one_batch(db: str, tmp_path: Path) -> None:
    """600 new vehicles in one batch: announced ones (one announced twice, the later name wins), and vehicles
    only seen in samples; a vehicle already registered keeps its row and key."""
    writer = TelemetryWriter(db, writer_settings(tmp_path, batch_rows=5000))
    await writer.start()
    await writer.submit([make_sample("car-000")], vehicles=[VehicleInfo("car-000", VehicleKind.PATROL_CAR, "mqtt")])
    await writer.flush()
    [(key_before,)] = query(db, "SELECT key FROM vehicles WHERE id = 'car-000'")
    t = datetime(2026, 11, 28, 9, tzinfo=UTC)
    samples = [make_sample(f"car-{i:03d}", t + timedelta(seconds=1)) for i in range(600)]
    announced = [VehicleInfo(f"car-{i:03d}", VehicleKind.PATROL_CAR, "mqtt", mqtt_client_id=f"car-{i:03d}")
                 for i in range(0, 300)]
    announced.append(VehicleInfo("car-007", VehicleKind.PATROL_CAR, "mqtt", name="Unit 7"))
    await writer.submit(samples, vehicles=announced)
    await writer.stop()
    assert query(db, "SELECT count(*), count(mqtt_client_id), count(DISTINCT key) FROM vehicles") == [(600, 300, 600)]
    assert query(db, "SELECT name, mqtt_client_id FROM vehicles WHERE id = 'car-007'") == [("Unit 7", "car-007")]
    assert query(db, "SELECT key FROM vehicles WHERE id = 'car-000'") == [(key_before,)]
    assert query(db, "SELECT count(*), count(DISTINCT vehicle_key) FROM telemetry") == [(601, 600)]


async def test_an_announced_kind_replaces_a_default_one_and_a_default_never_replaces_a_known_one(
        db: str, tmp_path: Path) -> None:
    """MQTT vehicles heard on their status topic first are announced with the contract's default kind
    (``kind_known=False``): that registers a new vehicle, never changes a registered one; a known kind does."""
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    drone, car = VehicleKind.DRONE, VehicleKind.PATROL_CAR
    await writer.submit(vehicles=[
        VehicleInfo("dock-1", drone, "mqtt"),  # known: a drone
        VehicleInfo("new-1", car, "mqtt", mqtt_client_id="new-1", kind_known=False),  # first heard on status
    ])
    await writer.flush()
    await writer.submit(vehicles=[
        VehicleInfo("dock-1", car, "mqtt", mqtt_client_id="dock-1", kind_known=False),  # after a restart
        VehicleInfo("new-1", drone, "mqtt", kind_known=True),  # its first telemetry says drone
        # in one batch: the default, then the known kind, then the default again
        VehicleInfo("both-1", car, "mqtt", kind_known=False), VehicleInfo("both-1", drone, "mqtt"),
        VehicleInfo("both-1", car, "mqtt", name="Dock 3", kind_known=False),
    ])
    await writer.stop()
    assert query(db, "SELECT id, kind, protocol, name, mqtt_client_id FROM vehicles ORDER BY id") == [
        ("both-1", "drone", "mqtt", "Dock 3", None), ("dock-1", "drone", "mqtt", None, "dock-1"),
        ("new-1", "drone", "mqtt", None, "new-1")]


async def test_vehicle_latest_ignores_out_of_order_samples(db: str, tmp_path: Path) -> None:
    t0 = datetime.now(UTC) - timedelta(minutes=5)
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    await writer.submit([make_sample("car-01", t0 + timedelta(seconds=10), battery_pct=50.0)])
    await writer.flush()
    # Older samples arrive later (a burst after reconnect): stored, but vehicle_latest stays at the newest.
    await writer.submit([make_sample("car-01", t0 + timedelta(seconds=s), battery_pct=60.0 + s) for s in (1, 5, 9)])
    await writer.flush()
    # Within one batch too: newest first; and a vehicle's runs interleaved with another's, its newest in the first.
    await writer.submit([make_sample("car-02", t0 + timedelta(seconds=s), battery_pct=float(s)) for s in (30, 20)])
    await writer.submit([make_sample(vehicle, t0 + timedelta(seconds=s), battery_pct=float(s))
                         for vehicle, s in (("car-03", 40), ("car-03", 41), ("car-04", 7), ("car-03", 39))])
    await writer.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(10,)]
    latest = dict(query(db, "SELECT v.id, l.battery_pct FROM vehicle_latest l "
                            "JOIN vehicles v ON v.key = l.vehicle_key"))
    assert latest == {"car-01": 50.0, "car-02": 30.0, "car-03": 41.0, "car-04": 7.0}


async def test_events_rejections_and_old_days_get_partitions(db: str, tmp_path: Path) -> None:
    old = datetime(2015, 7, 5, 0, 30, tzinfo=UTC)  # e.g. a replayed 2015 flight log
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    await writer.submit(
        [make_sample("drone-1", old)],
        events=[Event(old, "drone-1", "online", {"link": "udp"}, kind=VehicleKind.DRONE)],
        rejections=[Rejection(old, "mavlink:test", "bad_crc", "crc 0x1234 != 0x4321", raw=b"\xfd\x00\x01")],
    )
    await writer.stop()
    assert query(db, "SELECT count(*) FROM telemetry WHERE time < '2016-01-01'") == [(1,)]
    assert query(db, "SELECT type, detail FROM events") == [("online", {"link": "udp"})]
    assert query(db, "SELECT reason, raw FROM rejected") == [("bad_crc", b"\xfd\x00\x01")]
    info = storage.storage_info(db)
    if info["backend"] == "postgresql":
        assert storage.partition_name(old.date()) in info["partitions"]
    else:  # a TimescaleDB hypertable makes the chunk for the old day itself
        assert info["chunks"] == 1
    assert writer.stats.rejected == {"bad_crc": 1}


@pytest.mark.backends("postgresql")
async def test_a_connection_lost_in_the_batch_s_last_statements_spools_and_replays_the_batch(
        db: str, tmp_path: Path) -> None:
    """The server process ends during the vehicle_latest upsert (a trigger terminates its own backend until told
    not to): transient, so the batch goes to the spool, is acked once, and is replayed once the database
    behaves; nothing lost, nothing doubled, acks in order."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE TABLE kill_switch (armed bool)")
        conn.execute("INSERT INTO kill_switch VALUES (true)")
        conn.execute(
            "CREATE FUNCTION die() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF (SELECT armed FROM kill_switch) THEN PERFORM pg_terminate_backend(pg_backend_pid()); END IF; "
            "RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER die BEFORE INSERT OR UPDATE ON vehicle_latest FOR EACH ROW EXECUTE FUNCTION die()")
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    acked: list[int] = []
    for n in range(3):
        await writer.submit([make_sample("car-13", t0 + timedelta(seconds=n))], ack=partial(acked.append, n))
        await writer.flush()
    assert acked == [0, 1, 2] and writer.stats.spooled == 3 and writer.stats.written == 0
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("UPDATE kill_switch SET armed = false")
    for _ in range(400):  # the worker retries on its own, after its backoff
        if writer.stats.replayed == 3:
            break
        await asyncio.sleep(0.05)
    await writer.submit([make_sample("car-13", t0 + timedelta(seconds=5))], ack=partial(acked.append, 5))
    await writer.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(4,)]
    assert acked == [0, 1, 2, 5] and writer.stats.replayed == 3


async def test_a_deadlock_is_retried_at_once_not_spooled(db: str, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    """Another writer's transaction in the way (SQLSTATE 40P01, raised here once by a trigger; a sequence counts,
    because a rollback does not undo it): the batch is written again at once, without the spool and the backoff
    that a lost connection gets."""
    caplog.set_level(logging.INFO, logger="telemetry.writer")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE deadlock_once")
        conn.execute(
            "CREATE FUNCTION deadlock_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF nextval('deadlock_once') = 1 THEN RAISE EXCEPTION 'as if' USING ERRCODE = 'deadlock_detected'; "
            "END IF; RETURN NEW; END $$"
        )
        conn.execute("CREATE TRIGGER deadlock_once BEFORE INSERT OR UPDATE ON vehicle_latest "
                     "FOR EACH ROW EXECUTE FUNCTION deadlock_once()")
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    acked: list[int] = []
    await writer.submit([make_sample("car-01")], ack=partial(acked.append, 1))
    await writer.stop()
    assert acked == [1] and writer.stats.written == 1
    assert writer.stats.spooled == 0 and writer.stats.db_errors == 0
    assert "batch retried after DeadlockDetected" in caplog.text
    assert query(db, "SELECT count(*) FROM telemetry") == [(1,)]


async def test_last_seen_counts_as_updated_only_once_committed(db: str, tmp_path: Path) -> None:
    """The update of vehicles.last_seen (made at most every 10 s per vehicle) rode in a batch whose COMMIT failed
    (a deferred trigger refuses it once): the batch is bisected and stored, and its parts update last_seen again
    instead of taking it as done."""
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute("CREATE SEQUENCE refuse_once")
        conn.execute(
            "CREATE FUNCTION refuse_once() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF nextval('refuse_once') = 1 THEN RAISE EXCEPTION 'refused once'; END IF; RETURN NEW; END $$"
        )
        conn.execute("CREATE CONSTRAINT TRIGGER refuse_once AFTER INSERT OR UPDATE ON vehicle_latest "
                     "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION refuse_once()")
        conn.execute("INSERT INTO vehicles (id, kind) VALUES ('car-01', 'patrol_car')")  # its key stays the same
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    # Received "later" than the registration (last_seen starts at now() and only moves forward), so that the
    # update shows.
    t0 = datetime.now(UTC) + timedelta(minutes=1)
    await writer.submit([make_sample("car-01", t0), make_sample("car-01", t0 + timedelta(seconds=1))])
    await writer.stop()
    assert writer.stats.written == 2
    [(last_seen,)] = query(db, "SELECT last_seen FROM vehicles WHERE id = 'car-01'")
    assert last_seen >= t0  # moved to a stored sample's time, not left at the registration


async def test_bad_row_is_isolated_and_the_rest_is_stored(db: str, tmp_path: Path) -> None:
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    samples = [make_sample("car-01", t0 + timedelta(seconds=i)) for i in range(9)]
    samples[4].mode = "bad\x00mode"  # NUL in text: PostgreSQL refuses the row (SQLSTATE 22021)
    await writer.submit(samples)
    await writer.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(8,)]
    [(reason, vehicle)] = query(db, "SELECT reason, vehicle FROM rejected")
    assert reason.startswith("storage_error:") and vehicle == "car-01"


@pytest.mark.parametrize("when", ["upsert", "commit"])
async def test_a_failure_in_the_batch_s_last_statements_rolls_the_whole_batch_back(db: str, tmp_path: Path,
                                                                                    when: str) -> None:
    """The vehicle_latest upsert and COMMIT go to the server together, after the COPY: a failure there (a
    trigger refusing one vehicle, at the upsert or deferred to COMMIT) undoes the batch's telemetry too, the
    connection is rolled back, and the isolated batches go on over it: the other vehicle's samples are stored,
    and the writer keeps serving."""
    trigger = ("CREATE TRIGGER refuse_car_13 BEFORE INSERT OR UPDATE ON vehicle_latest" if when == "upsert" else
               "CREATE CONSTRAINT TRIGGER refuse_car_13 AFTER INSERT OR UPDATE ON vehicle_latest "
               "DEFERRABLE INITIALLY DEFERRED")
    with psycopg.connect(db, autocommit=True) as conn:
        conn.execute(
            "CREATE FUNCTION refuse_car_13() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            "IF (SELECT id FROM vehicles WHERE key = NEW.vehicle_key) = 'car-13' THEN "
            "RAISE EXCEPTION 'car-13 refused'; END IF; RETURN NEW; END $$"
        )
        conn.execute(f"{trigger} FOR EACH ROW EXECUTE FUNCTION refuse_car_13()")
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    # Eight times over: psycopg prepares a statement on its fifth use, and a statement prepared in a pipeline
    # that failed must not be taken as prepared afterwards.
    for n in range(8):
        await writer.submit([make_sample(car, t0 + timedelta(seconds=10 * n + i))
                             for i in range(3) for car in ("car-12", "car-13")])
        await writer.flush()
        await writer.submit([make_sample("car-12", t0 + timedelta(seconds=10 * n + 9))])
        await writer.flush()
    await writer.stop()
    stored = query(db, "SELECT v.id, count(*) FROM telemetry t JOIN vehicles v ON v.key = t.vehicle_key GROUP BY 1")
    assert stored == [("car-12", 8 * 4)]
    assert query(db, "SELECT v.id FROM vehicle_latest l JOIN vehicles v ON v.key = l.vehicle_key") == [("car-12",)]
    rejected = query(db, "SELECT reason, vehicle FROM rejected")
    assert rejected == [("storage_error:P0001", "car-13")] * 8 * 3


async def test_a_row_no_encoder_can_write_is_kept_as_its_repr_and_the_writer_goes_on(db: str,
                                                                                     tmp_path: Path) -> None:
    """An extra value orjson cannot encode (an integer beyond 64 bits) fails the COPY and the rejection's own
    encoding: the row is kept by its repr, the rest is stored, and the writer keeps serving."""
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    samples = [make_sample("car-01", t0 + timedelta(seconds=i)) for i in range(5)]
    samples[2].extra = {"wheel_ticks": 10**30}
    await writer.submit(samples)
    await writer.flush()
    await writer.submit([make_sample("car-01", t0 + timedelta(seconds=9))])
    await writer.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(5,)]
    [(reason, raw)] = query(db, "SELECT reason, raw FROM rejected")
    assert reason == "storage_error:TypeError" and b"1000000000000000000000000000000" in bytes(raw)


async def test_backpressure_blocks_producers_when_the_queue_is_full(db: str, tmp_path: Path) -> None:
    """While the database holds the worker (another session locks the table), the queue fills to
    ``queue_max_rows`` and the next submit waits; it goes on once the worker takes rows off."""
    import psycopg

    storage.upgrade(db)
    writer = TelemetryWriter(db, writer_settings(tmp_path, queue_max_rows=100, batch_rows=50, flush_interval_s=5.0))
    await writer.start()
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    await writer.submit([make_sample("car-01", t0 - timedelta(seconds=1))])
    await writer.flush()  # car-01 registered, partitions made: the next COPY waits only for the lock
    with psycopg.connect(db) as locker:
        locker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")
        for i in range(150):  # the worker takes the first 50 and blocks on the lock; 100 fill the queue
            await writer.submit([make_sample("car-01", t0 + timedelta(milliseconds=i))])
        blocked = asyncio.create_task(writer.submit([make_sample("car-01", t0 + timedelta(seconds=1))]))
        await asyncio.sleep(0.2)
        assert not blocked.done()
        assert writer.backlog_rows == 100
        locker.rollback()
    await asyncio.wait_for(blocked, 5)
    await writer.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(152,)]


async def test_database_down_mid_stream_every_sample_exactly_once(tmp_path: Path) -> None:
    """The database stops mid-stream and comes back: batches spool to disk and replay in order, no dupes."""
    with EmbeddedPostgres(timescaledb=False) as pg:
        storage.upgrade(pg.dsn)
        writer = TelemetryWriter(pg.dsn, writer_settings(tmp_path, batch_rows=100))
        await writer.start()
        t0 = datetime.now(UTC) - timedelta(hours=1)
        acked = 0

        def ack() -> None:
            nonlocal acked
            acked += 1

        async def produce(start: int, count: int) -> None:
            for i in range(start, start + count, 10):
                await writer.submit([make_sample(f"car-{j % 5:02d}", t0 + timedelta(milliseconds=j))
                                     for j in range(i, i + 10)], ack=ack)
                await asyncio.sleep(0.001)

        await produce(0, 1000)
        await writer.flush()
        await asyncio.to_thread(pg.stop_server)
        await produce(1000, 1500)  # written while the database is down: goes to the spool
        await writer.flush()
        assert writer.stats.spooled > 0
        assert acked == 250  # spooled batches are acknowledged once fsynced
        spool_files = list((tmp_path / "spool").glob("spool-*.seg"))
        assert spool_files
        await asyncio.to_thread(pg.start_server)
        await produce(2500, 500)
        for _ in range(200):
            await writer.flush()
            if writer.stats.spool_pending_batches == 0:
                break
            await asyncio.sleep(0.05)
        await writer.stop()
        rows = query(pg.dsn, "SELECT count(*), count(DISTINCT (vehicle_key, time)) FROM telemetry")
        assert rows == [(3000, 3000)]
        assert writer.stats.replayed == writer.stats.spooled
        assert not list((tmp_path / "spool").glob("spool-*.seg"))


async def test_spool_left_by_a_crash_is_replayed_at_start_without_duplicates(db: str, tmp_path: Path) -> None:
    """A batch committed just before a crash but still in the spool is skipped (its id is known)."""
    from telemetry.spool import Spool

    t0 = datetime.now(UTC) - timedelta(minutes=3)
    committed = Batch(samples=[make_sample("car-01", t0 + timedelta(seconds=i)) for i in range(3)])
    pending = Batch(samples=[make_sample("car-01", t0 + timedelta(seconds=10 + i)) for i in range(4)])
    first = TelemetryWriter(db, writer_settings(tmp_path))
    await first.start()
    await asyncio.to_thread(first._write, committed)  # the worker is idle: nothing is queued
    await first.stop()
    spool = Spool(tmp_path / "spool")
    spool.append(committed.encode())
    spool.append(pending.encode())
    spool.close()
    with open(next((tmp_path / "spool").glob("spool-*.seg")), "ab") as fh:
        fh.write(b"PGSP\x00\x00\x10\x00")  # a torn record: the crash happened mid-append
    second = TelemetryWriter(db, writer_settings(tmp_path))
    await second.start()
    assert second.stats.spool_pending_batches == 2
    await second.submit([make_sample("car-01", t0 + timedelta(seconds=30))])
    await second.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(8,)]
    assert second.stats.replayed == 4


async def test_a_spool_folder_has_one_owner(db: str, tmp_path: Path) -> None:
    """Two writers (two gateway instances started with one config file) on one spool folder would replay and
    delete each other's batches: the second fails at start and says why; once the first stops, the folder is
    free. Another process is refused the same way (flock)."""
    from telemetry.spool import SpoolInUseError

    first = TelemetryWriter(db, writer_settings(tmp_path))
    await first.start()
    second = TelemetryWriter(db, writer_settings(tmp_path))
    with pytest.raises(SpoolInUseError, match=r"in use \(pid \d+\).*own \[writer\] spool_dir"):
        await second.start()
    probe = "from telemetry.spool import Spool; import sys; Spool(sys.argv[1])"
    other = subprocess.run([sys.executable, "-c", probe, str(tmp_path / "spool")], capture_output=True, text=True)
    assert other.returncode != 0 and "SpoolInUseError" in other.stderr
    await first.submit([make_sample("car-01")])
    await first.stop()
    third = TelemetryWriter(db, writer_settings(tmp_path))
    await third.start()
    await third.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(1,)]


def test_batch_encoding_round_trip() -> None:
    t = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
    batch = Batch(
        samples=[make_sample("drone-1", t, kind=VehicleKind.DRONE, extra={"a": 1}, armed=False)],
        events=[Event(t, "drone-1", "offline", {"after_s": 5}, kind=VehicleKind.DRONE, lat_deg=1.0, lon_deg=2.0)],
        rejections=[Rejection(t, "mqtt", "bad_json", "x", vehicle="car-1", raw=b"\x00\xff", topic="a/b")],
        vehicles=[VehicleInfo("drone-1", VehicleKind.DRONE, "mavlink", "Alpha", 1, None),
                  VehicleInfo("car-1", VehicleKind.PATROL_CAR, "mqtt", mqtt_client_id="car-1", kind_known=False)],
    )
    again = Batch.decode(batch.encode())
    assert again == batch
    # A record spooled before announcements said whether their kind was known: it was.
    old = orjson.loads(batch.encode())
    old["vehicles"] = [v[:6] for v in old["vehicles"]]
    assert [v.kind_known for v in Batch.decode(orjson.dumps(old)).vehicles] == [True, True]


def test_a_spool_record_of_the_first_format_still_decodes() -> None:
    """Records spooled before samples had odometer/fuel/RSSI/seq fields (they were in ``extra``, and records
    did not name their fields) replay after an upgrade, with those values in their fields."""
    t = datetime(2026, 11, 28, 1, 2, 3, 456789, tzinfo=UTC)
    v1_sample = [t.isoformat(), "car-1", "patrol_car", 31.2, 121.4, None, 4.0, None, 90.0, 8.3, None, None, None,
                 None, 76.5, 48.1, "patrol", None, 3, 14, None,
                 {"seq": 7, "odometer_m": 1234.5, "rssi_dbm": -71, "siren": True}, "mqtt:x"]
    record = orjson.dumps({"id": "8a0b4f3e-6a1f-4c55-9a38-0e7b8d2f0c11", "samples": [v1_sample], "events": [],
                           "rejections": [], "vehicles": []})
    [s] = Batch.decode(record).samples
    assert (s.vehicle, s.time, s.lat_deg, s.ground_speed_mps, s.mode, s.source) == (
        "car-1", t, 31.2, 8.3, "patrol", "mqtt:x")
    assert (s.seq, s.odometer_m, s.fuel_pct, s.rssi_dbm, s.extra) == (7, 1234.5, None, -71, {"siren": True})


async def test_a_batched_message_keeps_its_raw_bytes_once_among_its_rejections(db: str, tmp_path: Path) -> None:
    """50 samples of one message share its payload: rejected together (a skewed clock), the payload is stored
    once, every sample still has its own rejection, reason and detail."""
    payload = b'[{"v": 1, "ts": 4102444800000}]' * 400  # 12.8 KB, as a batched message of 50 samples
    future = datetime.now(UTC) + timedelta(days=365)
    samples = [make_sample("car-01", vehicle_time=future + timedelta(seconds=i), raw=payload) for i in range(50)]
    samples.append(make_sample("car-02", vehicle_time=future, raw=b"another message"))
    good, bad = Validator().split(samples, source="test")
    assert good == [] and len(bad) == 51 and {r.reason for r in bad} == {"future_timestamp"}
    writer = TelemetryWriter(db, writer_settings(tmp_path))
    await writer.start()
    await writer.submit(rejections=bad)
    await writer.stop()
    rows = query(db, "SELECT reason, detail, raw FROM rejected")
    assert len(rows) == 51 and {reason for reason, _, _ in rows} == {"future_timestamp"}
    assert sorted(raw for _, _, raw in rows if raw is not None) == sorted([payload, b"another message"])
    assert len({detail for _, detail, _ in rows}) == 51  # each names its own sample


@pytest.mark.backends("postgresql")
async def test_two_writers_on_the_same_vehicles_wait_for_each_other_but_never_deadlock(
        db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Two gateway instances on one shared subscription get messages of the same vehicles in different orders:
    their vehicle_latest upserts and last_seen updates lock the rows in key order, so neither needs the retry
    (nor the spool) that a deadlock would cost."""
    caplog.set_level(logging.INFO, logger="telemetry.writer")
    cars = [f"car-{i:03d}" for i in range(300)]
    a = TelemetryWriter(db, writer_settings(tmp_path / "a", batch_rows=100_000, flush_interval_s=0.01))
    b = TelemetryWriter(db, writer_settings(tmp_path / "b", batch_rows=100_000, flush_interval_s=0.01))
    await a.start()
    await b.start()
    await a.submit([make_sample(c) for c in cars])  # the fleet registered first: only the steady state counts
    await a.flush()
    t0 = datetime.now(UTC) - timedelta(hours=1)
    for n in range(40):
        t = t0 + timedelta(seconds=n)
        await a.submit([make_sample(c, t) for c in cars])
        await b.submit([make_sample(c, t + timedelta(milliseconds=500)) for c in reversed(cars)])
        await asyncio.gather(a.flush(), b.flush())
    await a.stop()
    await b.stop()
    assert query(db, "SELECT count(*) FROM telemetry") == [(300 + 40 * 600,)]
    assert a.stats.db_errors == b.stats.db_errors == 0
    assert not [r.getMessage() for r in caplog.records if "retried" in r.getMessage()]


async def _lock_waiters_plus_commits(db: str, writers: tuple[TelemetryWriter, ...]) -> int:
    """Sessions of ``db`` waiting for a lock, plus writers that committed a batch since the test began."""
    [(waiting,)] = query(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                             "AND wait_event_type = 'Lock'")
    return int(waiting) + sum(1 for w in writers if w.stats.batches > 0)


@pytest.mark.parametrize("path", ["announce", "unknown_sample", "event"])
async def test_registering_vehicles_beside_another_writer_s_last_seen_update_never_deadlocks(
        db: str, tmp_path: Path, caplog: pytest.LogCaptureFixture, path: str) -> None:
    """Registrations lock `vehicles` rows in id order, the last_seen update would in key order (the order the
    vehicles were first seen), and the two differ. A gateway restarting (it announces its whole fleet) beside one
    in steady state (its last_seen update due) deadlocked, with a third session holding the middle row to line
    them up. Now the update skips rows others hold, and a registration of a known vehicle locks nothing."""
    caplog.set_level(logging.INFO, logger="telemetry.writer")
    cars = [f"car-{i}" for i in (5, 4, 3, 2, 1)]  # keys in this order: key order is the reverse of id order
    with psycopg.connect(db, autocommit=True) as conn:
        for car in cars:
            conn.execute("INSERT INTO vehicles (id, kind) VALUES (%s, 'patrol_car')", (car,))
    a = TelemetryWriter(db, writer_settings(tmp_path / "a", flush_interval_s=0.01))
    b = TelemetryWriter(db, writer_settings(tmp_path / "b", flush_interval_s=0.01))
    await a.start()
    await b.start()
    if path != "announce":
        a._store.keys.clear()  # as if registered by the other gateway after this one connected
    # Received "later" than the registrations, so that last_seen (now() at registration, only moved forward)
    # shows each update.
    t = datetime.now(UTC) + timedelta(minutes=1)
    with psycopg.connect(db) as blocker:
        blocker.execute("SELECT 1 FROM vehicles WHERE id = 'car-3' FOR NO KEY UPDATE")
        await b.submit([make_sample(car, t) for car in cars])  # its last_seen update is due for all five
        if path == "announce":
            await a.submit(vehicles=[VehicleInfo(car, VehicleKind.PATROL_CAR, "mqtt") for car in cars])
        elif path == "unknown_sample":
            await a.submit([make_sample(car, t + timedelta(seconds=1)) for car in cars])
        else:
            await a.submit(events=[Event(t, car, "online", kind=VehicleKind.PATROL_CAR) for car in sorted(cars)])
        for _ in range(200):  # both stuck behind the held row (before), or through, or only a behind it (now)
            if await _lock_waiters_plus_commits(db, (a, b)) >= 2:
                break
            await asyncio.sleep(0.05)
        blocker.commit()
    await asyncio.gather(a.flush(), b.flush())
    await b.submit([make_sample(car, t + timedelta(seconds=2)) for car in cars])  # car-3 was skipped: due again
    await a.stop()
    await b.stop()
    assert not [r.getMessage() for r in caplog.records if "retried" in r.getMessage()]
    assert a.stats.db_errors == b.stats.db_errors == 0
    last_seen = dict(query(db, "SELECT id, last_seen FROM vehicles"))
    assert all(last_seen[car] >= t for car in cars), last_seen  # car-3 too, skipped while held
