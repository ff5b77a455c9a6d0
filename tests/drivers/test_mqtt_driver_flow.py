"""The MQTT driver keeps its hand-overs bounded: while the pipeline holds an emit back, the driver reads on only
until ``max_pending_samples`` decoded samples wait, then stops reading (the broker keeps the rest) until the
next hand-over. Unbounded, reading ran ahead of validation and one hand-over grew to 100,000 samples."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from helpers import until
from paho.mqtt.enums import CallbackAPIVersion

from drivers.base import Ack, Emit
from drivers.mqtt import MqttDriver, MqttOptions
from gateway.embedded import EmbeddedMosquitto
from telemetry.model import Event, Rejection, Sample, VehicleInfo, VehicleKind

PER_MESSAGE = 10
MESSAGES = 100
LIMIT = 200


async def test_reading_stops_at_the_pending_limit_while_an_emit_is_held(mqtt_broker: EmbeddedMosquitto) -> None:
    gate = asyncio.Event()
    handed: list[int] = []
    stamps: set[int] = set()

    async def emit(samples: Sequence[Sample] = (), *, events: Sequence[Event] = (),
                   rejections: Sequence[Rejection] = (), vehicles: Sequence[VehicleInfo] = (),
                   ack: Ack | None = None) -> None:
        handed.append(len(samples))
        stamps.update(int(s.vehicle_time.timestamp() * 1000) for s in samples if s.vehicle_time)
        await gate.wait()  # the pipeline holds this hand-over back (a full writer queue)
        if ack is not None:
            ack()

    driver = MqttDriver(MqttOptions(broker=mqtt_broker.url, prefix="t/hold", client_id="hold-test",
                                    max_pending_samples=LIMIT, flush_interval_s=0.005))
    await driver.start(emit)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="hold-pub", protocol=mqtt.MQTTv5)
    pub.connect(mqtt_broker.host, mqtt_broker.port)
    pub.loop_start()
    try:
        base = int(time.time() * 1000) - 600_000
        for m in range(MESSAGES):
            batch = [{"v": 1, "ts": base + m * PER_MESSAGE + i, "lat": 31.23, "lon": 121.47}
                     for i in range(PER_MESSAGE)]
            pub.publish("t/hold/car-01/telemetry", orjson.dumps(batch), qos=1)
        await until(lambda: handed, what="a first hand-over")
        await asyncio.sleep(0.5)  # time enough to read all 100 messages, were reading not held
        decoded = driver.counters["samples"]
        assert decoded < MESSAGES * PER_MESSAGE
        # Beyond the held hand-over, the driver decoded the limit, plus the message that reached it, no more.
        assert decoded - handed[0] <= LIMIT + PER_MESSAGE
        assert decoded - handed[0] >= LIMIT
        gate.set()
        await until(lambda: sum(handed) == MESSAGES * PER_MESSAGE, what="every sample handed over")
        assert max(handed[1:]) <= LIMIT + PER_MESSAGE
        assert len(stamps) == MESSAGES * PER_MESSAGE  # each sample exactly once
    finally:
        gate.set()  # a failed assertion must not leave stop() waiting on the held emit
        pub.loop_stop()
        pub.disconnect()
        await driver.stop()


class _HeldOffload:
    """A ``TelemetryOffload`` whose hand-overs become durable when the test says so."""

    def __init__(self) -> None:
        self.on_seen: Any = None
        self.pending: list[str] = []
        self.handed: list[tuple[list[str], Ack]] = []
        self.held = 0

    @property
    def pending_bytes(self) -> int:
        return len(self.pending)

    @property
    def held_bytes(self) -> int:
        return self.held

    def submit(self, vehicle: str, topic: str, payload: bytes, received: datetime) -> None:
        self.pending.append(vehicle)

    async def flush(self, ack: Ack) -> None:
        self.handed.append((self.pending, ack))
        self.pending = []

    def stats(self) -> dict[str, Any]:
        return {"samples": 0}


async def _offloaded_driver(broker: EmbeddedMosquitto, name: str, emit: Emit,
                            offload: _HeldOffload) -> tuple[MqttDriver, list[list[int]], mqtt.Client]:
    """A driver on ``t/<name>`` with ``offload``, the message ids of each PUBACK write, and a publisher."""
    driver = MqttDriver(MqttOptions(broker=broker.url, prefix=f"t/{name}", client_id=f"{name}-test",
                                    flush_interval_s=0.005), offload=offload)
    await driver.start(emit)
    assert driver._client is not None
    acked: list[list[int]] = []
    real_ack_many = driver._client.ack_many
    driver._client.ack_many = lambda mids: (acked.append(list(mids)), real_ack_many(mids))  # type: ignore[method-assign]
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id=f"{name}-pub",
                      protocol=mqtt.MQTTv5)
    pub.connect(broker.host, broker.port)
    pub.loop_start()
    return driver, acked, pub


async def test_with_an_offload_pubacks_keep_the_order_received_and_wait_for_first_seen_reports(
        mqtt_broker: EmbeddedMosquitto) -> None:
    stored: list[tuple[list[Event], list[VehicleInfo]]] = []

    async def emit(samples: Sequence[Sample] = (), *, events: Sequence[Event] = (),
                   rejections: Sequence[Rejection] = (), vehicles: Sequence[VehicleInfo] = (),
                   ack: Ack | None = None) -> None:
        stored.append((list(events), list(vehicles)))
        if ack is not None:
            ack()

    offload = _HeldOffload()
    driver, acked, pub = await _offloaded_driver(mqtt_broker, "order", emit, offload)
    try:
        doc = orjson.dumps({"v": 1, "ts": int(time.time() * 1000) - 5000, "lat": 31.23, "lon": 121.47})
        for car in ("car-01", "car-02"):
            pub.publish(f"t/order/{car}/telemetry", doc, qos=1).wait_for_publish(5)
            await until(lambda car=car: [car] in [h for h, _ in offload.handed], what=f"{car} handed over")
        (_, first), (_, second) = [h for h in offload.handed if h[0]]
        # The worker accepted car-01's telemetry: it is registered and online with the next hand-over.
        offload.on_seen([("car-01", VehicleKind.DRONE)])
        second()
        await asyncio.sleep(0.05)
        assert acked == []  # the second is durable, but the first was received first
        first()
        await until(lambda: len(acked) == 2, what="both acknowledged")
        assert [len(batch) for batch in acked] == [1, 1] and acked[0] < acked[1]  # in the order received
        registered = [v for _, vehicles in stored for v in vehicles]
        assert [(v.vehicle, v.kind, v.kind_known) for v in registered] == [("car-01", VehicleKind.DRONE, True)]
        online = [e for events, _ in stored for e in events]
        assert [(e.vehicle, e.type, e.kind) for e in online] == [("car-01", "online", VehicleKind.DRONE)]
    finally:
        pub.loop_stop()
        pub.disconnect()
        await driver.stop()


async def test_a_puback_waits_for_the_reports_already_handed_to_the_pipeline(mqtt_broker: EmbeddedMosquitto) -> None:
    """The usual timing: the worker's report (a new vehicle) is handed to the pipeline before the worker says
    the telemetry is durable; the PUBACK still waits until that registration is durable too."""
    pipeline_acks: list[tuple[list[VehicleInfo], Ack]] = []

    async def emit(samples: Sequence[Sample] = (), *, events: Sequence[Event] = (),
                   rejections: Sequence[Rejection] = (), vehicles: Sequence[VehicleInfo] = (),
                   ack: Ack | None = None) -> None:
        assert ack is not None
        pipeline_acks.append((list(vehicles), ack))  # durable when the test says so

    offload = _HeldOffload()
    driver, acked, pub = await _offloaded_driver(mqtt_broker, "carrier", emit, offload)
    try:
        doc = orjson.dumps({"v": 1, "ts": int(time.time() * 1000) - 5000, "lat": 31.23, "lon": 121.47})
        pub.publish("t/carrier/car-01/telemetry", doc, qos=1).wait_for_publish(5)
        await until(lambda: ["car-01"] in [h for h, _ in offload.handed], what="handed over")
        [telemetry_durable] = [ack for h, ack in offload.handed if h]
        offload.on_seen([("car-01", VehicleKind.PATROL_CAR)])
        await until(lambda: any(vehicles for vehicles, _ in pipeline_acks), what="registration handed on")
        for vehicles, ack in list(pipeline_acks):
            if not vehicles:
                ack()  # every pipeline part except the one carrying the registration
        telemetry_durable()
        await asyncio.sleep(0.05)
        assert acked == []
        for vehicles, ack in list(pipeline_acks):
            if vehicles:
                ack()
        await until(lambda: acked == [[1]], what="the PUBACK, once the registration is durable")
    finally:
        for _, ack in pipeline_acks:
            ack()  # stop() must not wait on parts the test held
        pub.loop_stop()
        pub.disconnect()
        await driver.stop()


async def test_hand_overs_held_for_a_restarting_worker_stop_reading(mqtt_broker: EmbeddedMosquitto) -> None:
    async def emit(samples: Sequence[Sample] = (), *, events: Sequence[Event] = (),
                   rejections: Sequence[Rejection] = (), vehicles: Sequence[VehicleInfo] = (),
                   ack: Ack | None = None) -> None:
        if ack is not None:
            ack()

    offload = _HeldOffload()
    offload.held = 1 << 40  # a worker being started again holds far more than the limit
    driver, _, pub = await _offloaded_driver(mqtt_broker, "held", emit, offload)
    assert driver._client is not None
    holds: list[bool] = []
    real_hold = driver._client.hold
    driver._client.hold = lambda held: (holds.append(held), real_hold(held))  # type: ignore[method-assign]
    try:
        doc = orjson.dumps({"v": 1, "ts": int(time.time() * 1000) - 5000, "lat": 31.23, "lon": 121.47})
        for _ in range(20):
            pub.publish("t/held/car-01/telemetry", doc, qos=0)
        await until(lambda: sum(len(h) for h, _ in offload.handed) == 20, what="all read, one per hand-over")
        assert holds.count(True) >= 19  # reading stops after every message, resumes at the next hand-over
    finally:
        pub.loop_stop()
        pub.disconnect()
        await driver.stop()
