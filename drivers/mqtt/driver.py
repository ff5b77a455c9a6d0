"""The MQTT driver: patrol cars (and MQTT drones / docks) speaking the v1 contract (docs/mqtt.md).

Inbound: every message is decoded (``contract``) into samples, events or rejections and queued; a flusher task
hands the queue to ``emit`` with an ack callback, and only when the writer reports the rows durable are the
messages' PUBACKs sent. So a message the broker delivered is either stored or redelivered after a crash, never
lost; a payload that breaks the contract is stored in ``rejected`` (with topic and raw bytes) and then acked.
Redelivered duplicates are caught by the pipeline's duplicate check (same vehicle, same ``ts``).

With a ``TelemetryOffload`` (the gateway's ingest worker processes) telemetry payloads are handed over undecoded:
decoding, validation and storage of telemetry run there, in parallel; the driver keeps the rest (status,
events, command acks, online/offline) and still sends every PUBACK, once both sides report the rows durable.

Online/offline: the retained ``status`` topic (the car's last will says ``offline``) and telemetry silence.
Commands: published at QoS 1 on ``.../cmd``, answered on ``.../cmd/ack`` by id, with a timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, Protocol

from drivers.base import Driver, Emit, cancel_tasks
from drivers.commands import (
    Command,
    CommandRejected,
    CommandResult,
    CommandTimeout,
    FollowRoute,
    Goto,
    ReturnHome,
    UnknownVehicle,
    UnsupportedCommand,
)
from drivers.mqtt.client import MqttClient
from drivers.mqtt.contract import (
    ContractError,
    decode_ack,
    decode_event,
    decode_status,
    decode_telemetry,
    encode_command,
    parse_topic,
)
from drivers.mqtt.transport import InboundMessage
from telemetry.model import Event, EventType, Rejection, Sample, VehicleInfo, VehicleKind, utcnow

__all__ = ["MqttDriver", "MqttOptions", "TelemetryOffload"]

log = logging.getLogger(__name__)

#: Undecoded telemetry waiting for the offload's next hand-over at most, in payload bytes; past it the driver
#: stops reading until the hand-over (the counterpart of ``max_pending_samples``).
MAX_PENDING_OFFLOAD_BYTES = 8 << 20


class TelemetryOffload(Protocol):
    """Takes the driver's telemetry payloads undecoded and decodes, validates and stores them elsewhere (the
    gateway's ingest worker processes), so that one interpreter lock does not bound ingest.

    ``on_seen`` is set by the driver: the offload calls it with ``(vehicle, kind)`` the first time a vehicle's
    telemetry is accepted, which registers the vehicle and reports it online as in-process decoding does.
    """

    on_seen: Callable[[Iterable[tuple[str, VehicleKind]]], None] | None

    @property
    def pending_bytes(self) -> int:
        """Payload bytes submitted since the last ``flush``."""
        ...

    @property
    def held_bytes(self) -> int:
        """Bytes handed over but held back (a worker being started again): they count against reading too."""
        ...

    def submit(self, vehicle: str, topic: str, payload: bytes, received: datetime) -> None:
        """Queue one telemetry payload for the next ``flush``."""
        ...

    async def flush(self, ack: Callable[[], None]) -> None:
        """Hand over what was submitted; ``ack()`` runs once all of it is durable (stored or rejected).
        Awaiting it may block: that is backpressure."""
        ...

    def stats(self) -> dict[str, Any]: ...


@dataclass(slots=True)
class MqttOptions:
    """Driver settings (the gateway maps its configuration onto these). Times in seconds."""

    broker: str = "mqtt://127.0.0.1:1883"
    prefix: str = "patrolgate/v1"
    client_id: str = "patrolgate-gateway"
    username: str | None = None
    password: str | None = None
    protocol: str = "auto"
    tls_ca_file: str | None = None
    tls_insecure: bool = False
    keepalive_s: int = 30
    session_expiry_s: int = 86_400
    shared_group: str | None = None
    max_inflight: int = 1000
    open_registration: bool = True
    allowed_vehicles: set[str] = field(default_factory=set)
    silence_timeout_s: float = 30.0
    command_timeout_s: float = 10.0
    flush_interval_s: float = 0.02
    #: Decoded samples waiting for the pipeline at most; past it the driver stops reading until they are handed
    #: on (the broker keeps the rest). Keeps hand-overs small and steady: unbounded, reading ran ahead of
    #: validation, hand-overs snowballed to 100,000 samples and the writer sat idle while they were validated.
    max_pending_samples: int = 10_000
    #: On stop, how long to wait for the commit of the last messages before disconnecting (they are
    #: redelivered at the next start otherwise, and stored then as duplicates).
    stop_ack_timeout_s: float = 5.0


@dataclass(slots=True, eq=False)
class _HandOver:
    """The QoS 1 message ids of one hand-over and how many of its parts (pipeline, offload) are not durable yet."""

    mids: list[int]
    parts: int
    #: Its pipeline part is durable; until then ``after_stored`` waits for it (see ``MqttDriver._flush``).
    stored: bool = False
    after_stored: list[Callable[[], None]] = field(default_factory=list)


@dataclass(slots=True)
class _Vehicle:
    #: None until the vehicle's first telemetry says (a status message does not carry the kind).
    kind: VehicleKind | None
    online: bool = False
    last_telemetry: float = 0.0


class MqttDriver(Driver):
    name = "mqtt"

    def __init__(self, options: MqttOptions | None = None, offload: TelemetryOffload | None = None) -> None:
        self.options = options or MqttOptions()
        self._offload = offload
        if offload is not None:
            offload.on_seen = self._seen
        self._emit: Emit | None = None
        self._client: MqttClient | None = None
        self._vehicles: dict[str, _Vehicle] = {}
        self._samples: list[Sample] = []
        self._events: list[Event] = []
        self._rejections: list[Rejection] = []
        self._new_vehicles: list[VehicleInfo] = []
        self._to_ack: list[int] = []  # QoS 1 message ids, PUBACKed once their rows are durable
        self._acks: dict[str, asyncio.Future[Any]] = {}
        self._wake = asyncio.Event()
        #: Hand-overs not PUBACKed yet, in the order their messages came: PUBACKs go out in that order (MQTT
        #: 4.6.0-2), also when a later one is durable first (another ingest worker was faster).
        self._hand_overs: deque[_HandOver] = deque()
        #: Offloaded parts waiting for the vehicles they reported first (``_seen``) to be stored (see ``_flush``).
        self._follow_ups: list[Callable[[], None]] = []
        #: The newest hand-over that carried events or registrations (``_seen``'s reports among them).
        self._report_carrier: _HandOver | None = None
        self._acks_done = asyncio.Event()
        self._stopping = False
        self._flush_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.counters: dict[str, int] = {"messages": 0, "samples": 0, "events": 0, "rejected": 0, "commands": 0}
        self.rejected_by_reason: dict[str, int] = {}

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, emit: Emit) -> None:
        o = self.options
        self._emit = emit
        self._client = MqttClient(
            o.broker, o.client_id, self._on_message, username=o.username, password=o.password,
            protocol=o.protocol, tls_ca_file=o.tls_ca_file, tls_insecure=o.tls_insecure,
            keepalive_s=o.keepalive_s, session_expiry_s=o.session_expiry_s, max_inflight=o.max_inflight,
        )
        # Flushing runs before the connect: a resumed session delivers its backlog at once, before the SUBACK.
        self._stopping = False
        self._flush_task = asyncio.create_task(self._flush_loop(), name="mqtt-flush")
        shared = f"$share/{o.shared_group}/" if o.shared_group else ""
        topics = [f"{shared}{o.prefix}/+/{channel}" for channel in ("telemetry", "status", "event")]
        # Acks go to every instance, not one of the group: only the instance that sent a command waits for it.
        topics.append(f"{o.prefix}/+/cmd/ack")
        try:
            await self._client.start()
            await self._client.subscribe(topics, qos=1)
        except BaseException:
            await self.stop()
            raise
        self._tasks.append(asyncio.create_task(self._silence_loop(), name="mqtt-silence"))
        log.info("MQTT driver subscribed to %s on %s", ", ".join(topics), o.broker)

    async def stop(self) -> None:
        """Stop reading, hand the last messages to the pipeline, ack what became durable, disconnect."""
        if self._client is not None:
            self._client.stop_reading()  # for good: acks of the last commits must not resume reading
        await cancel_tasks(self._tasks)
        # Not cancelled: a cancel during an emit that the writer holds back would drop what it had taken.
        self._stopping = True
        self._wake.set()
        if self._flush_task is not None:
            await self._flush_task
            self._flush_task = None
        await self._flush()
        # The writer (stopped after the drivers) commits within its ack interval: wait for those PUBACKs, so
        # the broker does not redeliver the last messages at the next start (they would be stored as duplicates).
        deadline = asyncio.get_running_loop().time() + self.options.stop_ack_timeout_s
        while self._hand_overs and asyncio.get_running_loop().time() < deadline:
            if self._follow_ups or self._events or self._new_vehicles:  # reports of the last hand-overs
                await self._flush()  # not under the timeout: a cancel during an emit would drop what it took
                continue
            self._acks_done.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(deadline):
                    await self._acks_done.wait()
        if self._client is not None:
            await self._client.stop()

    # -- inbound -----------------------------------------------------------------------------------------

    def _on_message(self, msg: InboundMessage) -> None:
        self.counters["messages"] += 1
        topic_name = msg.topic
        payload = msg.payload
        if msg.qos == 1:
            self._to_ack.append(msg.mid)
        try:
            topic = parse_topic(topic_name, self.options.prefix)
            if topic.channel == "telemetry":
                self._telemetry(topic.vehicle, topic_name, payload)
            elif topic.channel == "status":
                self._status(topic.vehicle, payload, bool(msg.retain))
            elif topic.channel == "event":
                self._event(topic.vehicle, payload)
            else:
                self._command_ack(topic.vehicle, payload)
        except ContractError as exc:
            self._reject(exc, topic_name, payload)
        except Exception as exc:  # a decoder bug must not lose the message: keep it, with what went wrong
            log.exception("MQTT message on %s could not be handled", topic_name)
            self._reject(ContractError("internal_error", f"{type(exc).__name__}: {exc}"), topic_name, payload)
        # Hand on in pieces: a big emit is validated in one go on the loop, and the writer waits for that turn.
        pending = len(self._samples)
        if len(self._to_ack) >= 200 or pending >= 2000:
            self._wake.set()
        offload = self._offload
        full = pending >= self.options.max_pending_samples
        if offload is not None:
            full = full or offload.pending_bytes + offload.held_bytes >= MAX_PENDING_OFFLOAD_BYTES
        if full and self._client is not None:
            self._client.hold(True)  # released by the next hand-over
            self._wake.set()

    def _allowed(self, vehicle: str) -> bool:
        return self.options.open_registration or vehicle in self.options.allowed_vehicles

    def _known(self, vehicle: str, kind: VehicleKind | None) -> _Vehicle:
        """The vehicle's state. It is announced to the registry when first heard, and again once its first
        telemetry tells its kind: a drone whose retained ``status`` arrives first is registered with the
        contract's default kind only until then, and a known vehicle's kind is never changed by a status."""
        state = self._vehicles.get(vehicle)
        if state is None:
            state = self._vehicles[vehicle] = _Vehicle(kind)
        elif state.kind is not None or kind is None:
            return state
        state.kind = kind
        self._new_vehicles.append(VehicleInfo(vehicle, kind or VehicleKind.PATROL_CAR, "mqtt",
                                              mqtt_client_id=vehicle, kind_known=kind is not None))
        return state

    def _kind_of(self, vehicle: str) -> VehicleKind:
        """The vehicle's kind for its events; the contract's default (``patrol_car``) until its telemetry says.
        The registry takes a guess only for a vehicle it does not have yet; the first telemetry corrects it."""
        state = self._vehicles.get(vehicle)
        return state.kind if state is not None and state.kind is not None else VehicleKind.PATROL_CAR

    def _telemetry(self, vehicle: str, topic: str, payload: bytes) -> None:
        if not self._allowed(vehicle):
            raise ContractError("vehicle_not_allowed", f"{vehicle} is not in mqtt.allowed_vehicles")
        now = utcnow()
        if self._offload is not None:
            self._offload.submit(vehicle, topic, payload, now)
            # A vehicle heard before is live again at once; a new one once the offload has accepted its telemetry
            # (``_seen``): only then is its kind known, and a vehicle sending only garbage is never registered.
            if vehicle in self._vehicles:
                self._heard(vehicle, None, now)
            return
        samples, errors = decode_telemetry(payload, vehicle, now, f"mqtt:{topic}")
        for error in errors:
            self._reject(error, topic, payload, vehicle)
        if not samples:
            return
        self._heard(vehicle, samples[0].kind, now)
        self._samples += samples
        self.counters["samples"] += len(samples)

    def _heard(self, vehicle: str, kind: VehicleKind | None, now: datetime) -> None:
        """Telemetry came from ``vehicle``: it is registered, not silent, and online (an event when it was not)."""
        state = self._known(vehicle, kind)
        state.last_telemetry = time.monotonic()
        if not state.online:
            state.online = True
            self._events.append(Event(now, vehicle, EventType.ONLINE, {"reason": "telemetry"},
                                      kind=self._kind_of(vehicle)))

    def _seen(self, seen: Iterable[tuple[str, VehicleKind]]) -> None:
        """The offload's report of vehicles whose telemetry it accepted for the first time, with their kinds."""
        now = utcnow()
        for vehicle, kind in seen:
            self._heard(vehicle, kind, now)
        self._wake.set()

    def _status(self, vehicle: str, payload: bytes, retained: bool) -> None:
        online = decode_status(payload)
        state = self._known(vehicle, None)
        if online == state.online and retained:
            return
        state.online = online
        if online:
            state.last_telemetry = time.monotonic()
        detail: dict[str, Any] = {"reason": "status_topic"}
        if retained:
            detail["retained"] = True
        self._events.append(Event(utcnow(), vehicle, EventType.ONLINE if online else EventType.OFFLINE, detail,
                                  kind=self._kind_of(vehicle)))

    def _event(self, vehicle: str, payload: bytes) -> None:
        event = decode_event(payload, vehicle, self._kind_of(vehicle))
        self._events.append(event)
        self.counters["events"] += 1

    def _command_ack(self, vehicle: str, payload: bytes) -> None:
        ack = decode_ack(payload)
        fut = self._acks.get(ack.command_id)
        if fut is not None and not fut.done():
            fut.set_result(ack)

    def _reject(self, error: ContractError, topic: str, payload: bytes, vehicle: str | None = None) -> None:
        self.counters["rejected"] += 1
        self.rejected_by_reason[error.reason] = self.rejected_by_reason.get(error.reason, 0) + 1
        if vehicle is None:
            with contextlib.suppress(ContractError):
                vehicle = parse_topic(topic, self.options.prefix).vehicle
        self._rejections.append(Rejection(utcnow(), "mqtt", error.reason, error.detail, vehicle=vehicle,
                                          raw=bytes(payload[:65536]), topic=topic))

    # -- flushing and acknowledgements -------------------------------------------------------------------

    async def _flush(self) -> None:
        offload = self._offload
        if self._emit is None or not (self._samples or self._events or self._rejections or self._to_ack
                                      or self._new_vehicles or self._follow_ups
                                      or (offload is not None and offload.pending_bytes)):
            return
        samples, self._samples = self._samples, []
        events, self._events = self._events, []
        rejections, self._rejections = self._rejections, []
        vehicles, self._new_vehicles = self._new_vehicles, []
        follow_ups, self._follow_ups = self._follow_ups, []
        client = self._client
        if client is not None:
            client.hold(False)  # read on while this hand-over is validated and queued
        # Acknowledged once the pipeline's rows and, with an offload, the offloaded telemetry are durable.
        hand_over = _HandOver(self._to_ack, 1 if offload is None else 2)
        self._to_ack = []
        self._hand_overs.append(hand_over)
        if events or vehicles:
            self._report_carrier = hand_over

        def part_done() -> None:
            hand_over.parts -= 1
            if not hand_over.parts:
                self._release()

        def stored() -> None:
            hand_over.stored = True
            part_done()
            # Earlier hand-overs whose vehicles' registrations and online events are in these rows.
            for follow_up in (*follow_ups, *hand_over.after_stored):
                follow_up()

        def offloaded() -> None:
            # The offload reports the vehicles whose telemetry it accepted first (``_seen``) before it reports
            # their rows durable. Those reports, a registration and an online event, go with a later hand-over:
            # this one is acknowledged only once they are stored too, so a crash in between cannot lose them.
            # They are either still waiting for the next hand-over, or in the newest one that carried reports
            # (the writer stores hand-overs in order: once that one is stored, so are the earlier ones).
            carrier = self._report_carrier
            if self._events or self._new_vehicles:
                self._follow_ups.append(part_done)
                self._wake.set()
                self._acks_done.set()  # stop() waits on this: it flushes the reports itself
            elif carrier is not None and carrier is not hand_over and not carrier.stored:
                carrier.after_stored.append(part_done)
            else:
                part_done()

        try:
            if offload is not None:
                await offload.flush(offloaded)
            await self._emit(samples, events=events, rejections=rejections, vehicles=vehicles, ack=stored)
        except BaseException:  # not queued: its messages are never acknowledged (the broker sends them again)
            hand_over.parts = -1
            # Earlier hand-overs waiting for this one complete with the next one that is stored instead.
            hand_over.stored = True
            self._follow_ups[:0] = [*follow_ups, *hand_over.after_stored]
            self._release()
            raise

    def _release(self) -> None:
        """PUBACK the hand-overs at the head of the queue that are durable, in the order received."""
        client = self._client
        while self._hand_overs and self._hand_overs[0].parts <= 0:
            hand_over = self._hand_overs.popleft()
            if hand_over.parts == 0 and hand_over.mids and client is not None:
                client.ack_many(hand_over.mids)
        self._acks_done.set()

    async def flush(self) -> None:
        await self._flush()

    async def _flush_loop(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.options.flush_interval_s):
                    await self._wake.wait()
            self._wake.clear()
            await self._flush()

    async def _silence_loop(self) -> None:
        timeout = self.options.silence_timeout_s
        while True:
            await asyncio.sleep(min(1.0, timeout / 4))
            now = time.monotonic()
            for vehicle, state in self._vehicles.items():
                if state.online and state.last_telemetry and now - state.last_telemetry > timeout:
                    state.online = False
                    self._events.append(Event(utcnow(), vehicle, EventType.OFFLINE,
                                              {"reason": "telemetry_silence", "timeout_s": timeout},
                                              kind=self._kind_of(vehicle)))

    # -- commands (CommandTarget) ------------------------------------------------------------------------

    def owns(self, vehicle: str) -> bool:
        return vehicle in self._vehicles

    def vehicles(self) -> list[str]:
        return sorted(self._vehicles)

    async def execute(self, vehicle: str, command: Command) -> CommandResult:
        if vehicle not in self._vehicles or self._client is None:
            raise UnknownVehicle(vehicle, command.name, "no such vehicle on MQTT")
        command_type, params = _contract_command(command)
        command_id = f"c-{uuid.uuid4().hex[:16]}"
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._acks[command_id] = fut
        started = time.monotonic()
        self.counters["commands"] += 1
        try:
            await self._client.publish(f"{self.options.prefix}/{vehicle}/cmd",
                                       encode_command(command_id, command_type, params, utcnow()), qos=1)
            try:
                ack = await asyncio.wait_for(fut, self.options.command_timeout_s)
            except TimeoutError:
                self._command_event(vehicle, command_id, command_type, "timeout")
                raise CommandTimeout(vehicle, command.name, f"no ack for {command_id} within "
                                                            f"{self.options.command_timeout_s:g} s") from None
        finally:
            self._acks.pop(command_id, None)
        self._command_event(vehicle, command_id, command_type, ack.result, ack.reason)
        if ack.result == "unsupported":
            raise UnsupportedCommand(vehicle, command.name, ack.reason or "the vehicle does not support it")
        if ack.result != "accepted":
            raise CommandRejected(vehicle, command.name, ack.reason or ack.result, result=ack.result)
        return CommandResult(vehicle, command.name, "accepted", detail=command_id,
                             elapsed_s=time.monotonic() - started, extra={"command_id": command_id})

    def _command_event(self, vehicle: str, command_id: str, command_type: str, result: str,
                       reason: str | None = None) -> None:
        self._events.append(Event(utcnow(), vehicle, EventType.COMMAND,
                                  {"id": command_id, "type": command_type, "result": result, "reason": reason},
                                  kind=self._kind_of(vehicle)))
        self._wake.set()

    def stats(self) -> dict[str, Any]:
        client = self._client.stats if self._client else {}
        counters = dict(self.counters)
        rejected_by_reason = dict(self.rejected_by_reason)
        offloaded: dict[str, Any] = {}
        if self._offload is not None:  # decoded there: its samples and contract rejections count here too
            offloaded = self._offload.stats()
            counters["samples"] += offloaded.get("samples", 0)
            for reason, n in offloaded.get("contract_rejected_by_reason", {}).items():
                counters["rejected"] += n
                rejected_by_reason[reason] = rejected_by_reason.get(reason, 0) + n
        return {**counters, "rejected_by_reason": rejected_by_reason, "client": dict(client),
                "vehicles": len(self._vehicles), "online": sum(v.online for v in self._vehicles.values()),
                **({"offload": offloaded} if offloaded else {})}


def _contract_command(command: Command) -> tuple[str, dict[str, Any]]:
    """A fleet command as the contract's ``type`` and ``params`` (docs/mqtt.md)."""
    if isinstance(command, ReturnHome):
        return "return_to_base", {}
    if isinstance(command, FollowRoute):
        params: dict[str, Any] = {"waypoints": [list(p) for p in command.waypoints], "loop": command.loop}
        if command.speed_mps:
            params["speed_mps"] = command.speed_mps
        return "route", params
    if isinstance(command, Goto):
        params = {"lat": command.lat_deg, "lon": command.lon_deg}
        if command.speed_mps:
            params["speed_mps"] = command.speed_mps
        if command.alt_rel_m is not None:
            params["alt_rel_m"] = command.alt_rel_m
        return "goto", params
    # Hold, ResumePatrol and the drone commands map one to one; their fields are the params.
    return command.name, {f.name: getattr(command, f.name) for f in fields(command)}  # type: ignore[arg-type]
