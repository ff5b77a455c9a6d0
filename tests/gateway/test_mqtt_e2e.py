"""The MQTT driver against a real mosquitto, into a real PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import pytest
from helpers import query, until
from paho.mqtt.enums import CallbackAPIVersion

from drivers.commands import (
    CommandRejected,
    CommandTimeout,
    FollowRoute,
    Goto,
    Hold,
    ReturnHome,
    Takeoff,
    UnsupportedCommand,
)
from drivers.mqtt.client import MqttConnectError
from gateway.config import load_settings
from gateway.embedded import EmbeddedMosquitto
from gateway.service import Gateway
from simulators.patrol_car import CarFleet

pytestmark = [pytest.mark.postgres, pytest.mark.mqtt]

PREFIX = "patrolgate/v1"




def publisher(broker: EmbeddedMosquitto, client_id: str = "test-pub", **auth: str) -> mqtt.Client:
    c = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=mqtt.MQTTv5)
    if auth:
        c.username_pw_set(auth["username"], auth["password"])
    c.connect(broker.host, broker.port)
    c.loop_start()
    return c


def telemetry(ts_ms: int, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"v": 1, "ts": ts_ms, "lat": 31.2304, "lon": 121.4737}
    doc.update(fields)
    return doc


def now_ms(offset_s: float = 0.0) -> int:
    return int((time.time() + offset_s) * 1000)


def settings_for(db: str, broker: EmbeddedMosquitto, tmp_path: Path, **mqtt_cfg: Any) -> Any:
    cfg = {"broker": broker.url, "client_id": "gw-test", "silence_timeout": "2s", "command_timeout": "2s"}
    cfg.update(mqtt_cfg)
    return load_settings(
        database={"dsn": db}, mqtt=cfg, mavlink={"endpoints": []}, api={"enabled": False},
        writer={"flush_interval": "50ms", "spool_dir": str(tmp_path / f"spool-{cfg['client_id']}")},
    )


#: Parametrizes a test over telemetry decoded in the gateway process and in two ingest worker processes.
BOTH_INGEST_MODES = pytest.mark.parametrize("ingest_workers", [0, 2], ids=["in-process", "2-workers"])


@pytest.fixture
def ingest_workers() -> int:
    return 0


@pytest.fixture
async def gateway(db: str, mqtt_broker: EmbeddedMosquitto, tmp_path: Path, ingest_workers: int,
                  request: pytest.FixtureRequest) -> AsyncIterator[Gateway]:
    client_id = "gw-" + request.node.name[-40:].replace("[", "").replace("]", "")
    gw = Gateway(settings_for(db, mqtt_broker, tmp_path, client_id=client_id, prefix=f"t/{client_id}",
                              ingest_workers=ingest_workers))
    await gw.start()
    assert (gw.ingest is not None) == bool(ingest_workers)
    yield gw
    await gw.stop()


def _prefix(gw: Gateway) -> str:
    return gw.settings.mqtt.prefix


@BOTH_INGEST_MODES
async def test_telemetry_end_to_end_with_correct_values(gateway: Gateway, mqtt_broker: EmbeddedMosquitto,
                                                        db: str) -> None:
    pub = publisher(mqtt_broker)
    ts = now_ms(-2)
    doc = telemetry(ts, kind="patrol_car", seq=7, alt_m=4.5, speed_mps=8.25, heading_deg=92.5, battery_pct=76.5,
                    battery_v=48.1, odometer_m=12345.5, mode="patrol", gps_fix=3, satellites=14, rssi_dbm=-71,
                    siren=False)
    pub.publish(f"{_prefix(gateway)}/car-03/telemetry", orjson.dumps(doc), qos=1).wait_for_publish(5)
    await until(lambda: "car-03" in gateway.live.latest, what="sample in live state")
    assert gateway.live.latest["car-03"].odometer_m == 12345.5
    await gateway.flush()
    rows = query(db, "SELECT t.time, lat, lon, alt_msl_m, ground_speed_mps, heading_deg, battery_pct, battery_v, "
                     "mode, gps_fix, satellites, odometer_m, rssi_dbm, seq, extra, v.id, v.kind, v.protocol, "
                     "v.mqtt_client_id FROM telemetry t JOIN vehicles v ON v.key = t.vehicle_key")
    assert rows == [(datetime.fromtimestamp(ts / 1000, UTC), 31.2304, 121.4737, 4.5, 8.25, 92.5, 76.5,
                     pytest.approx(48.1), "patrol", 3, 14, 12345.5, -71.0, 7, {"siren": False},
                     "car-03", "patrol_car", "mqtt", "car-03")]
    [latest] = query(db, "SELECT odometer_m, rssi_dbm, seq, extra FROM vehicle_latest")
    assert latest == (12345.5, -71.0, 7, {"siren": False})
    pub.loop_stop()
    pub.disconnect()


@BOTH_INGEST_MODES
async def test_batched_payloads(gateway: Gateway, mqtt_broker: EmbeddedMosquitto, db: str) -> None:
    pub = publisher(mqtt_broker)
    base = now_ms(-60)
    for msg in range(4):
        batch = [telemetry(base + (msg * 50 + i) * 100, lat=31.2304 + (msg * 50 + i) * 1e-6) for i in range(50)]
        pub.publish(f"{_prefix(gateway)}/car-07/telemetry", orjson.dumps(batch), qos=1).wait_for_publish(5)
    await until(lambda: gateway.samples_counts()[1] >= 200, what="200 samples")
    await gateway.flush()
    assert gateway.samples_counts() == (200, 200)
    assert query(db, "SELECT count(*), count(DISTINCT time) FROM telemetry") == [(200, 200)]
    [(newest,)] = query(db, "SELECT time FROM vehicle_latest")
    assert newest == datetime.fromtimestamp((base + 199 * 100) / 1000, UTC)
    assert gateway.live.latest["car-07"].vehicle_time == newest
    pub.loop_stop()
    pub.disconnect()


@BOTH_INGEST_MODES
async def test_bad_payloads_are_counted_and_kept_with_reasons(db: str, mqtt_broker: EmbeddedMosquitto,
                                                             tmp_path: Path, ingest_workers: int) -> None:
    gw = Gateway(settings_for(db, mqtt_broker, tmp_path, client_id=f"gw-bad-{ingest_workers}", prefix="t/bad",
                              open_registration=False, allowed_vehicles=["car-01"], ingest_workers=ingest_workers))
    await gw.start()
    try:
        pub = publisher(mqtt_broker)
        cases = {
            b"not json at all": "bad_json",
            orjson.dumps(telemetry(now_ms(), lat="north")): "wrong_type:lat",
            orjson.dumps({**telemetry(now_ms()), "v": 99}): "unknown_version",
            orjson.dumps({"v": 1, "lat": 31.2, "lon": 121.4}): "missing_field:ts",
            orjson.dumps(telemetry(now_ms(-1), lat=95.0)): "invalid_coordinates",
            orjson.dumps(telemetry(now_ms(-1), speed_mps=400.0)): "impossible_speed",
            orjson.dumps(telemetry(now_ms(3600))): "future_timestamp",
            # wider than 64 bits: it once passed the fast decoder and stopped the writer, which could not store it
            b'{"v":1,"ts":%d,"lat":31.2,"lon":121.4,"seq":100000000000000000000000000000}' % now_ms(-1):
                "wrong_type:seq",
            # an unsigned 64-bit integer: orjson keeps it an int, the seq column (bigint) could not hold it
            b'{"v":1,"ts":%d,"lat":31.2,"lon":121.4,"seq":%d}' % (now_ms(-1), 2**63): "wrong_type:seq",
            b'{"v":1,"ts":%d,"lat":31.2,"lon":121.4,"mode":"\xe9"}' % now_ms(-1): "bad_json",  # not UTF-8
        }
        for payload in cases:
            pub.publish("t/bad/car-01/telemetry", payload, qos=1).wait_for_publish(5)
        pub.publish("t/bad/car-99/telemetry", orjson.dumps(telemetry(now_ms(-1))), qos=1).wait_for_publish(5)
        good = b'{"v":1,"ts":%d,"lat":31.2304,"lon":121.4737,"tyre_counter":%d}' % (now_ms(-3), 10**29)
        pub.publish("t/bad/car-01/telemetry", good, qos=1).wait_for_publish(5)
        await until(lambda: len(query(db, "SELECT 1 FROM rejected")) >= len(cases) + 1 and
                    len(query(db, "SELECT 1 FROM telemetry")) == 1, what="rejections stored")
        rows = query(db, "SELECT reason, vehicle, topic, raw, source FROM rejected")
        by_reason: dict[str, list[tuple[Any, ...]]] = {}
        for row in rows:
            by_reason.setdefault(row[0], []).append(row)
        assert set(by_reason) == {*cases.values(), "vehicle_not_allowed"}
        for reason in set(cases.values()):
            sent = sorted(p for p, r in cases.items() if r == reason)
            assert sorted(bytes(r[3]) for r in by_reason[reason]) == sent, reason  # the raw payloads are kept
            assert {r[1] for r in by_reason[reason]} == {"car-01"}
        assert by_reason["bad_json"][0][2] == "t/bad/car-01/telemetry"
        assert by_reason["vehicle_not_allowed"][0][1] == "car-99"
        [(extra,)] = query(db, "SELECT extra FROM telemetry")
        assert extra == {"tyre_counter": pytest.approx(1e29)}  # a key the contract does not name, as orjson reads it
        await gw.flush()
        stats = gw.status()
        assert stats["drivers"]["mqtt"]["rejected_by_reason"]["bad_json"] == 2
        assert stats["drivers"]["mqtt"]["rejected_by_reason"]["vehicle_not_allowed"] == 1
        assert gw.writer is not None and gw.writer.stats.db_up  # the writer lives on
        validation = stats["ingest_workers"] if ingest_workers else stats["pipeline"]
        assert validation["validation_rejected_by_reason" if ingest_workers else "rejected_by_reason"] == {
            "invalid_coordinates": 1, "impossible_speed": 1, "future_timestamp": 1}
        assert query(db, "SELECT id FROM vehicles") == [("car-01",)]  # refused and bad telemetry register nothing
        pub.loop_stop()
        pub.disconnect()
    finally:
        await gw.stop()


async def test_commands_acked_by_a_car_and_timed_out_when_it_is_gone(gateway: Gateway,
                                                                     mqtt_broker: EmbeddedMosquitto,
                                                                     db: str) -> None:
    async with CarFleet(1, mqtt_broker.url, prefix=_prefix(gateway), rate_hz=5.0, time_factor=1.0,
                        seed=1) as fleet:
        stop = asyncio.Event()
        driving = asyncio.create_task(fleet.run(stop))
        await until(lambda: gateway.fleet is not None and "car-01" in gateway.live.latest, what="car-01 seen")
        car = fleet.car("car-01")
        result = await gateway.fleet.execute("car-01", Hold())
        assert result.result == "accepted"
        await until(lambda: car.mode == "hold" and car.speed < 0.1, what="car holding")
        await gateway.fleet.execute("car-01", Goto(31.2310, 121.4750))
        await until(lambda: car.mode == "goto", what="car driving to the point")
        with pytest.raises(UnsupportedCommand):
            await gateway.fleet.execute("car-01", Takeoff(10.0))
        route = ((31.2312, 121.4745), (31.2318, 121.4760))
        await gateway.fleet.execute("car-01", FollowRoute(route, loop=True))
        await until(lambda: car.mode == "route", what="car on its route")
        assert car.grid.to_latlon(*car.target) == pytest.approx(route[-1], abs=1e-6)  # bound for the last point
        with pytest.raises(CommandRejected, match="outside the patrol district") as refused:
            await gateway.fleet.execute("car-01", Goto(0.5, 0.5))
        assert refused.value.result == "rejected"
        assert car.mode == "route"  # a refused command changes nothing
        await gateway.fleet.execute("car-01", ReturnHome())
        await until(lambda: car.mode == "return", what="car returning to base")
        stop.set()
        await driving
    # The car is gone (disconnected): the command times out, and the broker tells us it went offline.
    await until(lambda: gateway.live.online.get("car-01") is False, what="car offline")
    with pytest.raises(CommandTimeout):
        await gateway.fleet.execute("car-01", Hold())
    sql = "SELECT detail->>'result' FROM events WHERE type = 'command' ORDER BY time, id"
    await until(lambda: len(query(db, sql)) == 7, what="command events stored")
    assert [r[0] for r in query(db, sql)] == ["accepted", "accepted", "unsupported", "accepted", "rejected",
                                              "accepted", "timeout"]


async def test_two_gateways_share_the_load_without_duplicates_or_loss(db: str, mqtt_broker: EmbeddedMosquitto,
                                                                    tmp_path: Path) -> None:
    gws = [Gateway(settings_for(db, mqtt_broker, tmp_path, client_id=f"gw-share-{i}", prefix="t/share",
                                shared_group="patrolgate")) for i in range(2)]
    for gw in gws:
        await gw.start()
    try:
        pub = publisher(mqtt_broker)
        base = now_ms(-120)
        n = 2000
        for i in range(n):
            pub.publish(f"t/share/car-{i % 20:02d}/telemetry", orjson.dumps(telemetry(base + i)), qos=1)
        await until(lambda: sum(g.pipeline.received for g in gws if g.pipeline) >= n, what="all messages")
        for gw in gws:
            await gw.writer.flush()  # type: ignore[union-attr]
        shares = [g.pipeline.received for g in gws if g.pipeline]
        assert all(share > n // 10 for share in shares), shares
        assert query(db, "SELECT count(*), count(DISTINCT (vehicle_key, time)) FROM telemetry") == [(n, n)]
        pub.loop_stop()
        pub.disconnect()
    finally:
        for gw in gws:
            await gw.stop()


@BOTH_INGEST_MODES
async def test_a_graceful_stop_acknowledges_everything_so_nothing_comes_back(db: str, mqtt_broker: EmbeddedMosquitto,
                                                                           tmp_path: Path, ingest_workers: int) -> None:
    """Stopped mid-stream with SIGTERM-like stop(): the last messages are committed and PUBACKed before the
    disconnect, so the next start gets no redeliveries (which would land in `rejected` as duplicates)."""
    settings = settings_for(db, mqtt_broker, tmp_path, client_id=f"gw-graceful-{ingest_workers}",
                            prefix="t/graceful",
                            ingest_workers=ingest_workers)
    gw = Gateway(settings)
    await gw.start()
    pub = publisher(mqtt_broker)
    base = now_ms(-300)
    n = 3000
    for i in range(n):
        pub.publish(f"t/graceful/car-{i % 10:02d}/telemetry", orjson.dumps(telemetry(base + i * 10)), qos=1)
    await until(lambda: gw.samples_counts()[1] >= n // 2, what="half the stream")
    await gw.stop()  # mid-stream: what was received is stored and acknowledged, the rest waits in the broker
    stored_at_stop = query(db, "SELECT count(*) FROM telemetry")[0][0]
    gw = Gateway(settings)
    await gw.start()
    try:
        await until(lambda: query(db, "SELECT count(*) FROM telemetry")[0][0] >= n, what="the rest of the stream")
        await asyncio.sleep(0.5)
        assert gw.samples_counts()[1] == n - stored_at_stop  # only what the first instance never received
        assert query(db, "SELECT count(*) FROM rejected") == [(0,)]
        assert query(db, "SELECT count(*), count(DISTINCT (vehicle_key, time)) FROM telemetry") == [(n, n)]
    finally:
        pub.loop_stop()
        pub.disconnect()
        await gw.stop()


async def test_password_and_acl_broker_accepts_the_gateway_and_refuses_a_wrong_password(
        db: str, tmp_path: Path) -> None:
    acl = ("user gateway\ntopic read t/acl/#\ntopic write t/acl/+/cmd\n"
           "user car-01\ntopic write t/acl/car-01/#\ntopic read t/acl/car-01/cmd\n")
    with EmbeddedMosquitto(passwords={"gateway": "s3cret", "car-01": "carpw"}, acl=acl) as broker:
        wrong = Gateway(settings_for(db, broker, tmp_path, client_id="gw-wrong", prefix="t/acl",
                                     username="gateway", password="nope"))
        with pytest.raises(MqttConnectError, match="refused"):
            await wrong.start()
        await wrong.stop()
        gw = Gateway(settings_for(db, broker, tmp_path, client_id="gw-acl", prefix="t/acl",
                                  username="gateway", password="s3cret"))
        await gw.start()
        try:
            # The ACL lets car-01 write under its own topics only: posing as car-02 is refused by the broker
            # (PUBACK reason 135, not authorized; mosquitto then drops the connection).
            intruder = publisher(broker, "car-01-posing", username="car-01", password="carpw")
            refused: list[int] = []
            intruder.on_publish = lambda client, userdata, mid, reason, props: refused.append(reason.value)
            intruder.publish("t/acl/car-02/telemetry", orjson.dumps(telemetry(now_ms(-2))), qos=1).wait_for_publish(5)
            assert refused == [135]
            intruder.loop_stop()
            pub = publisher(broker, "car-01", username="car-01", password="carpw")
            pub.publish("t/acl/car-01/telemetry", orjson.dumps(telemetry(now_ms(-1))), qos=1).wait_for_publish(5)
            await until(lambda: "car-01" in gw.live.latest, what="telemetry through the ACL broker")
            assert "car-02" not in gw.live.latest and gw.pipeline is not None and gw.pipeline.received == 1
            pub.loop_stop()
            pub.disconnect()
        finally:
            await gw.stop()


_GATEWAY_SCRIPT = """
import asyncio, logging
from gateway.config import load_settings
from gateway.service import Gateway
logging.basicConfig(level=logging.INFO)
asyncio.run(Gateway(load_settings()).run_until_signalled())
"""


@BOTH_INGEST_MODES
def test_gateway_killed_and_restarted_loses_nothing_published_at_qos1(db: str, mqtt_broker: EmbeddedMosquitto,
                                                                      tmp_path: Path, ingest_workers: int) -> None:
    """SIGKILL mid-stream: the broker keeps the session's QoS 1 messages, unacked ones are redelivered. With
    ingest workers, those of the killed gateway store what they were handed and end; the new ones wait for
    them (their spool folders), so the redelivered messages they had stored are recognised as duplicates."""
    env = dict(os.environ)
    env.update({
        "PATROLGATE_DATABASE__DSN": db, "PATROLGATE_MQTT__BROKER": mqtt_broker.url,
        "PATROLGATE_MQTT__PREFIX": "t/kill", "PATROLGATE_MQTT__CLIENT_ID": f"gw-kill-{ingest_workers}",
        "PATROLGATE_MAVLINK__ENDPOINTS": "[]", "PATROLGATE_API__ENABLED": "false",
        "PATROLGATE_WRITER__SPOOL_DIR": str(tmp_path / "spool"), "PATROLGATE_WRITER__FLUSH_INTERVAL": "100ms",
        "PATROLGATE_MQTT__INGEST_WORKERS": str(ingest_workers),
    })
    runs = 0

    def start() -> subprocess.Popen[bytes]:
        nonlocal runs
        runs += 1
        log = tmp_path / f"gateway-{runs}.log"
        with open(log, "wb") as fh:
            proc = subprocess.Popen([sys.executable, "-c", _GATEWAY_SCRIPT], env=env, stdout=fh, stderr=fh)
        deadline = time.monotonic() + 30
        while b"MQTT driver subscribed" not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        return proc

    proc = start()
    pub = publisher(mqtt_broker, "car-kill")
    base = now_ms(-600)
    n = 6000
    for i in range(n):
        pub.publish(f"t/kill/car-{i % 10:02d}/telemetry", orjson.dumps(telemetry(base + i * 10)), qos=1)
        if i == 2000:
            proc.send_signal(signal.SIGKILL)  # mid-stream, no flush, no goodbye
            proc.wait(10)
        if i % 500 == 0:
            time.sleep(0.05)
    pub.loop_stop()
    pub.disconnect()
    proc = start()
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if query(db, "SELECT count(*) FROM telemetry")[0][0] >= n:
                break
            time.sleep(0.2)
        time.sleep(1.0)
        assert query(db, "SELECT count(*), count(DISTINCT (vehicle_key, time)) FROM telemetry") == [(n, n)]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


async def test_broker_restart_mid_stream_loses_nothing(db: str, tmp_path: Path) -> None:
    """mosquitto stops and starts again (persistence on): the gateway reconnects, the session resumes."""
    with EmbeddedMosquitto() as broker:
        gw = Gateway(settings_for(db, broker, tmp_path, client_id="gw-restart", prefix="t/restart"))
        await gw.start()
        try:
            pub = publisher(broker, "car-restart")
            base = now_ms(-300)
            for i in range(500):
                pub.publish(f"t/restart/car-{i % 5:02d}/telemetry", orjson.dumps(telemetry(base + i)), qos=1)
            await until(lambda: gw.pipeline is not None and gw.pipeline.received >= 500, what="first half")
            pub.loop_stop()
            pub.disconnect()
            await asyncio.to_thread(broker.stop_server)
            await asyncio.sleep(0.5)
            await asyncio.to_thread(broker.start_server)
            await until(lambda: gw.drivers[0].stats()["client"]["connects"] >= 2, what="gateway reconnected")
            pub = publisher(broker, "car-restart")
            for i in range(500, 1000):
                pub.publish(f"t/restart/car-{i % 5:02d}/telemetry", orjson.dumps(telemetry(base + i)), qos=1)
            await until(lambda: len(query(db, "SELECT 1 FROM telemetry")) == 1000, what="all 1000 stored")
            assert query(db, "SELECT count(DISTINCT (vehicle_key, time)) FROM telemetry") == [(1000,)]
            pub.loop_stop()
            pub.disconnect()
        finally:
            await gw.stop()


async def test_mqtt_311_and_offline_on_telemetry_silence(db: str, mqtt_broker: EmbeddedMosquitto,
                                                        tmp_path: Path) -> None:
    gw = Gateway(settings_for(db, mqtt_broker, tmp_path, client_id="gw-311", prefix="t/v311", protocol="3.1.1",
                              silence_timeout="1s"))
    await gw.start()
    try:
        client = gw.drivers[0]._client  # type: ignore[attr-defined]
        assert client.version == 4
        pub = publisher(mqtt_broker, "car-silent")
        pub.publish("t/v311/car-05/telemetry", orjson.dumps(telemetry(now_ms(-1))), qos=1).wait_for_publish(5)
        await until(lambda: gw.live.online.get("car-05") is True, what="online from telemetry")
        await until(lambda: gw.live.online.get("car-05") is False, timeout=10, what="offline after silence")
        pub.loop_stop()
        pub.disconnect()
        await asyncio.sleep(0.2)
        await gw.writer.flush()  # type: ignore[union-attr]
        details = query(db, "SELECT type, detail->>'reason' FROM events ORDER BY time, id")
        assert details == [("online", "telemetry"), ("offline", "telemetry_silence")]
    finally:
        await gw.stop()


@BOTH_INGEST_MODES
async def test_an_mqtt_drone_its_status_its_sos_and_its_last_will(db: str, mqtt_broker: EmbeddedMosquitto,
                                                                  tmp_path: Path, ingest_workers: int) -> None:
    """A drone on the MQTT contract whose retained ``online`` is all the gateway sees first: it is registered as
    a drone once its telemetry says so; its SOS lands in ``events``; its last will is an ``offline`` from the
    status topic (silence is set far off, so it cannot be the cause)."""
    pre = f"t/drone-mqtt-{ingest_workers}"  # each variant its own topics and session: no retained or queued leftovers
    drone = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="drone-01",
                        protocol=mqtt.MQTTv5)
    drone.will_set(f"{pre}/drone-01/status", b"offline", qos=1, retain=True)
    drone.connect(mqtt_broker.host, mqtt_broker.port)
    drone.loop_start()
    drone.publish(f"{pre}/drone-01/status", b"online", qos=1, retain=True).wait_for_publish(5)
    drone.publish(f"{pre}/dock-09/status", b"online", qos=1, retain=True).wait_for_publish(5)  # status only
    gw = Gateway(settings_for(db, mqtt_broker, tmp_path, client_id=f"gw-drone-{ingest_workers}", prefix=pre,
                              silence_timeout="60s", ingest_workers=ingest_workers))
    await gw.start()
    try:
        await until(lambda: gw.live.online.get("drone-01") is True, what="online from the retained status")
        ts = now_ms(-1)
        doc = telemetry(ts, kind="drone", alt_m=62.0, alt_rel_m=40.0, climb_mps=-0.5, roll_deg=2.0,
                        pitch_deg=-3.0, yaw_deg=181.0, armed=True, mode="AUTO", link_quality_pct=97.0)
        drone.publish(f"{pre}/drone-01/telemetry", orjson.dumps(doc), qos=1).wait_for_publish(5)
        sos = {"v": 1, "type": "sos", "ts": ts, "id": "e-17", "lat": 31.2305, "lon": 121.4738,
               "detail": {"button": "remote"}}
        drone.publish(f"{pre}/drone-01/event", orjson.dumps(sos), qos=1).wait_for_publish(5)
        await until(lambda: "drone-01" in gw.live.latest, what="drone telemetry")
        drone.loop_stop()
        drone.socket().close()  # no DISCONNECT: the broker publishes the last will
        await until(lambda: gw.live.online.get("drone-01") is False, what="offline from the last will")
        await gw.flush()
        assert query(db, "SELECT id, kind, protocol, mqtt_client_id FROM vehicles ORDER BY id") == [
            ("dock-09", "patrol_car", "mqtt", "dock-09"), ("drone-01", "drone", "mqtt", "drone-01")]
        assert query(db, "SELECT alt_rel_m, climb_mps, yaw_deg, armed, mode, link_quality_pct FROM telemetry") == [
            (40.0, -0.5, 181.0, True, "AUTO", 97.0)]
        events = query(db, "SELECT type, detail, lat, lon, time FROM events e JOIN vehicles v ON v.key = "
                           "e.vehicle_key WHERE v.id = 'drone-01' ORDER BY time, e.id")
        status = [(t, d) for t, d, *_ in events if t in ("online", "offline")]
        assert status == [("online", {"reason": "status_topic", "retained": True}),
                          ("offline", {"reason": "status_topic"})]
        [sos_row] = [row for row in events if row[0] == "sos"]
        assert sos_row[1:] == ({"button": "remote", "event_id": "e-17"}, 31.2305, 121.4738,
                               datetime.fromtimestamp(ts / 1000, UTC))
    finally:
        await gw.stop()


class _Mqtt311OnlyProxy:
    """A broker that only speaks MQTT 3.1.1, as older ones do: a front for mosquitto that answers an MQTT 5
    CONNECT with the 3.1.1 refusal (CONNACK return code 1, unacceptable protocol version) and passes 3.1.1
    connections through."""

    def __init__(self, broker: EmbeddedMosquitto) -> None:
        self.broker = broker
        self.levels: list[int] = []  # the protocol level of every CONNECT seen
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"mqtt://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._pipes:
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        header = await reader.readexactly(1)  # CONNECT, then the remaining length: 7 bits a byte, low first
        length, shift = 0, 0
        while True:
            byte = (await reader.readexactly(1))[0]
            header += bytes([byte])
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = await reader.readexactly(length)
        level = body[6]  # after the protocol name: 0x00 0x04 'MQTT'
        self.levels.append(level)
        if level == 5:
            writer.write(b"\x20\x02\x00\x01")
            await writer.drain()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(self.broker.host, self.broker.port)
        up_writer.write(header + body)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (asyncio.create_task(pipe(reader, up_writer)), asyncio.create_task(pipe(up_reader, writer))):
            self._pipes.add(task)


async def test_protocol_auto_falls_back_to_mqtt_311_when_the_broker_refuses_5(
        db: str, mqtt_broker: EmbeddedMosquitto, tmp_path: Path) -> None:
    proxy = _Mqtt311OnlyProxy(mqtt_broker)
    async with proxy as url:
        settings = settings_for(db, mqtt_broker, tmp_path, client_id="gw-fallback", prefix="t/fallback",
                                protocol="auto")
        settings.mqtt.broker = url
        gw = Gateway(settings)
        await gw.start()
        try:
            assert gw.drivers[0]._client.version == 4  # type: ignore[attr-defined]
            assert proxy.levels == [5, 4]
            pub = publisher(mqtt_broker, "car-old-broker")
            pub.publish("t/fallback/car-09/telemetry", orjson.dumps(telemetry(now_ms(-1))),
                        qos=1).wait_for_publish(5)
            await until(lambda: "car-09" in gw.live.latest, what="telemetry over the 3.1.1 connection")
            pub.loop_stop()
            pub.disconnect()
        finally:
            await gw.stop()
