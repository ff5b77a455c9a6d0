"""A car's side of the MQTT contract: topics, telemetry with batching and faults, status, events, commands.

`CarLink` holds everything one vehicle needs on the wire (sequence counter, batch buffer, offline backlog,
command processor) and publishes through whatever `MqttConnection` it is given: its own (one client per car,
the realistic setup) or one shared by many cars (the benchmark setup, see `SharedListener`).
"""

from __future__ import annotations

import asyncio
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from simulators.patrol_car.commands import CommandProcessor
from simulators.patrol_car.faults import CarFaults
from simulators.patrol_car.motion import SimulatedCar
from simulators.patrol_car.payloads import encode, event_object, malformed_telemetry
from simulators.patrol_car.stats import FleetStats
from simulators.patrol_car.transport import MqttConnection

__all__ = ["CarLink", "CarTopics", "SharedListener"]

_MAX_ARRAY = 1000  # the contract's limit of samples per telemetry array


@dataclass(frozen=True, slots=True)
class CarTopics:
    telemetry: str
    status: str
    event: str
    cmd: str
    ack: str

    @classmethod
    def build(cls, prefix: str, vehicle_id: str) -> CarTopics:
        base = f"{prefix}/{vehicle_id}"
        return cls(f"{base}/telemetry", f"{base}/status", f"{base}/event", f"{base}/cmd", f"{base}/cmd/ack")


class CarLink:
    """Publishes one car's telemetry/status/events/acks and executes its commands.

    Used as the `ConnectionListener` of the car's own connection; in shared mode a `SharedListener` forwards
    to it. ``clock_ms`` gives the car's clock (wall or simulated); ``clock_skew_s`` is added to every ``ts``.
    """

    def __init__(
        self,
        car: SimulatedCar,
        topics: CarTopics,
        stats: FleetStats,
        faults: CarFaults,
        *,
        clock_ms: Callable[[SimulatedCar], int],
        batch: int = 1,
        qos: int = 1,
        rng: random.Random | None = None,
        clock_skew_s: float = 0.0,
        shared: bool = False,
    ) -> None:
        self.car = car
        self.topics = topics
        self.stats = stats
        self.faults = faults
        self.batch = batch
        self.qos = qos
        self.rng = rng or random.Random()
        self.clock_skew_s = clock_skew_s
        self.shared = shared
        self.conn: MqttConnection | None = None
        self.seq = 0
        self.commands = CommandProcessor(car)
        self._clock_ms = clock_ms
        self._batch: list[dict[str, Any]] = []
        self._backlog: deque[dict[str, Any]] = deque()
        self._event_backlog: deque[tuple[str, bytes]] = deque(maxlen=100)
        self._event_no = 0
        self._ever_up = False
        self._announced = False
        self._emulated_down = False
        self._queued_cmds: list[bytes] = []

    # --- state ----------------------------------------------------------------------------------------------
    @property
    def online(self) -> bool:
        return self.conn is not None and self.conn.connected and not self._emulated_down

    def now_ms(self) -> int:
        return self._clock_ms(self.car) + round(self.clock_skew_s * 1000.0)

    @property
    def backlog(self) -> int:
        return len(self._backlog)

    # --- periodic -------------------------------------------------------------------------------------------
    def tick(self, event_prob: float = 0.0) -> None:
        """Take one telemetry sample of the car (already stepped) and publish or buffer it."""
        self.seq += 1
        sample = self.car.telemetry(self.now_ms(), self.seq)
        self._emit(sample)
        self.car.roll_events(event_prob)
        if self.car.events:
            self._flush_car_events()
        f = self.faults
        if f.disconnect_prob and self.online and self.rng.random() < f.disconnect_prob:
            self.disconnect(f.disconnect_for_s)

    def _emit(self, sample: dict[str, Any]) -> None:
        if not self.online:
            self._buffer([sample])
            return
        self._batch.append(sample)
        if len(self._batch) >= self.batch:
            samples, self._batch = self._batch, []
            self._send_telemetry(encode(samples if self.batch > 1 else samples[0]), len(samples))
        f = self.faults
        if f.malformed_prob and self.rng.random() < f.malformed_prob:
            kind = self.rng.choice(f.malformed_kinds)
            self._publish(self.topics.telemetry, malformed_telemetry(kind, sample, self.rng), self.qos)
            self.stats.malformed_sent += 1
            self.stats.malformed_by_kind[kind] = self.stats.malformed_by_kind.get(kind, 0) + 1

    def _send_telemetry(self, payload: bytes, n: int) -> None:
        self._publish(self.topics.telemetry, payload, self.qos)
        self.stats.telemetry_messages += 1
        self.stats.samples += n
        if self.faults.duplicate_prob and self.rng.random() < self.faults.duplicate_prob:
            self._publish(self.topics.telemetry, payload, self.qos)
            self.stats.duplicates_sent += 1
            self.stats.duplicate_samples += n

    def _buffer(self, samples: list[dict[str, Any]]) -> None:
        f = self.faults
        if not f.burst_on_reconnect or f.max_backlog == 0:
            self.stats.samples_dropped += len(samples)
            return
        self._backlog.extend(samples)
        self.stats.samples_buffered += len(samples)
        while len(self._backlog) > f.max_backlog:
            self._backlog.popleft()
            self.stats.samples_dropped += 1

    def _flush_backlog(self) -> None:
        """The reconnect burst: everything taken while offline, published at once."""
        chunk = min(self.faults.burst_batch or self.batch, _MAX_ARRAY)
        backlog = self._backlog
        while backlog and self.online:
            n = min(chunk, len(backlog))
            samples = [backlog.popleft() for _ in range(n)]
            payload = encode(samples if chunk > 1 else samples[0])
            self._publish(self.topics.telemetry, payload, self.qos)
            self.stats.telemetry_messages += 1
            self.stats.samples += n
            self.stats.burst_messages += 1

    def flush_batch(self) -> None:
        """Publish a partly filled batch now (at a clean stop)."""
        if self._batch and self.online:
            samples, self._batch = self._batch, []
            self._send_telemetry(encode(samples if self.batch > 1 else samples[0]), len(samples))

    # --- events ---------------------------------------------------------------------------------------------
    def _flush_car_events(self) -> None:
        events, self.car.events = self.car.events, []
        lat, lon = self.car.latlon
        for etype, detail in events:
            self._event_no += 1
            obj = event_object(f"e-{self.car.vehicle_id}-{self._event_no}", self.now_ms(), etype, lat, lon, detail)
            self._event_backlog.append((etype, encode(obj)))
        self._send_events()

    def _send_events(self) -> None:
        while self._event_backlog and self.online:
            _, payload = self._event_backlog.popleft()
            self._publish(self.topics.event, payload, 1)
            self.stats.events_sent += 1

    # --- connection life cycle ------------------------------------------------------------------------------
    def on_connected(self, conn: MqttConnection, session_present: bool) -> None:
        if not self.shared:
            conn.subscribe([self.topics.cmd], qos=1)
        self.link_up()

    def on_disconnected(self, conn: MqttConnection, expected: bool) -> None:
        self.link_down(expected)

    def on_message(self, conn: MqttConnection, topic: str, payload: bytes) -> None:
        if topic == self.topics.cmd:
            self.on_command(payload)

    def link_up(self) -> None:
        """Connected (again): announce ``online`` (retained), then the backlog burst and held events."""
        if not self.online:
            return
        if self._ever_up:
            self.stats.reconnects += 1
        self._ever_up = True
        self._announced = True
        self._publish(self.topics.status, b"online", 1, retain=True)
        self.stats.status_messages += 1
        self._flush_backlog()
        self._send_events()
        queued, self._queued_cmds = self._queued_cmds, []
        for payload in queued:
            self._execute(payload)

    def link_down(self, expected: bool = False) -> None:
        if not expected:
            self.stats.disconnects += 1
        if self._batch:
            samples, self._batch = self._batch, []
            self._buffer(samples)

    def disconnect(self, for_s: float) -> None:
        """Drop offline for ``for_s`` wall seconds. Own connection: cut the TCP connection abruptly (the
        broker publishes the last will). Shared connection: publish this car's ``offline`` and stay silent
        (the shared connection itself stays up)."""
        if self.conn is None:
            return
        if not self.shared:
            self.conn.drop(for_s)
            return
        if self._emulated_down:
            return
        if self.online:
            self._publish(self.topics.status, b"offline", 1, retain=True)
            self.stats.status_messages += 1
        self._emulated_down = True
        self.link_down()
        asyncio.get_running_loop().call_later(for_s, self._emulated_back)

    def _emulated_back(self) -> None:
        self._emulated_down = False
        self.link_up()

    def say_goodbye(self) -> None:
        """Clean stop: last partial batch, then retained ``offline`` (a clean DISCONNECT fires no will)."""
        self.flush_batch()
        if self.online and self._announced:
            self._publish(self.topics.status, b"offline", 1, retain=True)
            self.stats.status_messages += 1

    # --- commands -------------------------------------------------------------------------------------------
    def on_command(self, payload: bytes) -> None:
        self.stats.commands_received += 1
        if self._emulated_down:  # what the broker would do for an offline persistent session
            self._queued_cmds.append(payload)
            return
        self._execute(payload)

    def _execute(self, payload: bytes) -> None:
        ack = self.commands.handle(payload, self.now_ms())
        self._publish(self.topics.ack, encode(ack), 1)
        self.stats.acks_sent += 1

    def _publish(self, topic: str, payload: bytes, qos: int, retain: bool = False) -> None:
        assert self.conn is not None
        if self.conn.publish(topic, payload, qos=qos, retain=retain):
            self.stats.published_messages += 1


class SharedListener:
    """Listener of a connection shared by many cars: subscribes all their command topics and fans out."""

    def __init__(self, links: list[CarLink]) -> None:
        self.links = links
        self._by_cmd_topic = {link.topics.cmd: link for link in links}

    def on_connected(self, conn: MqttConnection, session_present: bool) -> None:
        conn.subscribe(list(self._by_cmd_topic), qos=1)
        for link in self.links:
            link.link_up()

    def on_disconnected(self, conn: MqttConnection, expected: bool) -> None:
        for link in self.links:
            link.link_down(expected)

    def on_message(self, conn: MqttConnection, topic: str, payload: bytes) -> None:
        link = self._by_cmd_topic.get(topic)
        if link is not None:
            link.on_command(payload)
