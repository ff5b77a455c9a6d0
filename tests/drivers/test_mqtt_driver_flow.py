"""The MQTT driver keeps its hand-overs bounded: while the pipeline holds an emit back, the driver reads on only
until ``max_pending_samples`` decoded samples wait, then stops reading (the broker keeps the rest) until the
next hand-over. Unbounded, reading ran ahead of validation and one hand-over grew to 100,000 samples."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence

import orjson
import paho.mqtt.client as mqtt
from helpers import until
from paho.mqtt.enums import CallbackAPIVersion

from drivers.base import Ack
from drivers.mqtt import MqttDriver, MqttOptions
from gateway.embedded import EmbeddedMosquitto
from telemetry.model import Event, Rejection, Sample, VehicleInfo

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
