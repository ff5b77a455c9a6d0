"""The patrol car simulator against a real mosquitto, observed by a plain paho subscriber.

Every test uses its own topic prefix so retained status messages of other tests cannot leak in.
"""

from __future__ import annotations

import asyncio
import math
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from gateway.embedded import EmbeddedMosquitto
from simulators.patrol_car import (
    MALFORMED_KINDS,
    CarFaults,
    CarFleet,
    FleetStats,
    SimulatedCar,
    StreetGrid,
    run_car_fleet,
    vehicle_ids,
)

GRID = StreetGrid()
MAIN_LIMIT = 50.0 / 3.6
ACCEL_MPS2, BRAKE_MPS2, TURN_SPEED_MPS = 2.0, 4.0, 4.0  # what the brief asks for, not imported
TELEMETRY_KEYS = {
    "v",
    "ts",
    "kind",
    "seq",
    "lat",
    "lon",
    "alt_m",
    "speed_mps",
    "heading_deg",
    "battery_pct",
    "battery_v",
    "odometer_m",
    "mode",
    "gps_fix",
    "satellites",
    "rssi_dbm",
}
MODES = {"patrol", "goto", "route", "return", "hold", "parked"}


# --- observer ---------------------------------------------------------------------------------------------------
@dataclass
class Msg:
    topic: str
    payload: bytes
    retain: bool
    t: float


class Observer:
    """A plain paho subscriber (own network thread) recording everything under a topic filter."""

    def __init__(
        self, host: str, port: int, pre: str, sub: str = "#", username: str | None = None, password: str | None = None
    ) -> None:
        self.messages: list[Msg] = []
        self._lock = threading.Lock()
        self._subscribed = threading.Event()
        self.prefix = pre
        self.topic = f"{pre}/{sub}"
        self.client = mqtt.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            protocol=mqtt.MQTTv5,
            client_id=f"observer-{uuid.uuid4().hex[:8]}",
        )
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_connect = lambda c, *a: c.subscribe(self.topic, qos=1)
        self.host, self.port = host, port

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        with self._lock:
            self.messages.append(Msg(msg.topic, msg.payload, bool(msg.retain), time.monotonic()))

    def __enter__(self) -> Observer:
        self.client.connect(self.host, self.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "observer could not subscribe"
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def snapshot(self) -> list[Msg]:
        with self._lock:
            return list(self.messages)

    def on(self, suffix: str, vehicle_id: str | None = None) -> list[Msg]:
        out = []
        for m in self.snapshot():
            vid, rest = self.vehicle_of(m), m.topic[len(self.prefix) + 1 :].split("/", 1)[1]
            if rest == suffix and (vehicle_id is None or vid == vehicle_id):
                out.append(m)
        return out

    def vehicle_of(self, m: Msg) -> str:
        return m.topic[len(self.prefix) + 1 :].split("/", 1)[0]

    def samples(self, vehicle_id: str | None = None) -> list[dict[str, Any]]:
        """Good telemetry samples in arrival order, arrays flattened."""
        out: list[dict[str, Any]] = []
        for m in self.on("telemetry", vehicle_id):
            try:
                obj = orjson.loads(m.payload)
            except orjson.JSONDecodeError:
                continue
            for s in obj if isinstance(obj, list) else [obj]:
                if s.get("v") == 1 and isinstance(s.get("lat"), float) and abs(s["lat"]) <= 90:
                    out.append(s)
        return out

    async def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str = "condition") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate()
            if result:
                return result
            await asyncio.sleep(0.02)
        raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def prefix() -> str:
    return f"t{uuid.uuid4().hex[:8]}/v1"


def send_command(broker: Any, topic: str, cmd: dict[str, Any] | bytes) -> None:
    """Publish one command with a throwaway paho client, the way a gateway would (QoS 1)."""
    c = mqtt.Client(
        callback_api_version=CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5, client_id=f"cmd-{uuid.uuid4().hex[:8]}"
    )
    c.connect(broker.host, broker.port)
    c.loop_start()
    try:
        payload = cmd if isinstance(cmd, bytes) else orjson.dumps(cmd)
        c.publish(topic, payload, qos=1).wait_for_publish(5)
    finally:
        c.disconnect()
        c.loop_stop()


def xy(sample: dict[str, Any]) -> tuple[float, float]:
    return GRID.to_xy(sample["lat"], sample["lon"])


async def run_for(fleet: CarFleet, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(fleet.run(stop))
    await asyncio.sleep(seconds)
    stop.set()
    await task


# --- grid and motion without a broker ---------------------------------------------------------------------------
def test_street_grid_geometry() -> None:
    g = StreetGrid()
    assert g.node_count == 121
    lat, lon = g.to_latlon(0.0, 0.0)
    assert (lat, lon) == (31.2304, 121.4737)
    x, y = g.to_xy(*g.to_latlon(123.4, -987.6))
    assert math.isclose(x, 123.4, abs_tol=1e-6) and math.isclose(y, -987.6, abs_tol=1e-6)
    # 250 m east of the centre is ~0.002628 deg of longitude at 31.23 N
    assert math.isclose(
        g.to_latlon(250.0, 0.0)[1] - 121.4737, 250.0 / (111_195.08 * math.cos(math.radians(31.2304))), rel_tol=1e-4
    )
    centre = g.node(5, 5)
    assert g.limit(centre, centre + 1) == pytest.approx(MAIN_LIMIT)  # row 5 is a main road
    assert g.limit(g.node(1, 1), g.node(2, 1)) == pytest.approx(30 / 3.6)
    assert g.signalised[centre] and not g.signalised[g.node(1, 1)]
    assert g.distance_to_road(g.base_x, g.base_y) == 0.0
    p = g.project(130.0, 40.0)  # inside a block: nearest road is the east-west street y=0
    assert (p.x, p.y, p.distance_m) == (130.0, 0.0, 40.0)
    path = g.shortest_path(g.node(0, 0), g.node(3, 2))
    assert path[0] == g.node(0, 0) and path[-1] == g.node(3, 2) and len(path) == 6


def test_car_motion_is_plausible() -> None:
    """An hour of patrol at 4 Hz: on the roads, within limits, slow in turns, bounded acceleration."""
    for seed in range(3):
        car = SimulatedCar("car-x", GRID, random.Random(seed))
        prev_v, prev_h, odo0 = car.speed, car.heading_deg, car.odometer_m
        xs, ys, stops, turns = [], [], 0, 0
        for _ in range(4 * 3600):
            car.step(0.25)
            xs.append(car.x)
            ys.append(car.y)
            assert car.speed <= GRID.road_limit_at(car.x, car.y) + 1e-9
            dv = (car.speed - prev_v) / 0.25
            assert dv <= ACCEL_MPS2 + 1e-9
            # braking is <= 4 m/s²; only the last < 1 m before a stop line may end abruptly
            assert dv >= -BRAKE_MPS2 - 1e-9 or prev_v < 1.6
            turn = abs((car.heading_deg - prev_h + 180.0) % 360.0 - 180.0)
            if turn > 45.0 and car.speed > 0:
                turns += 1
                assert car.speed <= TURN_SPEED_MPS + ACCEL_MPS2 * 0.25 + 1e-9
            if car.speed == 0.0 and prev_v > 0.0:
                stops += 1
            prev_v, prev_h = car.speed, car.heading_deg
        assert car.mode == "patrol"
        assert GRID.distance_to_road(np.array(xs), np.array(ys)).max() < 1e-6
        driven = car.odometer_m - odo0
        assert 15_000 < driven < 3600 * MAIN_LIMIT  # mostly moving, never faster than the main road limit
        assert turns > 20 and stops > 10


def test_car_commands_directly() -> None:
    car = SimulatedCar("car-x", GRID, random.Random(7))
    for _ in range(20):
        car.step(1.0)
    target = (310.0, -480.0)  # in a block, 20 m off the nearest street (y = -500)
    car.goto(*target, speed_mps=6.0)
    assert car.mode == "goto"
    for _ in range(2000):
        car.step(1.0)
        assert car.speed <= 6.0 + 1e-9
        if car.mode != "goto":
            break
    assert car.mode == "hold" and car.speed == 0.0
    assert math.hypot(car.x - target[0], car.y - target[1]) < 1e-6
    car.resume()
    for _ in range(30):
        car.step(1.0)
    assert car.mode == "patrol" and car.speed > 0
    car.hold()
    for _ in range(6):
        car.step(1.0)
    assert car.mode == "hold" and car.speed == 0.0
    car.follow_route([(-500.0, -500.0), (-250.0, -500.0)], loop=True)
    visits = 0
    near = False
    for _ in range(2000):
        car.step(1.0)
        close = math.hypot(car.x + 500.0, car.y + 500.0) < 15.0
        visits += close and not near
        near = close
    assert car.mode == "route" and visits >= 3  # it keeps looping
    car.return_to_base()
    for _ in range(2000):
        car.step(1.0)
        if car.mode == "parked":
            break
    assert car.mode == "parked" and (car.x, car.y) == (GRID.base_x, GRID.base_y)
    assert vehicle_ids(3) == ["car-01", "car-02", "car-03"]
    assert vehicle_ids(2, first_index=99) == ["car-099", "car-100"]


# --- over MQTT --------------------------------------------------------------------------------------------------
@pytest.mark.mqtt
async def test_telemetry_conforms_to_contract(mqtt_broker: Any) -> None:
    pre = prefix()
    with Observer(mqtt_broker.host, mqtt_broker.port, pre) as obs:
        t0_ms = time.time() * 1000
        async with CarFleet(5, mqtt_broker.url, prefix=pre, time_factor=10.0, seed=3, clock="sim") as fleet:
            await run_for(fleet, 3.0)
            assert await fleet.drain()
        await obs.wait_for(lambda: len(obs.samples()) >= fleet.stats.samples, 5, "all samples")
    stats = fleet.stats
    assert stats.samples == stats.telemetry_messages >= 5 * 25
    assert stats.puback_received == stats.published_messages
    for vid in fleet.vehicle_ids:
        samples = obs.samples(vid)
        assert len(samples) >= 25
        assert [s["seq"] for s in samples] == list(range(1, len(samples) + 1))
        for s in samples:
            assert set(s) == TELEMETRY_KEYS
            assert s["v"] == 1 and s["kind"] == "patrol_car" and s["mode"] in MODES
            assert isinstance(s["ts"], int) and isinstance(s["seq"], int)
            assert 0 <= s["speed_mps"] <= MAIN_LIMIT + 0.3
            assert 0 <= s["heading_deg"] < 360
            assert 0 <= s["battery_pct"] <= 100 and 46.0 < s["battery_v"] < 55.0
            assert s["gps_fix"] in (3, 4) and 7 <= s["satellites"] <= 20 and -110 <= s["rssi_dbm"] <= -50
            assert 0 < s["alt_m"] < 10
            assert GRID.contains(*xy(s), margin_m=10.0)
        # simulated vehicle clock: exactly one second between samples at 1 Hz, starting near now
        ts = np.array([s["ts"] for s in samples])
        assert abs(ts[0] - t0_ms) < 10_000 and set(np.diff(ts)) == {1000}
        pts = np.array([xy(s) for s in samples])
        assert GRID.distance_to_road(pts[:, 0], pts[:, 1]).max() < 8.0  # on the roads, up to GPS noise
        speeds = np.array([s["speed_mps"] for s in samples])
        odo = np.array([s["odometer_m"] for s in samples])
        step = np.hypot(*np.diff(pts, axis=0).T)
        assert (step <= np.diff(odo) + 10.0).all()  # never further than driven (+ GPS noise)
        # the odometer advances by the mean speed over each second (trapezoid), allowing for stops
        expected = 0.5 * (speeds[1:] + speeds[:-1])
        assert abs(np.diff(odo).sum() - expected.sum()) < 0.15 * expected.sum() + 20.0
        assert np.diff(odo).max() <= MAIN_LIMIT + 0.5


@pytest.mark.mqtt
async def test_batched_arrays(mqtt_broker: Any) -> None:
    pre = prefix()
    with Observer(mqtt_broker.host, mqtt_broker.port, pre, "+/telemetry") as obs:
        async with CarFleet(2, mqtt_broker.url, prefix=pre, batch=5, time_factor=20.0, seed=4) as fleet:
            await run_for(fleet, 1.6)
            assert await fleet.drain()
        await obs.wait_for(lambda: len(obs.samples()) >= fleet.stats.samples, 5, "all samples")
    msgs = obs.on("telemetry")
    assert len(msgs) == fleet.stats.telemetry_messages >= 10
    for vid in fleet.vehicle_ids:
        seqs = []
        for m in obs.on("telemetry", vid):
            arr = orjson.loads(m.payload)
            assert isinstance(arr, list) and 1 <= len(arr) <= 5
            assert all(set(s) == TELEMETRY_KEYS for s in arr)
            seqs += [s["seq"] for s in arr]
        assert seqs == list(range(1, len(seqs) + 1))
        full = [len(orjson.loads(m.payload)) for m in obs.on("telemetry", vid)]
        assert full[:-1] == [5] * (len(full) - 1)  # only the flush at the clean stop may be shorter


@pytest.mark.mqtt
async def test_retained_status_last_will_and_reconnect_burst(mqtt_broker: Any) -> None:
    pre = prefix()
    with Observer(mqtt_broker.host, mqtt_broker.port, pre) as obs:
        fleet = CarFleet(1, mqtt_broker.url, prefix=pre, time_factor=10.0, seed=5)
        async with fleet:
            stop = asyncio.Event()
            task = asyncio.create_task(fleet.run(stop))
            await obs.wait_for(lambda: len(obs.samples()) >= 5, 5, "telemetry")
            # a late subscriber gets the retained online
            with Observer(mqtt_broker.host, mqtt_broker.port, pre, "car-01/status") as late:
                await late.wait_for(lambda: late.snapshot(), 2, "retained status")
                assert [(m.payload, m.retain) for m in late.snapshot()] == [(b"online", True)]
            fleet.disconnect("car-01", 1.0)  # abrupt: the broker must publish the last will
            await obs.wait_for(lambda: obs.on("status")[-1].payload == b"offline", 2, "last will")
            with Observer(mqtt_broker.host, mqtt_broker.port, pre, "car-01/status") as late:
                await late.wait_for(lambda: late.snapshot(), 2, "retained status")
                assert [(m.payload, m.retain) for m in late.snapshot()] == [(b"offline", True)]
            assert not fleet.link("car-01").online
            # a command sent while the car is offline waits in its persistent session at the broker
            send_command(mqtt_broker, f"{pre}/car-01/cmd", {"v": 1, "id": "c-offline", "type": "hold"})
            await obs.wait_for(lambda: obs.on("status")[-1].payload == b"online", 4, "back online")
            ack = await obs.wait_for(lambda: obs.on("cmd/ack"), 3, "ack of the queued command")
            assert orjson.loads(ack[0].payload)["id"] == "c-offline" and ack[0].t > obs.on("status")[-1].t
            await asyncio.sleep(0.5)
            stop.set()
            await task
        await obs.wait_for(lambda: obs.on("status")[-1].payload == b"offline", 3, "clean offline")
    stats = fleet.stats
    assert [m.payload for m in obs.on("status")] == [b"online", b"offline", b"online", b"offline"]
    assert stats.disconnects == 1 and stats.reconnects == 1 and stats.status_messages == 3
    assert stats.samples_buffered >= 5 and stats.samples_dropped == 0
    assert stats.burst_messages == stats.samples_buffered
    # the burst: no sample lost, in order, and the backlog arrived within a few milliseconds
    samples = obs.samples("car-01")
    assert [s["seq"] for s in samples] == list(range(1, stats.samples + 1))
    telemetry = obs.on("telemetry")
    online_again = obs.on("status")[2].t
    burst = [m for m in telemetry if m.t >= online_again][: stats.samples_buffered]
    assert burst[-1].t - burst[0].t < 0.1


@pytest.mark.mqtt
async def test_commands_goto_hold_return_and_errors(mqtt_broker: Any) -> None:
    pre = prefix()
    cmd_topic = f"{pre}/car-01/cmd"
    with Observer(mqtt_broker.host, mqtt_broker.port, pre) as obs:
        fleet = CarFleet(1, mqtt_broker.url, prefix=pre, time_factor=50.0, seed=6)
        async with fleet:
            stop = asyncio.Event()
            task = asyncio.create_task(fleet.run(stop))

            def acks() -> dict[str, dict[str, Any]]:
                return {a["id"]: a for a in (orjson.loads(m.payload) for m in obs.on("cmd/ack"))}

            async def command(cid: str, ctype: str, params: dict[str, Any] | None = None, v: int = 1) -> dict[str, Any]:
                send_command(
                    mqtt_broker,
                    cmd_topic,
                    {"v": v, "id": cid, "ts": int(time.time() * 1000), "type": ctype, "params": params or {}},
                )
                return await obs.wait_for(lambda: acks().get(cid), 5, f"ack of {cid}")

            await obs.wait_for(lambda: obs.samples(), 5, "telemetry")
            car = fleet.car("car-01")
            # goto a point two blocks away from where the car is now, 30 m into a block
            nx, ny = GRID.node_x[GRID.nearest_node(car.x, car.y)], GRID.node_y[GRID.nearest_node(car.x, car.y)]
            tx, ty = nx + (500.0 if nx < 0 else -500.0), ny + (30.0 if ny < 0 else -30.0)
            tlat, tlon = GRID.to_latlon(tx, ty)
            ack = await command("c-1", "goto", {"lat": tlat, "lon": tlon, "speed_mps": 8.0})
            assert ack == {"v": 1, "id": "c-1", "ts": ack["ts"], "result": "accepted", "reason": None}
            n_before = len(obs.samples())
            await obs.wait_for(lambda: any(s["mode"] == "hold" for s in obs.samples()[n_before:]), 15, "arrival")
            await asyncio.sleep(0.3)
            after = obs.samples()[n_before:]
            moving = [s for s in after if s["mode"] == "goto"]
            held = [s for s in after if s["mode"] == "hold"]
            assert moving and max(s["speed_mps"] for s in moving) <= 8.0 + 0.3
            assert len(held) >= 5 and all(s["speed_mps"] == 0.0 for s in held)
            for s in held:
                hx, hy = xy(s)
                assert math.hypot(hx - tx, hy - ty) < 8.0  # at the target, up to GPS noise

            ack = await command("c-2", "resume")
            assert ack["result"] == "accepted"
            await obs.wait_for(
                lambda: obs.samples()[-1]["mode"] == "patrol" and obs.samples()[-1]["speed_mps"] > 5,
                10,
                "patrolling again",
            )
            ack = await command("c-3", "hold")
            assert ack["result"] == "accepted"
            await asyncio.sleep(0.4)  # 20 simulated seconds
            tail = [s for s in obs.samples() if s["mode"] == "hold"][-8:]
            assert len(tail) == 8 and all(s["speed_mps"] == 0.0 for s in tail)
            assert math.hypot(*np.subtract(xy(tail[0]), xy(tail[-1]))) < 8.0  # stays where it stopped

            ack = await command("c-4", "return_to_base")
            assert ack["result"] == "accepted"
            await obs.wait_for(lambda: obs.samples()[-1]["mode"] == "parked", 15, "parked at the base")
            bx, by = xy(obs.samples()[-1])
            assert math.hypot(bx - GRID.base_x, by - GRID.base_y) < 8.0
            assert any(s["mode"] == "return" for s in obs.samples())

            ack = await command("c-5", "self_destruct")
            assert ack["result"] == "unsupported" and ack["reason"]
            ack = await command("c-6", "goto", {"lat": "north", "lon": 121.47})
            assert ack["result"] == "rejected" and "lat" in ack["reason"]
            ack = await command("c-7", "goto", {"lat": 39.9, "lon": 116.4})  # Beijing: not our district
            assert ack["result"] == "rejected"
            ack = await command("c-8", "route", {"waypoints": [[tlat, tlon], [31.2304, 121.4737]], "loop": True})
            assert ack["result"] == "accepted"
            ack = await command("c-9", "hold", v=99)
            assert (ack["result"], ack["reason"]) == ("rejected", "unknown_version")
            send_command(mqtt_broker, cmd_topic, b"{not json")
            await obs.wait_for(
                lambda: any(a["id"] is None for a in (orjson.loads(m.payload) for m in obs.on("cmd/ack"))),
                5,
                "bad JSON ack",
            )
            assert fleet.car("car-01").mode == "route"
            stop.set()
            await task
    assert fleet.stats.commands_received == 10 and fleet.stats.acks_sent == 10


@pytest.mark.mqtt
async def test_malformed_payload_fault(mqtt_broker: Any) -> None:
    pre = prefix()
    faults = CarFaults(malformed_prob=0.5)
    with Observer(mqtt_broker.host, mqtt_broker.port, pre, "+/telemetry") as obs:
        async with CarFleet(2, mqtt_broker.url, prefix=pre, time_factor=25.0, seed=8, faults=faults) as fleet:
            await run_for(fleet, 2.0)
            assert await fleet.drain()
        stats = fleet.stats
        await obs.wait_for(
            lambda: len(obs.on("telemetry")) >= stats.telemetry_messages + stats.malformed_sent, 5, "all telemetry"
        )
    seen: Counter[str] = Counter()
    good = 0
    for m in obs.on("telemetry"):
        try:
            s = orjson.loads(m.payload)
        except orjson.JSONDecodeError:
            seen["not_json"] += 1
            continue
        if s["v"] == 99:
            seen["unknown_version"] += 1
        elif isinstance(s["lat"], str):
            assert isinstance(s["ts"], str) and isinstance(s["lon"], str)
            seen["wrong_types"] += 1
        elif abs(s["lat"]) > 90:
            seen["lat_out_of_range"] += 1
        else:
            assert set(s) == TELEMETRY_KEYS and s["v"] == 1
            good += 1
    assert good == stats.samples
    assert stats.malformed_sent == sum(seen.values()) > 0.3 * stats.samples
    assert dict(seen) == stats.malformed_by_kind and set(seen) == set(MALFORMED_KINDS)


@pytest.mark.mqtt
async def test_duplicate_fault(mqtt_broker: Any) -> None:
    pre = prefix()
    faults = CarFaults(duplicate_prob=0.3)
    with Observer(mqtt_broker.host, mqtt_broker.port, pre, "+/telemetry") as obs:
        async with CarFleet(2, mqtt_broker.url, prefix=pre, time_factor=25.0, seed=9, faults=faults) as fleet:
            await run_for(fleet, 2.0)
            assert await fleet.drain()
        stats = fleet.stats
        await obs.wait_for(
            lambda: len(obs.on("telemetry")) >= stats.telemetry_messages + stats.duplicates_sent, 5, "all telemetry"
        )
    for vid in fleet.vehicle_ids:
        payloads = Counter(m.payload for m in obs.on("telemetry", vid))
        assert set(payloads.values()) <= {1, 2}
        seqs = Counter(s["seq"] for s in obs.samples(vid))
        assert sorted(seqs) == list(range(1, len(seqs) + 1))
    dupes = sum(n - 1 for n in Counter(m.payload for m in obs.on("telemetry")).values())
    assert dupes == stats.duplicates_sent and 0.15 * stats.samples < dupes < 0.45 * stats.samples


@pytest.mark.mqtt
async def test_clock_skew_and_events(mqtt_broker: Any) -> None:
    pre = prefix()
    with Observer(mqtt_broker.host, mqtt_broker.port, pre) as obs:
        fleet = CarFleet(
            2,
            mqtt_broker.url,
            prefix=pre,
            time_factor=25.0,
            seed=10,
            event_prob=0.2,
            faults=CarFaults(clock_skew_s=3600.0),
        )
        async with fleet:
            fleet.set_clock_skew("car-02", -90.0)
            await run_for(fleet, 1.5)
        await obs.wait_for(lambda: len(obs.on("event")) >= fleet.stats.events_sent > 0, 5, "events")
    now_ms = time.time() * 1000
    for s in obs.samples("car-01"):
        assert abs(s["ts"] - now_ms - 3_600_000) < 5_000
    for s in obs.samples("car-02"):
        assert abs(s["ts"] - now_ms + 90_000) < 5_000
    for m in obs.on("event"):
        e = orjson.loads(m.payload)
        assert e["v"] == 1 and e["type"] in ("sos", "door_open", "door_closed")
        assert isinstance(e["id"], str) and isinstance(e["ts"], int) and GRID.contains(*xy(e), 10.0)


@pytest.mark.mqtt
async def test_password_broker() -> None:
    with EmbeddedMosquitto(passwords={"u": "p"}) as broker:
        pre = prefix()
        with Observer(broker.host, broker.port, pre, username="u", password="p") as obs:
            async with CarFleet(2, broker.url, prefix=pre, username="u", password="p", time_factor=20.0) as fleet:
                await run_for(fleet, 0.5)
            await obs.wait_for(lambda: len(obs.samples()) >= fleet.stats.samples > 0, 5, "telemetry")
        with pytest.raises(ConnectionError, match="refused"):
            async with CarFleet(1, broker.url, prefix=pre, username="u", password="wrong"):
                pass
        with pytest.raises(ConnectionError):
            async with CarFleet(1, f"mqtt://u:p@127.0.0.1:{broker.port}", prefix=pre, password="wrong"):
                pass
        # credentials in the URL work too
        async with CarFleet(1, f"mqtt://u:p@127.0.0.1:{broker.port}", prefix=pre) as fleet:
            assert fleet.link("car-01").online


@pytest.mark.mqtt
async def test_shared_connection_mode(mqtt_broker: Any) -> None:
    pre = prefix()
    with Observer(mqtt_broker.host, mqtt_broker.port, pre) as obs:
        fleet = CarFleet(
            40,
            mqtt_broker.url,
            prefix=pre,
            time_factor=10.0,
            seed=11,
            first_index=501,
            shared_connection=True,
            connections=2,
        )
        async with fleet:
            assert len(fleet.connections) == 2
            stop = asyncio.Event()
            task = asyncio.create_task(fleet.run(stop))
            await obs.wait_for(lambda: len(obs.on("status")) >= 40, 5, "40 online")
            send_command(mqtt_broker, f"{pre}/car-517/cmd", {"v": 1, "id": "c-s", "type": "hold"})
            await obs.wait_for(lambda: obs.on("cmd/ack", "car-517"), 5, "ack via the shared connection")
            fleet.disconnect("car-520", 0.5)  # emulated: offline published on the car's behalf
            await obs.wait_for(
                lambda: (
                    [m.payload for m in obs.on("status", "car-520")][-1:] == [b"online"]
                    and len(obs.on("status", "car-520")) == 3
                ),
                5,
                "car-520 back",
            )
            await asyncio.sleep(0.3)
            stop.set()
            await task
    ids = {obs.vehicle_of(m) for m in obs.on("telemetry")}
    assert ids == set(fleet.vehicle_ids) and "car-501" in ids and "car-540" in ids
    assert orjson.loads(obs.on("cmd/ack", "car-517")[0].payload)["result"] == "accepted"
    assert fleet.car("car-517").mode == "hold"
    assert [m.payload for m in obs.on("status", "car-520")] == [b"online", b"offline", b"online", b"offline"]
    seqs = [s["seq"] for s in obs.samples("car-520")]
    assert seqs == list(range(1, len(seqs) + 1))  # the emulated outage also bursts its backlog


@pytest.mark.mqtt
@pytest.mark.slow
async def test_200_cars_publish_at_the_expected_rate(mqtt_broker: Any) -> None:
    pre = prefix()
    rate_hz, time_factor, seconds = 1.0, 5.0, 4.0
    with Observer(mqtt_broker.host, mqtt_broker.port, pre, "+/telemetry") as obs:
        stop = asyncio.Event()
        task = asyncio.create_task(
            run_car_fleet(
                200,
                mqtt_broker.url,
                prefix=pre,
                rate_hz=rate_hz,
                time_factor=time_factor,
                first_index=1001,
                seed=12,
                stop=stop,
            )
        )
        await obs.wait_for(lambda: len({m.topic for m in obs.snapshot()}) == 200, 10, "all 200 cars")
        n0, t0 = len(obs.snapshot()), time.monotonic()
        cpu0 = time.process_time()
        await asyncio.sleep(seconds)
        n1, t1 = len(obs.snapshot()), time.monotonic()
        cpu = time.process_time() - cpu0
        stop.set()
        stats = await task
        assert isinstance(stats, FleetStats)
        await obs.wait_for(lambda: len(obs.snapshot()) >= stats.telemetry_messages, 5, "every message")
    expected = 200 * rate_hz * time_factor
    measured = (n1 - n0) / (t1 - t0)
    assert 0.9 * expected < measured < 1.1 * expected
    assert len(obs.snapshot()) == stats.telemetry_messages == stats.samples
    per_car = Counter(m.topic for m in obs.snapshot())
    assert max(per_car.values()) - min(per_car.values()) <= 2
    assert stats.late_ticks == 0 and stats.puback_received == stats.published_messages
    # this process (simulator + observer thread) needs well under a core for 1,000 samples/s
    assert cpu / (t1 - t0) < 0.8


# --- the command line ---------------------------------------------------------------------------------------------
async def test_sim_cars_command_runs_a_faulty_fleet_and_stops_on_sigint(mqtt_broker: EmbeddedMosquitto) -> None:
    """``patrolgate sim cars`` as a user runs it: a real process with fault flags, against a real broker.

    Skewed clocks, duplicated and malformed payloads arrive as asked; SIGINT stops it cleanly and every car's
    retained status is ``offline``.
    """
    pre = prefix()
    skew_s = 3600.0
    with Observer(mqtt_broker.host, mqtt_broker.port, pre) as obs:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "gateway.cli", "sim", "cars", "--count", "3", "--broker", mqtt_broker.url,
            "--prefix", pre, "--rate-hz", "5", "--seed", "7", "--clock-skew", str(skew_s),
            "--duplicate-prob", "0.3", "--malformed-prob", "0.3", "--malformed-kinds", "not_json",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )
        try:
            await obs.wait_for(lambda: len(obs.on("telemetry")) >= 60, 30, "60 telemetry messages")
            proc.send_signal(signal.SIGINT)
            output, _ = await asyncio.wait_for(proc.communicate(), 15)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 0, output.decode(errors="replace")
        telemetry = obs.on("telemetry")
        assert {obs.vehicle_of(m) for m in telemetry} == set(vehicle_ids(3))
        payloads = [m.payload for m in telemetry]
        not_json = [p for p in payloads if _is_not_json(p)]
        assert not_json, "no malformed payload although --malformed-prob 0.3"
        good = [p for p in payloads if p not in not_json]
        assert len(good) > len(set(good)), "no duplicated payload although --duplicate-prob 0.3"
        now_ms = time.time() * 1000
        for sample in obs.samples():
            assert abs(sample["ts"] - (now_ms + skew_s * 1000)) < 60_000, "ts is not skewed by --clock-skew"
        await obs.wait_for(lambda: {obs.vehicle_of(m) for m in obs.on("status") if m.payload == b"offline"}
                           == set(vehicle_ids(3)), 5, "every car offline after SIGINT")


def _is_not_json(payload: bytes) -> bool:
    try:
        orjson.loads(payload)
    except orjson.JSONDecodeError:
        return True
    return False


def test_sim_cars_command_refuses_bad_options_with_the_reason() -> None:
    for bad, reason in ((["--count", "0"], "--count: 0 is outside [1, 10000]"),
                        (["--duplicate-prob", "2"], "--duplicate-prob: 2 is outside [0, 1]"),
                        (["--malformed-kinds", "gibberish"], "--malformed-kinds: expected a comma-separated subset")):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", "cars", *bad], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and reason in done.stderr, done.stderr
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        nowhere = f"mqtt://127.0.0.1:{unused.getsockname()[1]}"
    done = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", "cars", "--count", "1", "--broker", nowhere],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and f"cannot reach {nowhere}" in done.stderr and "Traceback" not in done.stderr
    shown = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", "cars", "--help"], capture_output=True,
                           text=True, timeout=60)
    assert shown.returncode == 0
    for flag in ("--disconnect-prob", "--clock-skew", "--duplicate-prob", "--malformed-prob", "--no-burst",
                 "--rate-hz", "--batch"):
        assert flag in shown.stdout
