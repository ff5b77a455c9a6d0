"""MQTT telemetry through ingest worker processes (``[mqtt] ingest_workers``): a worker that dies, or is told to
end, is started again and handed what it had not stored; nothing is lost or stored twice; spools of workers a
configuration no longer has are replayed by the gateway."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
import pytest
from helpers import make_sample, query, until
from paho.mqtt.enums import CallbackAPIVersion

from api.app import create_app
from gateway.config import load_settings
from gateway.embedded import EmbeddedMosquitto
from gateway.ingest_pool import IngestPool, adopt_orphan_spools, worker_spool_dir
from gateway.service import Gateway
from telemetry.spool import Spool, SpoolInUseError
from telemetry.validation import ValidationLimits
from telemetry.writer import TelemetryWriter, WriterSettings

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]


def _settings(db: str, broker: EmbeddedMosquitto, tmp_path: Path, prefix: str, workers: int = 2) -> Any:
    return load_settings(
        database={"dsn": db}, mavlink={"endpoints": []}, api={"enabled": False},
        mqtt={"broker": broker.url, "client_id": f"gw-{prefix}", "prefix": prefix, "ingest_workers": workers},
        writer={"flush_interval": "50ms", "spool_dir": str(tmp_path / "spool")},
    )


def _publish_stream(broker: EmbeddedMosquitto, prefix: str, n: int, cars: int, base_ms: int) -> mqtt.Client:
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"pub-{prefix}",
                      protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    for i in range(n):
        doc = {"v": 1, "ts": base_ms + i * 10, "lat": 31.2304 + (i % 7) * 1e-5, "lon": 121.4737, "seq": i}
        pub.publish(f"{prefix}/car-{i % cars:02d}/telemetry", orjson.dumps(doc), qos=1)
    return pub


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["killed", "terminated"])
async def test_a_worker_that_ends_mid_stream_is_replaced_and_nothing_is_lost_or_doubled(
        db: str, mqtt_broker: EmbeddedMosquitto, tmp_path: Path, how: signal.Signals) -> None:
    gw = Gateway(_settings(db, mqtt_broker, tmp_path, f"t/crash{how}"))
    await gw.start()
    try:
        assert gw.ingest is not None
        n, cars = 6000, 20
        pub = _publish_stream(mqtt_broker, f"t/crash{how}", n, cars, int((time.time() - 900) * 1000))
        await until(lambda: gw.samples_counts()[1] >= n // 4, what="a quarter of the stream")
        victim = gw.ingest.worker_pids()[0]
        assert victim is not None
        os.kill(victim, how)
        await until(lambda: gw.ingest is not None and gw.ingest.stats()["restarts"] == 1
                    and None not in gw.ingest.worker_pids(), what="the worker started again")
        assert gw.ingest.worker_pids()[0] != victim
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=create_app(gw)), base_url="http://gw") as api:
            health = (await api.get("/api/v1/health")).json()
            assert health == {"status": "ok", "database": True, "ingest_workers_alive": "2/2"}
            assert (await api.get("/api/v1/status")).json()["ingest_workers"]["restarts"] == 1
        await until(lambda: query(db, "SELECT count(*) FROM telemetry")[0][0] >= n, timeout=60,
                    what="the whole stream stored")
        await gw.flush()
        assert query(db, "SELECT count(*), count(DISTINCT (vehicle_key, time)) FROM telemetry") == [(n, n)]
        # Every car's rows came from one worker: its sequence numbers are whole, none repeated.
        for car, count, seqs in query(db, "SELECT v.id, count(*), count(DISTINCT seq) FROM telemetry t "
                                          "JOIN vehicles v ON v.key = t.vehicle_key GROUP BY v.id"):
            assert count == seqs == n // cars, car
        stats = gw.status()["ingest_workers"]
        # What the ended worker had stored but not yet reported came again: recognised, kept as duplicates.
        duplicates = stats["validation_rejected_by_reason"].get("duplicate", 0)
        assert query(db, "SELECT count(*) FROM rejected WHERE reason = 'duplicate'") == [(duplicates,)]
        assert stats["written"] + duplicates >= n
        assert stats["in_flight_batches"] == 0 and stats["alive"] == 2
        pub.loop_stop()
        pub.disconnect()
    finally:
        await gw.stop()


async def test_vehicles_keep_their_worker_and_the_fleet_is_spread(db: str, mqtt_broker: EmbeddedMosquitto,
                                                                  tmp_path: Path) -> None:
    gw = Gateway(_settings(db, mqtt_broker, tmp_path, "t/route", workers=3))
    await gw.start()
    try:
        assert gw.ingest is not None
        pub = _publish_stream(mqtt_broker, "t/route", 600, 30, int((time.time() - 600) * 1000))
        await until(lambda: gw.samples_counts()[0] >= 600, what="all stored")
        workers = {f"car-{i:02d}": gw.ingest.worker_of(f"car-{i:02d}") for i in range(30)}
        assert set(workers.values()) == {0, 1, 2}
        # The route is a function of the id alone: a restarted gateway sends each car to the same worker.
        other = IngestPool(3, db, WriterSettings(), ValidationLimits())
        assert {car: other.worker_of(car) for car in workers} == workers
        # The live view got each car's newest sample from the workers.
        assert set(gw.live.latest) == set(workers)
        assert gw.live.latest["car-00"].seq == 570
        assert gw.live.latest["car-00"].raw is None  # the raw message stays in the worker
        assert query(db, "SELECT count(DISTINCT kind), min(protocol), count(mqtt_client_id) FROM vehicles") == [
            (1, "mqtt", 30)]
        pub.loop_stop()
        pub.disconnect()
    finally:
        await gw.stop()


def test_spools_of_workers_no_longer_configured_move_to_the_gateway_spool(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with Spool(spool_dir) as own:
        own.append(b"gateway-1")
    for index, records in ((0, [b"w0-1"]), (2, [b"w2-1", b"w2-2"]), (3, [b"w3-1"])):
        with Spool(worker_spool_dir(spool_dir, index)) as spool:
            for record in records:
                spool.append(record)
    assert adopt_orphan_spools(spool_dir, 2) == 3  # workers 2 and 3 are gone; 0 keeps its own
    assert sorted(p.name for p in spool_dir.glob("worker-*")) == ["worker-0"]
    with Spool(spool_dir) as own:
        replayed = []
        while (record := own.peek()) is not None:
            replayed.append(record.payload)
            own.ack(record)
    assert replayed == [b"gateway-1", b"w2-1", b"w2-2", b"w3-1"]  # its own first, then the adopted, in order
    with Spool(worker_spool_dir(spool_dir, 0)) as kept:
        assert kept.pending == 1
    assert adopt_orphan_spools(spool_dir, 0) == 1  # no workers at all: the gateway replays worker 0's too


async def test_a_spool_still_in_use_is_not_adopted(tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    with Spool(worker_spool_dir(spool_dir, 1)) as busy:
        busy.append(b"held")
        with pytest.raises(SpoolInUseError):
            adopt_orphan_spools(spool_dir, 1, wait_s=0.3)
    assert adopt_orphan_spools(spool_dir, 1) == 1
    await asyncio.sleep(0)


async def test_hand_over_frames_read_back_as_sent() -> None:
    from gateway.ingest_worker import encode_batch, read_frame, write_frame

    messages = [("car-01", "p/car-01/telemetry", b'{"v":1}', 1764331200.125),
                ("Ä-2", "präfix/Ä-2/telemetry", b"", 0.0),  # not ASCII (the contract refuses it later), empty
                ("car-03", "p/car-03/telemetry", bytes(range(256)) * 300, 1.5)]
    reader = asyncio.StreamReader()
    reader.feed_data(encode_batch(2**40, messages))

    class _Sink:
        def __init__(self) -> None:
            self.data = b""

        def write(self, data: bytes) -> None:
            self.data += data

    sink = _Sink()
    write_frame(sink, ("done", [1, 2], {"samples": 3}))  # type: ignore[arg-type]
    reader.feed_data(sink.data)
    reader.feed_eof()
    assert await read_frame(reader) == ("batch", 2**40, messages)
    assert await read_frame(reader) == ("done", [1, 2], {"samples": 3})
    with pytest.raises(asyncio.IncompleteReadError):
        await read_frame(reader)


def _doc(ts_ms: int, seq: int) -> bytes:
    return orjson.dumps({"v": 1, "ts": ts_ms, "lat": 31.2304, "lon": 121.4737, "seq": seq})


async def test_hand_overs_made_while_a_worker_restarts_reach_it_once_and_in_order(db: str, tmp_path: Path) -> None:
    pool = IngestPool(1, db, WriterSettings(spool_dir=str(tmp_path / "spool")), ValidationLimits())
    await pool.start()
    try:
        acks: list[str] = []
        base = int((time.time() - 600) * 1000)
        now = datetime.now(UTC)
        old = pool.worker_pids()[0]
        assert old is not None
        os.kill(old, signal.SIGSTOP)  # it will never read hand-over A
        for i in range(5):
            pool.submit("car-01", "p/car-01/telemetry", _doc(base + i * 1000, i), now)
        await pool.flush(lambda: acks.append("A"))
        os.kill(old, signal.SIGKILL)
        await until(lambda: pool.stats()["restarts"] == 1, what="the restart under way")
        assert pool.worker_pids() == [None]  # not taking hand-overs until it is ready
        for i in range(5, 10):  # while the successor starts: kept for it, sent after A
            pool.submit("car-01", "p/car-01/telemetry", _doc(base + i * 1000, i), now)
        await pool.flush(lambda: acks.append("B"))
        assert pool.held_bytes > 0
        await asyncio.wait_for(pool.settle(), 30)
        assert acks == ["A", "B"]
        assert pool.held_bytes == 0
        assert query(db, "SELECT seq FROM telemetry ORDER BY received_at, seq") == [(i,) for i in range(10)]
        assert query(db, "SELECT count(*) FROM rejected") == [(0,)]  # B was not decoded twice
    finally:
        await pool.stop()


async def test_a_stop_during_a_restart_ends_the_new_worker_cleanly(db: str, tmp_path: Path,
                                                                    caplog: pytest.LogCaptureFixture) -> None:
    pool = IngestPool(1, db, WriterSettings(spool_dir=str(tmp_path / "spool")), ValidationLimits())
    await pool.start()
    old = pool.worker_pids()[0]
    assert old is not None
    os.kill(old, signal.SIGKILL)
    await until(lambda: pool.stats()["restarts"] == 1, poll_s=0.001, what="the restart under way")
    started = time.monotonic()
    await pool.stop()  # the gateway stopping while the successor is being started
    assert time.monotonic() - started < 4.5
    assert "killing it" not in caplog.text and "did not report" not in caplog.text
    assert pool.worker_pids() == [None]


@pytest.mark.parametrize("workers", [0, 2], ids=["in-process", "2-workers"])
async def test_a_vehicle_first_heard_just_before_a_stop_is_registered_and_online(
        db: str, mqtt_broker: EmbeddedMosquitto, tmp_path: Path, workers: int) -> None:
    """With workers the registration and the online event of a new vehicle come from the worker's report, one
    hand-over later: its PUBACK waits for them, and a stop flushes them."""
    prefix = f"t/last{workers}"
    gw = Gateway(_settings(db, mqtt_broker, tmp_path, prefix, workers=workers))
    await gw.start()
    pub = _publish_stream(mqtt_broker, prefix, 0, 1, 0)
    try:
        pub.publish(f"{prefix}/car-77/telemetry", _doc(int((time.time() - 5) * 1000), 1), qos=1).wait_for_publish()
        await until(lambda: gw.drivers[0].stats()["messages"] >= 1, what="received")
    finally:
        await gw.stop()
        pub.loop_stop()
        pub.disconnect()
    assert query(db, "SELECT count(*) FROM telemetry") == [(1,)]
    assert query(db, "SELECT mqtt_client_id FROM vehicles WHERE id = 'car-77'") == [("car-77",)]
    assert query(db, "SELECT type, detail->>'reason' FROM events") == [("online", "telemetry")]


async def test_spools_of_workers_are_replayed_when_mqtt_is_off(db: str, tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    # A run with workers spooled (and so acknowledged) a batch while the database was away.
    away = TelemetryWriter("postgresql://127.0.0.1:1/nowhere?connect_timeout=1",
                           WriterSettings(spool_dir=str(worker_spool_dir(spool, 0))))
    await away.start()
    acked: list[int] = []
    await away.submit([make_sample("car-05")], ack=lambda: acked.append(1))
    await away.flush()
    await away.stop()
    assert acked == [1]
    # Now MQTT is off (no broker), the worker count unchanged in the configuration: no worker will replay it.
    gw = Gateway(load_settings(database={"dsn": db}, mavlink={"endpoints": []}, api={"enabled": False},
                               mqtt={"ingest_workers": 2}, writer={"flush_interval": "50ms", "spool_dir": str(spool)}))
    await gw.start()
    try:
        assert gw.ingest is None
        await until(lambda: query(db, "SELECT count(*) FROM telemetry") == [(1,)], what="the spool replayed")
        assert not list(spool.glob("worker-*"))
    finally:
        await gw.stop()
