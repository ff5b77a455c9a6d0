"""A driver stopped while the writer holds back its emit still delivers every sample it accepted.

The race (fixed in both drivers' ``stop()``): stop() used to cancel the flush loop; when the writer's queue held
``queue_max_rows`` the loop's emit was parked in ``TelemetryWriter.submit``, and the cancel dropped the rows that
emit had taken. The backpressure here is real: a second connection holds ``LOCK TABLE telemetry IN ACCESS
EXCLUSIVE MODE``, so the writer's worker waits inside its transaction, its queue fills and the driver's emit
blocks; stop() is called at that moment and the lock released a little later.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import paho.mqtt.client as mqtt
import psycopg
import pytest
from helpers import query, until
from paho.mqtt.enums import CallbackAPIVersion
from pymavlink.dialects.v20 import ardupilotmega as mavlink

from drivers.base import Ack, Driver
from drivers.mavlink import MavlinkDriver, MavlinkOptions
from drivers.mqtt import MqttDriver, MqttOptions
from gateway.embedded import EmbeddedMosquitto
from gateway.pipeline import Pipeline
from telemetry.model import Event, Rejection, Sample, VehicleInfo
from telemetry.writer import TelemetryWriter, WriterSettings

pytestmark = pytest.mark.postgres

M = mavlink
QUEUE_MAX_ROWS = 10
BATCH_ROWS = 5
#: Samples sent while the emit is parked: the driver accepts them and keeps them for stop()'s last flush.
TAIL = 7
#: How long stop() runs against the held lock before it is released.
RELEASE_AFTER_S = 0.3




class WatchedEmit:
    """The real Pipeline as the driver's emit, noting the calls in progress.

    Nothing in the chain suspends except ``TelemetryWriter.submit`` waiting for room, so a call still in
    progress whenever the test looks is one the writer holds back.
    """

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.entered = 0  # samples handed to emit so far (parked calls included)
        self.in_progress: dict[int, int] = {}  # call number -> samples it carries
        self.cancelled: dict[int, int] = {}  # call number -> samples it carried when cancelled
        self._calls = 0

    async def __call__(self, samples: Sequence[Sample] = (), *, events: Sequence[Event] = (),
                       rejections: Sequence[Rejection] = (), vehicles: Sequence[VehicleInfo] = (),
                       ack: Ack | None = None) -> None:
        self._calls += 1
        call = self._calls
        self.entered += len(samples)
        self.in_progress[call] = len(samples)
        try:
            await self.pipeline(samples, events=events, rejections=rejections, vehicles=vehicles, ack=ack)
        except asyncio.CancelledError:
            self.cancelled[call] = len(samples)
            raise
        finally:
            del self.in_progress[call]

    def parked(self) -> dict[int, int]:
        return dict(self.in_progress)


class Rig:
    """A real TelemetryWriter on the test database, and a second connection that can hold its commits back."""

    def __init__(self, db: str, spool_dir: Path) -> None:
        self.db = db
        self.writer = TelemetryWriter(db, WriterSettings(
            batch_rows=BATCH_ROWS, queue_max_rows=QUEUE_MAX_ROWS, flush_interval_s=0.05, spool_dir=str(spool_dir),
        ))
        self.pipeline = Pipeline(self.writer)  # as gateway/service.py wires it: Pipeline(writer) is the emit
        self.emit = WatchedEmit(self.pipeline)
        self.locker: psycopg.AsyncConnection[Any] | None = None
        self.driver: Driver | None = None
        self._writer_stopped = False

    async def start(self, driver: Driver) -> None:
        await self.writer.start()
        self.locker = await psycopg.AsyncConnection.connect(self.db)
        await driver.start(self.emit)
        self.driver = driver

    async def hold_commits(self) -> None:
        assert self.locker is not None
        await self.locker.execute("LOCK TABLE telemetry IN ACCESS EXCLUSIVE MODE")

    async def release_commits(self) -> None:
        assert self.locker is not None
        await self.locker.rollback()

    async def writer_waits_on_lock(self) -> bool:
        rows = await asyncio.to_thread(
            query, self.db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                            "AND wait_event_type = 'Lock' AND pid <> pg_backend_pid()")
        return bool(rows[0][0])

    async def stop_writer(self) -> None:
        if not self._writer_stopped:
            self._writer_stopped = True
            await self.writer.stop()

    async def close(self) -> None:
        """Cleanup after a failure too: release the lock first, or nothing below could finish."""
        try:
            if self.locker is not None:
                await self.locker.rollback()
            if self.driver is not None:
                await asyncio.wait_for(self.driver.stop(), 10)
        finally:
            await self.stop_writer()
            if self.locker is not None:
                await self.locker.close()


@pytest.fixture
async def rig(db: str, tmp_path: Path) -> AsyncIterator[Rig]:
    r = Rig(db, tmp_path / "spool")
    try:
        yield r
    finally:
        await r.close()


async def stop_while_held_back(rig: Rig, send: Callable[[int], None], accepted: Callable[[], int]) -> int:
    """Fill the writer until the driver's emit is parked, stop the driver then, release the lock; returns the
    number of samples sent (``send(n)`` sends sample n, 1-based; ``accepted()`` is the driver's counter)."""
    driver = rig.driver
    assert driver is not None
    await rig.hold_commits()
    sent = 0
    while not rig.emit.parked():
        assert sent < 300, "the writer never held an emit back"
        for _ in range(3):
            sent += 1
            send(sent)
        await until(lambda n=sent: accepted() == n and (rig.emit.entered == n or bool(rig.emit.parked())),
                    what=f"{sent} samples accepted and handed to emit")
    parked = rig.emit.parked()
    assert len(parked) == 1 and next(iter(parked.values())) > 0, parked
    assert rig.writer.backlog_rows >= QUEUE_MAX_ROWS  # the queue is full: submit() waits for room
    for _ in range(200):
        if await rig.writer_waits_on_lock():
            break
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("the writer's transaction is not waiting for the table lock")
    for _ in range(TAIL):  # accepted by the driver, not handed over: its flush loop is parked
        sent += 1
        send(sent)
    await until(lambda n=sent: accepted() == n, what=f"{sent} samples accepted")
    assert rig.emit.parked() == parked, "the held-back emit ended before stop() was called"
    stopping = asyncio.create_task(driver.stop())
    await asyncio.sleep(RELEASE_AFTER_S)
    assert not stopping.done(), "stop() returned while the writer still held the driver's rows back"
    assert await rig.writer_waits_on_lock()
    await rig.release_commits()
    await asyncio.wait_for(stopping, 5)
    rig.driver = None
    await rig.stop_writer()
    return sent


def assert_all_stored_once(rig: Rig, accepted: int, sent: int, stored: list[Any], expected: list[Any]) -> None:
    assert accepted == sent
    lost = sorted(set(expected) - set(stored))
    assert stored == expected, f"{len(lost)} of {accepted} accepted samples not stored (first: {lost[:5]})"
    assert rig.emit.cancelled == {}, f"emits cancelled with their samples: {rig.emit.cancelled}"
    assert rig.pipeline.received == accepted
    assert rig.pipeline.validator.accepted == accepted and not rig.pipeline.validator.rejected
    assert rig.writer.stats.written == accepted and rig.writer.stats.spooled == 0


class UdpDrone:
    """A pymavlink drone on its own UDP socket."""

    def __init__(self, sysid: int, target: tuple[str, int]) -> None:
        self.mav = M.MAVLink(None, srcSystem=sysid, srcComponent=1)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.target = target

    def send(self, msg: Any) -> None:
        self.sock.sendto(msg.pack(self.mav), self.target)
        self.mav.seq = (self.mav.seq + 1) % 256  # pack() alone does not advance the sequence number

    def heartbeat(self) -> None:
        self.send(M.MAVLink_heartbeat_message(M.MAV_TYPE_QUADROTOR, M.MAV_AUTOPILOT_ARDUPILOTMEGA,
                                              M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, 4, M.MAV_STATE_ACTIVE, 3))

    def position(self, n: int) -> None:
        """Sample n: time_boot_ms = 100 n identifies it in the database."""
        self.send(M.MAVLink_global_position_int_message(100 * n, 312_304_000, 1_214_737_000, 54_000, 50_000,
                                                        300, -400, 10, 9000))

    def close(self) -> None:
        self.sock.close()


async def test_mavlink_stop_while_writer_holds_back_emit_stores_every_accepted_sample(rig: Rig) -> None:
    driver = MavlinkDriver(MavlinkOptions(endpoints=["udpin:127.0.0.1:0"]))  # port 0: the kernel picks a free one
    await rig.start(driver)
    drone = UdpDrone(7, driver.local_address())
    try:
        drone.heartbeat()
        await until(lambda: driver.vehicles() == ["drone-7"], what="drone-7 registered")
        sent = await stop_while_held_back(rig, drone.position, lambda: driver.samples_total)
    finally:
        drone.close()
    stored = [r[0] for r in query(rig.db, "SELECT (extra->>'time_boot_ms')::int AS t FROM telemetry ORDER BY t")]
    assert_all_stored_once(rig, driver.samples_total, sent, stored, [100 * n for n in range(1, sent + 1)])


@pytest.mark.mqtt
async def test_mqtt_stop_while_writer_holds_back_emit_stores_every_accepted_sample(
        rig: Rig, mqtt_broker: EmbeddedMosquitto) -> None:
    prefix = "t/stop-backpressure"
    driver = MqttDriver(MqttOptions(broker=mqtt_broker.url, client_id="gw-stop-backpressure", prefix=prefix,
                                    session_expiry_s=0))
    await rig.start(driver)
    base_ms = int((time.time() - 60) * 1000)
    pub = mqtt.Client(callback_api_version=CallbackAPIVersion.VERSION2, client_id="pub-stop-backpressure",
                      protocol=mqtt.MQTTv5)
    pub.connect(mqtt_broker.host, mqtt_broker.port)
    pub.loop_start()

    def send(n: int) -> None:
        doc = {"v": 1, "ts": base_ms + 100 * n, "lat": 31.2304, "lon": 121.4737}
        pub.publish(f"{prefix}/car-01/telemetry", orjson.dumps(doc), qos=1)

    try:
        sent = await stop_while_held_back(rig, send, lambda: driver.counters["samples"])
    finally:
        pub.loop_stop()
        pub.disconnect()
    stored = [r[0] for r in query(rig.db, "SELECT time FROM telemetry ORDER BY time")]
    expected = [datetime.fromtimestamp((base_ms + 100 * n) / 1000, UTC) for n in range(1, sent + 1)]
    assert_all_stored_once(rig, driver.counters["samples"], sent, stored, expected)
