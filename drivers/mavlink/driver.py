"""The MAVLink driver: many drones on many links, telemetry in, commands and missions out, relay to GCSs.

Per frame (the hot path): split and CRC-check (``framing``), drop what signing policy refuses, drop the copy
of a frame already seen on another link (a drone on two radios is one vehicle, counted once), count sequence
gaps, decode (``fastdecode``), update the drone's state (``normalize``) and, on a position update, queue one
``Sample``. A UDP link hands over each drained burst of datagrams at once, and the clock is read once per burst
(``_BURST_STEPS`` keeps receive times distinct). Queued samples, events and rejections are handed to ``emit``
by one flusher task, so socket callbacks never wait; when ``emit`` pushes back (the writer is full) and the
queue passes its bound, the driver stops reading its links until it drains.

Drones are identified by system id. Unknown ids are registered as ``drone-<sysid>`` on their first autopilot
HEARTBEAT (unless ``auto_register`` is off); ground stations and radios are never vehicles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mavlink

from drivers.base import Driver, Emit, cancel_tasks
from drivers.commands import (
    Arm,
    Command,
    CommandResult,
    Disarm,
    DownloadMission,
    FollowRoute,
    Goto,
    Hold,
    Land,
    MissionItem,
    ResumePatrol,
    ReturnHome,
    SetMode,
    StartMission,
    Takeoff,
    UnknownVehicle,
    UnsupportedCommand,
    UploadMission,
)
from drivers.mavlink.commander import Commander
from drivers.mavlink.endpoints import MAX_BURST, Endpoint, Peer, open_endpoint
from drivers.mavlink.fastdecode import Decoder, decoder_for
from drivers.mavlink.framing import Frame, FrameSplitter
from drivers.mavlink.normalize import MSG, STATE_UPDATERS, DroneState, is_vehicle_heartbeat
from drivers.mavlink.signing import SigningPolicy, mavlink_timestamp_now
from telemetry.model import Event, EventType, Rejection, Sample, VehicleInfo, VehicleKind, utcnow

__all__ = ["DroneConfig", "MavlinkDriver", "MavlinkOptions"]

log = logging.getLogger(__name__)
_M = mavlink

_HEARTBEAT = MSG["HEARTBEAT"]
_GLOBAL_POSITION_INT = MSG["GLOBAL_POSITION_INT"]
_GPS_RAW_INT = MSG["GPS_RAW_INT"]
_STATUSTEXT = MSG["STATUSTEXT"]
_RADIO_STATUS = MSG["RADIO_STATUS"]
_HOME_POSITION = MSG["HOME_POSITION"]
_COMMANDER_MSGS = {
    _M.MAVLINK_MSG_ID_COMMAND_ACK, _M.MAVLINK_MSG_ID_MISSION_REQUEST, _M.MAVLINK_MSG_ID_MISSION_REQUEST_INT,
    _M.MAVLINK_MSG_ID_MISSION_ACK, _M.MAVLINK_MSG_ID_MISSION_COUNT, _M.MAVLINK_MSG_ID_MISSION_ITEM_INT,
    _M.MAVLINK_MSG_ID_MISSION_ITEM,
}
#: REQUEST_DATA_STREAM stream for each message, for autopilots that ignore SET_MESSAGE_INTERVAL.
_DATA_STREAMS = {
    "GLOBAL_POSITION_INT": _M.MAV_DATA_STREAM_POSITION, "ATTITUDE": _M.MAV_DATA_STREAM_EXTRA1,
    "VFR_HUD": _M.MAV_DATA_STREAM_EXTRA2, "SYS_STATUS": _M.MAV_DATA_STREAM_EXTENDED_STATUS,
    "GPS_RAW_INT": _M.MAV_DATA_STREAM_EXTENDED_STATUS, "BATTERY_STATUS": _M.MAV_DATA_STREAM_EXTRA3,
}
_REJECTIONS_PER_S = 20
#: Frames remembered per drone to recognise the copy of a frame that arrives on a second link: 64 to 128.
_DUPLICATE_WINDOW = 64
#: Receive times within one burst of datagrams: the clock is read once per burst (at T) and datagram i is stamped
#: T + i µs, so every datagram keeps a distinct receive time, in arrival order (validation's duplicate check is
#: per vehicle and time). Reading a datagram takes well over a microsecond, so stamps never pass the next burst's T.
_BURST_STEPS = tuple(timedelta(microseconds=i) for i in range(MAX_BURST))


class _Decoders(dict[int, "Decoder | None"]):
    """msgid -> fast decoder (None for an id the dialect lacks), looked up with one subscript per frame."""

    def __missing__(self, msgid: int) -> Decoder | None:
        decoder = self[msgid] = decoder_for(msgid)
        return decoder


_DECODERS = _Decoders()


@dataclass(frozen=True, slots=True)
class DroneConfig:
    vehicle: str
    name: str | None = None
    signing_key: bytes | None = None
    require_signing: bool = False


@dataclass(slots=True)
class MavlinkOptions:
    """Driver settings (the gateway maps its configuration onto these). Times in seconds."""

    endpoints: list[str] = field(default_factory=lambda: ["udpin:0.0.0.0:14550"])
    forward: list[str] = field(default_factory=list)
    drones: dict[int, DroneConfig] = field(default_factory=dict)
    auto_register: bool = True
    heartbeat_timeout_s: float = 5.0
    gcs_sysid: int = 255
    gcs_compid: int = 190
    message_rates_hz: dict[str, float] = field(default_factory=dict)
    command_timeout_s: float = 3.0
    command_retries: int = 3
    max_pending_samples: int = 50_000
    flush_interval_s: float = 0.02


class _Drone:
    """Everything the driver keeps per drone: state, link, health, commander, encoder."""

    __slots__ = ("commander", "encoder", "last_heartbeat", "lost", "next_seq", "older", "online", "peer",
                 "received", "recent", "state", "window_lost", "window_start")

    def __init__(self, state: DroneState, commander: Commander, encoder: Any) -> None:
        self.state = state
        self.commander = commander
        self.encoder = encoder
        self.peer: Peer | None = None
        self.online = False
        self.last_heartbeat = 0.0
        self.next_seq: dict[int, int] = {}  # per component: the sequence number expected next
        self.received = 0
        self.lost = 0
        self.window_start = 0  # ``received`` when the current link-quality window began
        self.window_lost = 0
        # Identities of the latest frames, in two generations: ``recent`` fills up, then becomes ``older``.
        self.recent: set[bytes] = set()
        self.older: set[bytes] = set()


class _LinkCounters:
    __slots__ = ("duplicates", "signing_dropped", "splitters", "unregistered")

    def __init__(self) -> None:
        self.splitters: list[FrameSplitter] = []
        self.duplicates = 0
        self.signing_dropped = 0
        self.unregistered = 0


class MavlinkDriver(Driver):
    name = "mavlink"

    def __init__(self, options: MavlinkOptions | None = None) -> None:
        self.options = options or MavlinkOptions()
        self._emit: Emit | None = None
        self._endpoints: list[Endpoint] = []
        self._forwards: list[Endpoint] = []
        self._drones: dict[int, _Drone] = {}
        self._by_vehicle: dict[str, _Drone] = {}
        self._samples: list[Sample] = []
        self._events: list[Event] = []
        self._rejections: list[Rejection] = []
        self._vehicles: list[VehicleInfo] = []
        self._wake = asyncio.Event()
        self._stopping = False
        self._flush_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._counters: dict[str, _LinkCounters] = {}
        self._splitters: dict[Any, tuple[FrameSplitter, str]] = {}
        self._gcs_splitters: dict[Any, FrameSplitter] = {}
        self._paused = False
        self._reject_budget: dict[str, tuple[float, int]] = {}
        self._signing = SigningPolicy(
            keys={sysid: d.signing_key for sysid, d in self.options.drones.items() if d.signing_key},
            required={sysid for sysid, d in self.options.drones.items() if d.require_signing},
        )
        self._check_signing = bool(self._signing.keys or self._signing.required)
        self.frames_total = 0
        self.samples_total = 0

    # -- lifecycle ---------------------------------------------------------------------------------------

    async def start(self, emit: Emit) -> None:
        self._emit = emit
        self._stopping = False
        self._flush_task = asyncio.create_task(self._flush_loop(), name="mavlink-flush")
        self._tasks.append(asyncio.create_task(self._health_loop(), name="mavlink-health"))
        try:
            for url in self.options.endpoints:
                self._counters[url] = _LinkCounters()
                self._endpoints.append(await open_endpoint(url, self._on_vehicle_data, self._on_vehicle_chunks))
            for url in self.options.forward:
                self._forwards.append(await open_endpoint(url, self._on_gcs_data))
        except Exception:
            await self.stop()
            raise
        log.info("MAVLink listening on %s%s", ", ".join(self.options.endpoints),
                 f"; relaying to {', '.join(self.options.forward)}" if self.options.forward else "")

    async def stop(self) -> None:
        for endpoint in [*self._endpoints, *self._forwards]:
            await endpoint.stop()
        self._endpoints.clear()
        self._forwards.clear()
        await cancel_tasks(self._tasks)
        await self._end_flush_loop()
        await self._flush()

    async def _end_flush_loop(self) -> None:
        """Let the flush loop finish its current emit instead of cancelling it: a cancel while the writer
        pushes back would drop the rows it had taken (and the validator would already have seen them)."""
        self._stopping = True
        self._wake.set()
        if self._flush_task is not None:
            await self._flush_task
            self._flush_task = None

    def local_address(self, index: int = 0) -> Any:
        """The bound address of endpoint ``index`` (useful with port 0)."""
        return self._endpoints[index].local_address

    # -- inbound -----------------------------------------------------------------------------------------

    def _splitter_for(self, peer: Peer) -> tuple[FrameSplitter, str]:
        """One splitter per stream (TCP connection, serial port) or per datagram endpoint, and the link name."""
        key: Any = peer if peer.stream else peer.endpoint
        entry = self._splitters.get(key)
        if entry is None:
            link = str(peer.endpoint.url)
            entry = self._splitters[key] = (FrameSplitter(), link)
            self._counter(link).splitters.append(entry[0])
        return entry

    def _on_vehicle_data(self, data: bytes, peer: Peer) -> None:
        """A piece of a stream (TCP connection, serial port)."""
        self._on_vehicle_chunks([data], [peer])

    def _on_vehicle_chunks(self, chunks: list[bytes], peers: list[Peer]) -> None:
        """What one link received in one go (a burst of UDP datagrams, a piece of a stream), in arrival order."""
        if len(chunks) > MAX_BURST:  # more than an endpoint hands over at once (one receive time per burst)
            for at in range(0, len(chunks), MAX_BURST):
                self._on_vehicle_chunks(chunks[at : at + MAX_BURST], peers[at : at + MAX_BURST])
            return
        first = peers[0]
        splitter, link = self._splitter_for(first)  # datagrams of one endpoint share a splitter
        stats = splitter.stats
        split = splitter.feed if first.stream else splitter.feed_datagram
        forwards = self._forwards
        process = self.process
        received_at = utcnow()
        for data, peer, step in zip(chunks, peers, _BURST_STEPS, strict=False):  # len(chunks) <= MAX_BURST
            junk_before = stats.junk_bytes
            frames = split(data)
            if stats.junk_bytes != junk_before:
                self._reject_raw(link, data, stats)
            if not frames:
                continue
            now = received_at + step
            try:
                for frame in frames:
                    if forwards:
                        raw = frame.raw
                        for out in forwards:
                            out.broadcast(raw)
                    process(frame, now, peer, link)
            except Exception:  # a bug on one datagram must not cost the rest of the burst
                log.exception("MAVLink frame handling failed on %s", link)

    def process(self, frame: Frame, now: datetime, peer: Peer | None = None, link: str = "replay") -> None:
        """Handle one valid frame received at ``now`` (UTC) on ``link``; also the entry point of tlog replay."""
        self.frames_total += 1
        sysid = frame.sysid
        if self._check_signing:
            reason = self._signing.check(frame)
            if reason is not None:
                self._counter(link).signing_dropped += 1
                self._reject(link, reason, frame.raw, f"sysid={sysid} msgid={frame.msgid}")
                return
        drone = self._drones.get(sysid)
        msgid = frame.msgid
        if drone is None:
            if msgid != _HEARTBEAT:
                self._counter(link).unregistered += 1
                return
            drone = self._register(frame, now, link)
            if drone is None:
                self._counter(link).unregistered += 1
                return
        # The same frame on a second link: keep one copy. Its bytes up to the CRC identify it (header with
        # sequence number, payload, CRC); a signature block may differ per link and is left out.
        raw = frame.raw
        ident = raw[:-13] if raw[0] == 0xFD and raw[2] else raw  # MAVLink 2 incompat flags: 1 = signed
        recent = drone.recent
        if ident in recent or ident in drone.older:
            self._counter(link).duplicates += 1
            return
        recent.add(ident)
        if len(recent) >= _DUPLICATE_WINDOW:
            drone.older, drone.recent = recent, set()
        if peer is not None:
            drone.peer = peer
        # Sequence gaps (per component) give packet loss; a step back of up to 128 is a reordering, not a loss.
        seq = frame.seq
        compid = frame.compid
        next_seq = drone.next_seq
        expected = next_seq.get(compid, seq)
        if seq != expected:
            gap = (seq - expected) & 0xFF
            if gap < 128:
                drone.lost += gap
                drone.window_lost += gap
        next_seq[compid] = (seq + 1) & 0xFF
        drone.received += 1
        decoder = _DECODERS[msgid]
        if decoder is None:
            return
        msg = decoder(frame.payload)
        state = drone.state
        if msgid == _GLOBAL_POSITION_INT:
            self._samples.append(state.global_position_int(msg, now))
            self.samples_total += 1
            if len(self._samples) >= 2000:
                self._wake.set()
            return
        updater = STATE_UPDATERS.get(msgid)
        if updater is not None:
            updater(state, msg)
            if msgid == _HOME_POSITION:
                drone.commander.home = state.home
            return
        if msgid == _HEARTBEAT:
            self._heartbeat(drone, msg, now)
        elif msgid == _GPS_RAW_INT:
            sample = state.gps_raw_int(msg, now)
            if sample is not None:
                self._samples.append(sample)
                self.samples_total += 1
        elif msgid in _COMMANDER_MSGS:
            drone.commander.on_message(msgid, msg)
        elif msgid == _STATUSTEXT:
            self._events.append(Event(now, state.vehicle, EventType.STATUSTEXT,
                                      {"severity": msg.severity, "text": msg.text}, kind=VehicleKind.DRONE))
            self._wake.set()
        elif msgid == _RADIO_STATUS:
            state.extra_static.update(radio_rssi=msg.rssi, radio_remrssi=msg.remrssi)

    def _counter(self, link: str) -> _LinkCounters:
        counters = self._counters.get(link)
        if counters is None:
            counters = self._counters[link] = _LinkCounters()
        return counters

    def _register(self, frame: Frame, now: datetime, link: str) -> _Drone | None:
        decoder = decoder_for(_HEARTBEAT)
        assert decoder is not None
        hb = decoder(frame.payload)
        if not is_vehicle_heartbeat(hb) or frame.compid not in (1, _M.MAV_COMP_ID_AUTOPILOT1):
            return None
        configured = self.options.drones.get(frame.sysid)
        if configured is None and not self.options.auto_register:
            self._reject(link, "unregistered_vehicle", frame.raw, f"sysid={frame.sysid} is not configured")
            return None
        vehicle = configured.vehicle if configured else f"drone-{frame.sysid}"
        state = DroneState(vehicle, frame.sysid, f"mavlink:{link}")
        encoder = mavlink.MAVLink(None, srcSystem=self.options.gcs_sysid, srcComponent=self.options.gcs_compid)
        if configured and configured.signing_key:
            encoder.signing.secret_key = configured.signing_key
            encoder.signing.sign_outgoing = True
            encoder.signing.link_id = 0
            encoder.signing.timestamp = mavlink_timestamp_now()
        drone = _Drone(state, None, encoder)  # type: ignore[arg-type]
        drone.commander = Commander(vehicle, frame.sysid, lambda msg, d=drone: self._send(d, msg),
                                    timeout_s=self.options.command_timeout_s, retries=self.options.command_retries,
                                    target_compid=frame.compid)
        self._drones[frame.sysid] = drone
        self._by_vehicle[vehicle] = drone
        self._vehicles.append(VehicleInfo(vehicle, VehicleKind.DRONE, "mavlink",
                                          name=configured.name if configured else None, mavlink_sysid=frame.sysid))
        log.info("new drone %s (system %d) on %s", vehicle, frame.sysid, link)
        return drone

    def _heartbeat(self, drone: _Drone, msg: Any, now: datetime) -> None:
        state = drone.state
        drone.commander.autopilot, drone.commander.mav_type = msg.autopilot, msg.type
        drone.last_heartbeat = time.monotonic()
        changes = state.heartbeat(msg, now)
        if not drone.online:
            drone.online = True
            self._events.append(Event(now, state.vehicle, EventType.ONLINE,
                                      {"link": state.source, "mode": state.mode}, kind=VehicleKind.DRONE))
            if drone.peer is not None:
                self._request_rates(drone)
        for kind, detail in changes:
            self._events.append(Event(now, state.vehicle, kind, detail, kind=VehicleKind.DRONE))
        if changes or len(self._events) == 1:
            self._wake.set()

    def _reject_raw(self, link: str, data: bytes, stats: Any) -> None:
        reason = "bad_crc" if stats.bad_crc else ("unknown_message_id" if stats.unknown_id else "junk_bytes")
        self._reject(link, reason, data[:1024], f"splitter counters: bad_crc={stats.bad_crc} "
                                                 f"unknown_id={stats.unknown_id} junk_bytes={stats.junk_bytes}")

    def _reject(self, link: str, reason: str, raw: bytes, detail: str) -> None:
        """Keep bad input aside (rate-limited per link so a noisy radio cannot flood the table)."""
        now = time.monotonic()
        window, used = self._reject_budget.get(link, (now, 0))
        if now - window >= 1.0:
            window, used = now, 0
        if used < _REJECTIONS_PER_S:
            self._rejections.append(Rejection(utcnow(), f"mavlink:{link}", reason, detail, raw=bytes(raw)))
            self._wake.set()
        self._reject_budget[link] = (window, used + 1)

    # -- GCS relay ---------------------------------------------------------------------------------------

    def _on_gcs_data(self, data: bytes, peer: Peer) -> None:
        key: Any = peer if peer.stream else peer.endpoint
        splitter = self._gcs_splitters.get(key)
        if splitter is None:
            splitter = self._gcs_splitters[key] = FrameSplitter()
        for frame in splitter.feed(data, final=not peer.stream):
            decoder = decoder_for(frame.msgid)
            target = getattr(decoder(frame.payload), "target_system", 0) if decoder else 0
            if target:
                drone = self._drones.get(target)
                if drone is not None and drone.peer is not None:
                    drone.peer.send(frame.raw)
            else:
                for drone in self._drones.values():
                    if drone.peer is not None:
                        drone.peer.send(frame.raw)

    # -- outbound ----------------------------------------------------------------------------------------

    def _send(self, drone: _Drone, msg: Any) -> None:
        if drone.peer is None or not drone.peer.alive:
            raise UnknownVehicle(drone.state.vehicle, msg.get_type(), "no live link to this drone")
        encoder = drone.encoder
        data = msg.pack(encoder)
        encoder.seq = (encoder.seq + 1) % 256  # pack() alone does not advance the sequence number
        drone.peer.send(data)

    def _request_rates(self, drone: _Drone) -> None:
        """Ask for the rates we need: SET_MESSAGE_INTERVAL, plus REQUEST_DATA_STREAM for older autopilots."""
        sysid, compid = drone.state.sysid, drone.commander.target_compid
        streams: dict[int, float] = {}
        for name, hz in self.options.message_rates_hz.items():
            msgid = getattr(_M, f"MAVLINK_MSG_ID_{name}", None)
            if msgid is None or hz <= 0:
                continue
            self._send(drone, _M.MAVLink_command_long_message(
                sysid, compid, _M.MAV_CMD_SET_MESSAGE_INTERVAL, 0, msgid, 1e6 / hz, 0, 0, 0, 0, 0))
            stream = _DATA_STREAMS.get(name)
            if stream is not None:
                streams[stream] = max(streams.get(stream, 0.0), hz)
        for stream, hz in streams.items():
            self._send(drone, _M.MAVLink_request_data_stream_message(sysid, compid, stream, max(1, round(hz)), 1))

    # -- commands (CommandTarget) ------------------------------------------------------------------------

    def owns(self, vehicle: str) -> bool:
        return vehicle in self._by_vehicle

    def vehicles(self) -> list[str]:
        return sorted(self._by_vehicle)

    async def execute(self, vehicle: str, command: Command) -> CommandResult:
        drone = self._by_vehicle.get(vehicle)
        if drone is None:
            raise UnknownVehicle(vehicle, command.name, "no such drone on the MAVLink links")
        c = drone.commander
        started = time.monotonic()
        value: Any = None
        match command:
            case Arm():
                await c.command_long(_M.MAV_CMD_COMPONENT_ARM_DISARM, 1, name="arm")
            case Disarm(force=force):
                await c.command_long(_M.MAV_CMD_COMPONENT_ARM_DISARM, 0, 21196 if force else 0, name="disarm")
            case Takeoff(alt_rel_m=alt):
                await c.command_long(_M.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, alt, name="takeoff")
            case Land():
                await c.command_long(_M.MAV_CMD_NAV_LAND, name="land")
            case ReturnHome():
                await c.command_long(_M.MAV_CMD_NAV_RETURN_TO_LAUNCH, name="rtl")
            case StartMission():
                await c.command_long(_M.MAV_CMD_MISSION_START, 0, 0, name="mission_start")
            case Goto(lat_deg=lat, lon_deg=lon, alt_rel_m=alt, speed_mps=speed):
                alt = alt if alt is not None else (drone.state.alt_rel_m or 10.0)
                await c.command_int(_M.MAV_CMD_DO_REPOSITION,
                                    params=(speed if speed else -1.0, _M.MAV_DO_REPOSITION_FLAGS_CHANGE_MODE, 0,
                                            float("nan")),
                                    x=round(lat * 1e7), y=round(lon * 1e7), z=alt, name="goto")
            case SetMode(mode=mode):
                await c.set_mode(mode)
            case Hold():
                await c.set_mode("LOITER")
            case ResumePatrol():
                await c.set_mode("MISSION" if c.autopilot == _M.MAV_AUTOPILOT_PX4 else "AUTO")
            case UploadMission(items=items):
                value = await c.upload_mission(list(items))
            case DownloadMission():
                value = await c.download_mission()
            case FollowRoute(waypoints=waypoints, speed_mps=speed):
                alt = drone.state.alt_rel_m or 20.0
                items = [MissionItem(_M.MAV_CMD_NAV_WAYPOINT, lat, lon, alt) for lat, lon in waypoints]
                if speed:
                    items.insert(0, MissionItem(_M.MAV_CMD_DO_CHANGE_SPEED, param1=1, param2=speed))
                value = await c.upload_mission(items)
                await c.set_mode("AUTO")
                await c.command_long(_M.MAV_CMD_MISSION_START, 0, 0, name="mission_start")
            case _:
                raise UnsupportedCommand(vehicle, command.name, "the MAVLink driver has no translation for it")
        return CommandResult(vehicle, command.name, "accepted", value=value, elapsed_s=time.monotonic() - started)

    # -- background tasks --------------------------------------------------------------------------------

    async def _flush(self) -> None:
        if not (self._samples or self._events or self._rejections or self._vehicles) or self._emit is None:
            return
        samples, self._samples = self._samples, []
        events, self._events = self._events, []
        rejections, self._rejections = self._rejections, []
        vehicles, self._vehicles = self._vehicles, []
        await self._emit(samples, events=events, rejections=rejections, vehicles=vehicles)

    async def _flush_loop(self) -> None:
        interval = self.options.flush_interval_s
        while not self._stopping:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for swallows a cancel that arrives as the wake-up
            # completes, and then stop() waited for this loop forever.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await self._wake.wait()
            self._wake.clear()
            if len(self._samples) > self.options.max_pending_samples and not self._paused:
                self._set_paused(True)
            await self._flush()
            if self._paused:
                self._set_paused(False)

    def _set_paused(self, paused: bool) -> None:
        """Stop reading the links while ``emit`` pushes back (TCP then pushes back to the drones)."""
        self._paused = paused
        for endpoint in self._endpoints:
            endpoint.set_paused(paused)

    async def _health_loop(self) -> None:
        timeout = self.options.heartbeat_timeout_s
        window_started = time.monotonic()
        while True:
            await asyncio.sleep(min(0.25, timeout / 4))
            now_mono = time.monotonic()
            now = utcnow()
            for drone in self._drones.values():
                if drone.online and now_mono - drone.last_heartbeat > timeout:
                    drone.online = False
                    self._events.append(Event(now, drone.state.vehicle, EventType.OFFLINE,
                                              {"reason": "heartbeat_timeout", "timeout_s": timeout},
                                              kind=VehicleKind.DRONE))
                    self._wake.set()
            if now_mono - window_started >= 5.0:
                window_started = now_mono
                for drone in self._drones.values():
                    received = drone.received - drone.window_start
                    total = received + drone.window_lost
                    if total:
                        drone.state.link_quality_pct = round(100.0 * received / total, 1)
                    drone.window_start, drone.window_lost = drone.received, 0

    # -- counters ----------------------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        links: dict[str, Any] = {}
        for url, counters in self._counters.items():
            agg = {"frames": 0, "bytes": 0, "bad_crc": 0, "unknown_id": 0, "junk_bytes": 0}
            for sp in counters.splitters:
                agg["frames"] += sp.stats.frames
                agg["bytes"] += sp.stats.bytes
                agg["bad_crc"] += sp.stats.bad_crc
                agg["unknown_id"] += sp.stats.unknown_id
                agg["junk_bytes"] += sp.stats.junk_bytes
            agg.update(duplicates=counters.duplicates, signing_dropped=counters.signing_dropped,
                       unregistered=counters.unregistered)
            links[url] = agg
        drones = {
            d.state.vehicle: {"sysid": sysid, "online": d.online, "received": d.received, "lost": d.lost,
                              "mode": d.state.mode, "armed": d.state.armed,
                              "link_quality_pct": d.state.link_quality_pct}
            for sysid, d in self._drones.items()
        }
        return {"frames": self.frames_total, "samples": self.samples_total, "links": links, "drones": drones,
                "paused": self._paused}

