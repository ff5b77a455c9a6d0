"""One simulated ArduCopter-like multicopter: its own MAVLink system on its own socket.

The drone runs as a single asyncio task: every `tick_s` of wall time it advances the simulation in
substeps up to the simulated present, sending due telemetry after each substep (so time_boot_ms and the
values in a burst still advance in simulated time). Incoming frames are handled in the transport's
callback. No threads, no blocking calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import random

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from . import guided
from .autopilot import Autopilot
from .battery import BatteryPack
from .clock import SimClock
from .commands import CommandHandler
from .faults import FaultConfig, GpsGlitch, LinkDrop, LowBattery
from .geo import GeoPoint, LocalFrame
from .gps import GpsModel
from .link import LinkStats, MavLink
from .mission_protocol import MissionHooks, MissionProtocol
from .mission_store import MissionItem, MissionStore
from .modes import CopterMode, mode_name
from .params import ParamProtocol, ParamStore, default_params
from .streams import HOME_POSITION, MISSION_CURRENT, StreamScheduler
from .telemetry import TelemetryBuilder
from .transport import Endpoint, TcpClientTransport, make_transport, parse_endpoint

M = mavlink2
DEFAULT_HOME = (31.2304, 121.4737)  # lat, lon degrees: Huangpu district, Shanghai
DEFAULT_GROUND_ALT_MSL_M = 4.0
MAX_SUBSTEP_S = 0.1  # simulated seconds per physics step
MIN_SUBSTEP_S = 0.01  # finer steps only when a stream asks for more than 10 Hz (caps streams at 100 Hz)
HOVER_POWER_W = {4: 250.0, 6: 520.0}
DEFAULT_CAPACITY_MAH = {4: 5200.0, 6: 10000.0}
FIRMWARE_BANNER = "ArduCopter V4.5.7 (5c1ab3d9)"
GCS_TYPES = frozenset({M.MAV_TYPE_GCS})


class SimulatedDrone(MissionHooks):
    """A multicopter that speaks MAVLink 2 to `to` ('udpout:host:port', 'udpin:host:port', 'tcp:host:port').

    State is exposed as read-only properties (position, mode, armed, battery, mission) for tests and tools;
    faults are injected with drop_link(), set_packet_loss(), set_latency(), gps_glitch(), set_battery(),
    set_gps_fix(). All durations are simulated seconds unless a name says wall.
    """

    def __init__(
        self,
        sysid: int,
        to: str | Endpoint,
        *,
        compid: int = M.MAV_COMP_ID_AUTOPILOT1,
        home: tuple[float, float] | None = None,
        ground_alt_msl_m: float = DEFAULT_GROUND_ALT_MSL_M,
        yaw_deg: float = 0.0,
        time_factor: float = 1.0,
        clock: SimClock | None = None,
        faults: FaultConfig | None = None,
        seed: int | None = None,
        signing_key: bytes | None = None,
        signing_link_id: int = 0,
        battery_cells: int = 4,
        battery_capacity_mah: float | None = None,
        gps_time_to_fix_s: float = 3.0,
        stream_rate_cap_hz: float | None = None,
        tick_s: float = 0.05,
        endpoint_index: int = 0,
    ) -> None:
        if not 1 <= sysid <= 255:
            raise ValueError("sysid must be 1..255")
        if battery_cells not in HOVER_POWER_W:
            raise ValueError("battery_cells must be 4 or 6")
        self.sysid = sysid
        self.compid = compid
        self.endpoint = parse_endpoint(to) if isinstance(to, str) else to
        self.clock = clock or SimClock(time_factor)
        self.tick_s = tick_s
        self.stream_rate_cap_hz = stream_rate_cap_hz
        rng = random.Random(seed if seed is not None else random.getrandbits(32))
        self._rng_link = random.Random(rng.getrandbits(32))
        self._rng_faults = random.Random(rng.getrandbits(32))
        lat, lon = home or DEFAULT_HOME

        capacity_mah = battery_capacity_mah or DEFAULT_CAPACITY_MAH[battery_cells]
        self.params = ParamStore(default_params(sysid, battery_cells, capacity_mah))
        self.battery = BatteryPack(cells=battery_cells, capacity_mah=capacity_mah)
        self.gps = GpsModel(random.Random(rng.getrandbits(32)), time_to_fix_s=gps_time_to_fix_s)
        self.store = MissionStore()
        self.ap = Autopilot(
            frame=LocalFrame(lat, lon),
            ground_alt_msl_m=ground_alt_msl_m,
            params=self.params,
            battery=self.battery,
            gps=self.gps,
            store=self.store,
            notifier=self,
            hover_power_w=HOVER_POWER_W[battery_cells] * capacity_mah / DEFAULT_CAPACITY_MAH[battery_cells],
            yaw_deg=yaw_deg,
        )
        self._rng_streams = random.Random(rng.getrandbits(32))
        self._rng_telemetry = random.Random(rng.getrandbits(32))
        self.streams = StreamScheduler(self._rng_streams)
        self.telemetry = TelemetryBuilder(self.ap, self.clock, 0.0, sysid, self._rng_telemetry)
        self._transport = make_transport(self.endpoint, endpoint_index)
        self.link = MavLink(sysid, compid, self._transport, self.clock, self._rng_link, signing_key, signing_link_id)
        self.link.on_message = self._on_message
        self._params_proto = ParamProtocol(self.params, self.link.send, self._param_changed)
        self._mission_proto = MissionProtocol(self.store, self.link.send, self.clock, self)
        self._commands = CommandHandler(self)
        self._faults = faults if faults is not None and faults.applies_to(sysid) else None
        self._timeline: list[tuple[float, LinkDrop | GpsGlitch | LowBattery]] = []
        self._sim_s = 0.0
        self._boot_s = 0.0
        self._task: asyncio.Task[None] | None = None
        self._running = False

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the link and start flying the simulation (returns immediately)."""
        if self._task is not None:
            return
        if isinstance(self._transport, TcpClientTransport):
            self._transport.on_reconnect = self.link.reset_parser
        await self._transport.start(self.link.feed)
        self._boot_s = self._sim_s = self.clock.now_s()
        self.ap.now_s = self._sim_s
        self.telemetry = TelemetryBuilder(self.ap, self.clock, self._boot_s, self.sysid, self._rng_telemetry)
        self.streams = StreamScheduler(self._rng_streams, self._boot_s)
        if self._faults is not None:
            self.link.packet_loss_pct = self._faults.packet_loss_pct
            self.link.latency_ms = self._faults.latency_ms
            self._timeline = [(self._boot_s + t, f) for t, f in self._faults.timeline()]
        self._running = True
        self.text(M.MAV_SEVERITY_INFO, FIRMWARE_BANNER)
        self.text(M.MAV_SEVERITY_INFO, "Frame: QUAD/X")
        self._task = asyncio.create_task(self._run(), name=f"drone-{self.sysid}")

    async def stop(self) -> None:
        """Stop simulating and close the socket."""
        self._running = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._transport.close()

    async def __aenter__(self) -> SimulatedDrone:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def running(self) -> bool:
        return self._running

    async def _run(self) -> None:
        while True:
            self.advance()
            await asyncio.sleep(self.tick_s)

    def advance(self) -> None:
        """Bring the simulation up to the clock's present, in substeps of at most MAX_SUBSTEP_S."""
        target_s = self.clock.now_s()
        min_interval_s = self.clock.time_factor / self.stream_rate_cap_hz if self.stream_rate_cap_hz else 0.0
        substep_s = min(MAX_SUBSTEP_S, max(MIN_SUBSTEP_S, min_interval_s, self.streams.fastest_interval_s()))
        while self._sim_s < target_s - 1e-9:
            dt_s = min(substep_s, target_s - self._sim_s)
            self._sim_s += dt_s
            self._apply_scheduled_faults()
            self.ap.step(dt_s, self._sim_s)
            for msg_id in self.streams.due(self._sim_s, min_interval_s):
                self.send_now(msg_id)
        self._params_proto.poll()
        self._mission_proto.poll()
        stats = self.link.stats
        if stats.received:
            self.telemetry.drop_rate_pct = (
                100.0 * (stats.received_dropped + stats.rejected) / (stats.received + stats.rejected)
            )

    # ----------------------------------------------------------------- outgoing helpers (CommandContext)

    def send(self, msg: mavlink2.MAVLink_message) -> None:
        if self._running:
            self.link.send(msg)

    def send_now(self, msg_id: int) -> bool:
        """Build and send one message by id (streams, REQUEST_MESSAGE); False if it cannot be built."""
        msg = self.telemetry.build(msg_id)
        if msg is None:
            return False
        self.send(msg)
        return True

    # ----------------------------------------------------------------- Notifier (autopilot events)

    def text(self, severity: int, text: str) -> None:
        self.send(self.telemetry.statustext(severity, text))

    def item_reached(self, seq: int) -> None:
        self.send(M.MAVLink_mission_item_reached_message(seq))

    def current_changed(self) -> None:
        self.send_now(MISSION_CURRENT)

    def home_changed(self) -> None:
        if self._running:
            self.send_now(HOME_POSITION)

    # ----------------------------------------------------------------- MissionHooks

    def home(self) -> GeoPoint:
        return self.ap.home

    def mission_replaced(self) -> None:
        self.ap.runner.mission_replaced(self.ap.now_s)

    def can_clear(self) -> bool:
        return not (self.ap.mode == CopterMode.AUTO and self.ap.runner.running and self.ap.armed)

    def set_current(self, seq: int) -> bool:
        return self.ap.set_current(seq)

    def guided_item(self, item: MissionItem) -> bool:
        return guided.guided_item(self.ap, item)

    # ----------------------------------------------------------------- incoming

    def _on_message(self, msg: mavlink2.MAVLink_message) -> None:
        if not self._running or msg.get_srcSystem() == self.sysid:
            return
        kind = msg.get_type()
        if kind == "HEARTBEAT":
            if msg.type in GCS_TYPES:
                self.ap.failsafe.gcs_heartbeat(self.ap.now_s)
            return
        target_system = getattr(msg, "target_system", None)
        if target_system is None or target_system not in (0, self.sysid):
            return
        if getattr(msg, "target_component", 0) not in (0, self.compid):
            return
        if kind in ("COMMAND_LONG", "COMMAND_INT"):
            self._commands.handle(msg)
        elif kind == "SET_MODE":
            if msg.base_mode & M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED:
                ok, reason = self.ap.set_mode(msg.custom_mode)
                if not ok and reason:
                    self.text(M.MAV_SEVERITY_WARNING, reason)
        elif kind == "REQUEST_DATA_STREAM":
            self._commands.request_data_stream(msg)
        elif kind == "SET_POSITION_TARGET_GLOBAL_INT":
            guided.position_target_global(self.ap, msg)
        elif kind == "SET_POSITION_TARGET_LOCAL_NED":
            guided.position_target_local(self.ap, msg)
        elif not self._params_proto.handle(msg):
            self._mission_proto.handle(msg)

    def _param_changed(self, name: str, value: float) -> None:
        self.ap.params_changed()

    # ----------------------------------------------------------------- faults

    def _apply_scheduled_faults(self) -> None:
        while self._timeline and self._timeline[0][0] <= self._sim_s:
            _, fault = self._timeline.pop(0)
            if isinstance(fault, LinkDrop):
                self.drop_link(fault.duration_s)
            elif isinstance(fault, GpsGlitch):
                self.gps_glitch(fault.duration_s, fault.offset_m, fault.bearing_deg)
            else:
                self.set_battery(fault.remaining_pct)

    def drop_link(self, seconds: float) -> None:
        """Silence the radio in both directions for `seconds` simulated seconds."""
        self.link.drop_for(seconds)

    def set_packet_loss(self, pct: float) -> None:
        """Lose each frame (each direction independently) with probability pct/100."""
        self.link.packet_loss_pct = min(100.0, max(0.0, pct))

    def set_latency(self, ms: float) -> None:
        """Add a one-way delay of `ms` wall milliseconds to each direction."""
        self.link.latency_ms = max(0.0, ms)

    def gps_glitch(self, seconds: float = 5.0, offset_m: float = 300.0, bearing_deg: float | None = None) -> None:
        """Make the reported position jump offset_m metres away for `seconds` simulated seconds."""
        if bearing_deg is None:
            bearing_deg = self._rng_faults.uniform(0.0, 360.0)
        self.gps.start_glitch(self.ap.now_s, seconds, offset_m, bearing_deg)
        self.text(M.MAV_SEVERITY_CRITICAL, "GPS Glitch")

    def set_battery(self, pct: float) -> None:
        """Set the remaining charge (percent); below BATT_LOW_MAH this triggers the battery failsafe."""
        self.battery.set_remaining_pct(pct)
        self.ap.failsafe.battery_reset()

    def low_battery(self, pct: float = 15.0) -> None:
        """Battery drops to `pct` percent: on an armed, flying drone this triggers failsafe RTL."""
        self.set_battery(pct)

    def set_gps_fix(self, fix_type: int | None) -> None:
        """Force the GPS fix type (0/1 none, 2 2D, 3 3D); None returns to the normal receiver model."""
        self.gps.forced_fix_type = fix_type

    # ----------------------------------------------------------------- state for tests and tools

    @property
    def position(self) -> GeoPoint:
        """True position (no GPS error): degrees and metres MSL."""
        v = self.ap.vehicle
        lat, lon = self.ap.frame.to_global(v.north_m, v.east_m)
        return GeoPoint(lat, lon, self.ap.ground_alt_msl_m + v.up_m)

    @property
    def lat_deg(self) -> float:
        return self.position.lat_deg

    @property
    def lon_deg(self) -> float:
        return self.position.lon_deg

    @property
    def alt_msl_m(self) -> float:
        return self.position.alt_msl_m

    @property
    def relative_alt_m(self) -> float:
        """Height above home, metres."""
        return self.position.alt_msl_m - self.ap.home.alt_msl_m

    @property
    def ground_speed_mps(self) -> float:
        return self.ap.vehicle.ground_speed_mps

    @property
    def heading_deg(self) -> float:
        return self.ap.vehicle.heading_deg

    @property
    def mode(self) -> int:
        """ArduCopter custom_mode number."""
        return int(self.ap.mode)

    @property
    def mode_name(self) -> str:
        return mode_name(self.ap.mode)

    @property
    def armed(self) -> bool:
        return self.ap.armed

    @property
    def landed(self) -> bool:
        return self.ap.land_complete

    @property
    def battery_pct(self) -> float:
        return self.battery.remaining_pct

    @property
    def battery_voltage_v(self) -> float:
        return self.battery.voltage_v

    @property
    def home_position(self) -> GeoPoint:
        return self.ap.home

    @property
    def mission_items(self) -> list[MissionItem]:
        """Stored mission items after home (seq 1..n)."""
        return self.store.items()

    @property
    def mission_seq(self) -> int:
        """Current mission item (0 before a mission has started)."""
        return self.ap.runner.current_seq

    @property
    def gps_fix_type(self) -> int:
        return self.gps.fix_type

    @property
    def link_stats(self) -> LinkStats:
        return self.link.stats

    @property
    def link_down(self) -> bool:
        return self.link.is_down

    @property
    def local_address(self) -> tuple[str, int] | None:
        """The drone's own socket address (useful to tell drones apart on a shared GCS port)."""
        return self._transport.local_address

    @property
    def sim_time_s(self) -> float:
        """Simulated seconds since start()."""
        return self._sim_s - self._boot_s
