"""Simulated drone fleet, tested from a ground station's point of view over real loopback sockets.

The ground-station side is plain pymavlink (a MAVLink 2 parser on an asyncio UDP/TCP socket), never the
patrolgate driver, so these tests pin down the simulator's wire behaviour on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from simulators.drone import DroneFleet, FaultConfig, SimulatedDrone, run_drone_fleet
from simulators.drone.geo import distance_m, offset_latlon

M = mavlink2
GCS_SYSID, GCS_COMPID = 255, 190
SIGNING_EPOCH_UNIX_S = 1_420_070_400
ARMED_FLAG = M.MAV_MODE_FLAG_SAFETY_ARMED
GUIDED, AUTO, RTL = 4, 3, 6


# --------------------------------------------------------------------------- ground-station harness


@dataclass
class Received:
    wall_s: float
    msg: Any


class Gcs(asyncio.Protocol, asyncio.DatagramProtocol):
    """A minimal asyncio ground station: parses everything it receives into `log`, answers by sysid."""

    def __init__(self, signing_key: bytes | None = None) -> None:
        self.mav = M.MAVLink(None, GCS_SYSID, GCS_COMPID)
        self.mav.robust_parsing = True
        if signing_key is not None:
            self.mav.signing.secret_key = signing_key
            self.mav.signing.sign_outgoing = True
            self.mav.signing.timestamp = int((time.time() - SIGNING_EPOCH_UNIX_S) * 100_000)
        self.log: list[Received] = []
        self.bad_frames = 0
        self.peers: dict[int, Any] = {}
        self.cursor = 0
        self._wakeup: asyncio.Event = asyncio.Event()
        self._udp: asyncio.DatagramTransport | None = None

    async def open_udp(self) -> int:
        loop = asyncio.get_running_loop()
        self._udp, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=("127.0.0.1", 0))
        return self._udp.get_extra_info("sockname")[1]

    def close(self) -> None:
        if self._udp is not None:
            self._udp.close()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.feed(data, addr)

    def feed(self, data: bytes, peer: Any) -> None:
        for msg in self.mav.parse_buffer(data) or []:
            if msg.get_type() == "BAD_DATA":
                self.bad_frames += 1
                continue
            self.peers[msg.get_srcSystem()] = peer
            self.log.append(Received(time.monotonic(), msg))
        self._wakeup.set()

    def send(self, msg: Any, sysid: int = 1) -> None:
        data = msg.pack(self.mav)
        self.mav.seq = (self.mav.seq + 1) % 256
        peer = self.peers[sysid]
        if isinstance(peer, asyncio.Transport):
            peer.write(data)
        else:
            assert self._udp is not None
            self._udp.sendto(data, peer)

    def mark(self) -> int:
        return len(self.log)

    def of(self, kind: str, since: int = 0, sysid: int | None = None) -> list[Any]:
        return [
            r.msg
            for r in self.log[since:]
            if r.msg.get_type() == kind and (sysid is None or r.msg.get_srcSystem() == sysid)
        ]

    async def wait_for(
        self,
        kinds: str | Iterable[str],
        pred: Callable[[Any], bool] = lambda _m: True,
        *,
        since: int | None = None,
        timeout: float = 5.0,
        sysid: int | None = None,
    ) -> Any:
        """First message of a kind matching pred, from index `since` on (default: from now)."""
        wanted = {kinds} if isinstance(kinds, str) else set(kinds)
        index = self.mark() if since is None else since
        deadline = time.monotonic() + timeout
        while True:
            while index < len(self.log):
                msg = self.log[index].msg
                index += 1
                if msg.get_type() in wanted and (sysid is None or msg.get_srcSystem() == sysid) and pred(msg):
                    self.cursor = index
                    return msg
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {wanted} within {timeout} s")
            self._wakeup.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    async def command(self, command: int, *params: float, sysid: int = 1, timeout: float = 3.0) -> int:
        """COMMAND_LONG and wait for its COMMAND_ACK; returns MAV_RESULT."""
        p = [*params, *[0.0] * (7 - len(params))]
        since = self.mark()
        self.send(M.MAVLink_command_long_message(sysid, 1, command, 0, *p), sysid)
        ack = await self.wait_for(
            "COMMAND_ACK", lambda a: a.command == command, since=since, timeout=timeout, sysid=sysid
        )
        return ack.result


@contextlib.asynccontextmanager
async def flying_setup(**drone_kwargs: Any) -> AsyncIterator[tuple[Gcs, SimulatedDrone]]:
    """A GCS on a free UDP port and one drone pointing udpout at it, waited until it has a 3D fix."""
    gcs = Gcs(drone_kwargs.pop("gcs_key", None))
    port = await gcs.open_udp()
    drone_kwargs.setdefault("seed", 7)
    drone_kwargs.setdefault("gps_time_to_fix_s", 0.5)
    drone = SimulatedDrone(1, f"udpout:127.0.0.1:{port}", **drone_kwargs)
    await drone.start()
    try:
        await gcs.wait_for("GPS_RAW_INT", lambda m: m.fix_type == 3, timeout=5)
        yield gcs, drone
    finally:
        await drone.stop()
        gcs.close()


async def guided_takeoff(gcs: Gcs, alt_m: float) -> None:
    assert await gcs.command(M.MAV_CMD_DO_SET_MODE, M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, GUIDED) == 0
    assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1) == M.MAV_RESULT_ACCEPTED
    assert await gcs.command(M.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, alt_m) == M.MAV_RESULT_ACCEPTED


def mission_item(seq: int, command: int, lat: float = 0.0, lon: float = 0.0, alt: float = 0.0, *params: float) -> Any:
    p = [*params, *[0.0] * (4 - len(params))]
    return M.MAVLink_mission_item_int_message(
        1, 1, seq, M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, command, 0, 1, *p,
        round(lat * 1e7), round(lon * 1e7), alt, M.MAV_MISSION_TYPE_MISSION,
    )  # fmt: skip


async def upload_mission(gcs: Gcs, items: list[Any], ignore_first_request_for: int | None = None) -> int:
    """Answer the drone's MISSION_REQUEST_INTs until MISSION_ACK; returns the ack type."""
    ignored = False
    since = gcs.mark()
    gcs.send(M.MAVLink_mission_count_message(1, 1, len(items), M.MAV_MISSION_TYPE_MISSION))
    while True:
        msg = await gcs.wait_for(("MISSION_REQUEST_INT", "MISSION_REQUEST", "MISSION_ACK"), since=since)
        since = gcs.cursor
        if msg.get_type() == "MISSION_ACK":
            return msg.type
        if msg.seq == ignore_first_request_for and not ignored:
            ignored = True  # pretend this item got lost on the radio
            continue
        gcs.send(items[msg.seq])


async def download_mission(gcs: Gcs) -> list[Any]:
    since = gcs.mark()
    gcs.send(M.MAVLink_mission_request_list_message(1, 1, M.MAV_MISSION_TYPE_MISSION))
    count = (await gcs.wait_for("MISSION_COUNT", since=since)).count
    items = []
    for seq in range(count):
        since = gcs.mark()
        gcs.send(M.MAVLink_mission_request_int_message(1, 1, seq, M.MAV_MISSION_TYPE_MISSION))
        items.append(await gcs.wait_for("MISSION_ITEM_INT", lambda m, s=seq: m.seq == s, since=since))
    gcs.send(M.MAVLink_mission_ack_message(1, 1, M.MAV_MISSION_ACCEPTED, M.MAV_MISSION_TYPE_MISSION))
    return items


def sim_span_s(msgs: list[Any]) -> float:
    """Simulated seconds covered by messages carrying time_boot_ms."""
    return (msgs[-1].time_boot_ms - msgs[0].time_boot_ms) / 1000.0


# --------------------------------------------------------------------------- telemetry


async def test_heartbeat_and_streams_carry_consistent_values() -> None:
    async with flying_setup(time_factor=10.0) as (gcs, _drone):
        since = gcs.mark()
        await asyncio.sleep(1.0)
        hb = gcs.of("HEARTBEAT", since)[-1]
        assert hb.get_srcSystem() == 1 and hb.get_srcComponent() == 1
        assert hb.type == M.MAV_TYPE_QUADROTOR and hb.autopilot == M.MAV_AUTOPILOT_ARDUPILOTMEGA
        assert hb.base_mode & M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED and not hb.base_mode & ARMED_FLAG
        assert hb.system_status == M.MAV_STATE_STANDBY
        assert gcs.of("HEARTBEAT", since)[-1].get_header().incompat_flags == 0  # unsigned by default

        gpi = gcs.of("GLOBAL_POSITION_INT", since)
        last = gpi[-1]
        assert distance_m(last.lat / 1e7, last.lon / 1e7, 31.2304, 121.4737) < 5.0
        assert abs(last.alt / 1000 - 4.0) < 2.0 and abs(last.relative_alt) < 2000
        assert (last.vx, last.vy, last.vz) == (0, 0, 0)
        gps = gcs.of("GPS_RAW_INT", since)[-1]
        assert gps.fix_type == 3 and 10 <= gps.satellites_visible <= 20 and 50 <= gps.eph <= 200
        assert distance_m(gps.lat / 1e7, gps.lon / 1e7, last.lat / 1e7, last.lon / 1e7) < 5.0
        batt = gcs.of("BATTERY_STATUS", since)[-1]
        assert batt.battery_remaining == 100 and all(4100 <= mv <= 4200 for mv in batt.voltages[:4])
        assert batt.voltages[4] == 65535
        sys_status = gcs.of("SYS_STATUS", since)[-1]
        assert 16_400 <= sys_status.voltage_battery <= 16_800
        assert gcs.of("EXTENDED_SYS_STATE", since)[-1].landed_state == M.MAV_LANDED_STATE_ON_GROUND
        home = gcs.of("HOME_POSITION")[-1]
        assert distance_m(home.latitude / 1e7, home.longitude / 1e7, 31.2304, 121.4737) < 5.0
        assert gcs.of("SYSTEM_TIME", since)[-1].time_unix_usec > 1.7e15

        # Default rates are per simulated second: 10 Hz ATTITUDE, 5 Hz position, 1 Hz heartbeat.
        attitude = gcs.of("ATTITUDE", since)
        span_s = sim_span_s(attitude)
        assert span_s > 5.0  # 1 wall second at 10x
        assert abs(len(attitude) / span_s - 10.0) < 1.5
        assert abs(len(gpi) / sim_span_s(gpi) - 5.0) < 1.0
        assert abs(len(gcs.of("HEARTBEAT", since)) / span_s - 1.0) < 0.4


async def test_set_message_interval_request_message_and_data_streams() -> None:
    async with flying_setup(time_factor=4.0) as (gcs, _drone):
        gpi_id = M.MAVLINK_MSG_ID_GLOBAL_POSITION_INT
        assert await gcs.command(M.MAV_CMD_SET_MESSAGE_INTERVAL, gpi_id, 50_000) == M.MAV_RESULT_ACCEPTED
        await asyncio.sleep(0.1)
        since = gcs.mark()
        await asyncio.sleep(1.0)
        gpi = gcs.of("GLOBAL_POSITION_INT", since)
        assert abs(len(gpi) / sim_span_s(gpi) - 20.0) < 3.0

        since = gcs.mark()
        gcs.send(M.MAVLink_command_long_message(1, 1, M.MAV_CMD_GET_MESSAGE_INTERVAL, 0, gpi_id, 0, 0, 0, 0, 0, 0))
        assert (await gcs.wait_for("MESSAGE_INTERVAL", since=since)).interval_us == 50_000

        assert await gcs.command(M.MAV_CMD_SET_MESSAGE_INTERVAL, gpi_id, -1) == M.MAV_RESULT_ACCEPTED
        await asyncio.sleep(0.1)
        since = gcs.mark()
        await asyncio.sleep(0.6)
        assert gcs.of("GLOBAL_POSITION_INT", since) == []
        assert len(gcs.of("ATTITUDE", since)) > 10  # other streams unaffected

        # Legacy REQUEST_DATA_STREAM: EXTRA1 (ATTITUDE) down to 2 Hz.
        gcs.send(M.MAVLink_request_data_stream_message(1, 1, M.MAV_DATA_STREAM_EXTRA1, 2, 1))
        await asyncio.sleep(0.2)
        since = gcs.mark()
        await asyncio.sleep(1.0)
        attitude = gcs.of("ATTITUDE", since)
        assert abs(len(attitude) / sim_span_s(attitude) - 2.0) < 0.7

        since = gcs.mark()
        version_id = M.MAVLINK_MSG_ID_AUTOPILOT_VERSION
        assert await gcs.command(M.MAV_CMD_REQUEST_MESSAGE, version_id) == M.MAV_RESULT_ACCEPTED
        version = await gcs.wait_for("AUTOPILOT_VERSION", since=since)
        for capability in (
            M.MAV_PROTOCOL_CAPABILITY_MISSION_INT,
            M.MAV_PROTOCOL_CAPABILITY_MAVLINK2,
            M.MAV_PROTOCOL_CAPABILITY_COMMAND_INT,
        ):
            assert version.capabilities & capability
        assert version.flight_sw_version >> 24 == 4
        assert await gcs.command(M.MAV_CMD_REQUEST_AUTOPILOT_CAPABILITIES, 1) == M.MAV_RESULT_ACCEPTED
        assert await gcs.command(M.MAV_CMD_GET_HOME_POSITION) == M.MAV_RESULT_ACCEPTED
        assert await gcs.command(M.MAV_CMD_DO_FLIGHTTERMINATION, 1) == M.MAV_RESULT_UNSUPPORTED


async def test_parameters_list_read_and_set_change_behaviour() -> None:
    async with flying_setup(time_factor=4.0) as (gcs, drone):
        since = gcs.mark()
        gcs.send(M.MAVLink_param_request_list_message(1, 1))
        first = await gcs.wait_for("PARAM_VALUE", since=since)
        await gcs.wait_for("PARAM_VALUE", lambda p: p.param_index == first.param_count - 1, since=since)
        values = {p.param_id: p for p in gcs.of("PARAM_VALUE", since)}
        assert len(values) == first.param_count >= 20
        for name in ("SYSID_THISMAV", "WPNAV_SPEED", "RTL_ALT", "BATT_CAPACITY", "FENCE_ENABLE"):
            assert name in values
        assert values["SYSID_THISMAV"].param_value == 1
        assert values["RTL_ALT"].param_type == M.MAV_PARAM_TYPE_INT32

        since = gcs.mark()
        gcs.send(M.MAVLink_param_set_message(1, 1, b"RTL_ALT", 3000.4, M.MAV_PARAM_TYPE_INT32))
        echoed = await gcs.wait_for("PARAM_VALUE", lambda p: p.param_id == "RTL_ALT", since=since)
        assert echoed.param_value == 3000  # integer parameter: stored as an integer
        since = gcs.mark()
        gcs.send(M.MAVLink_param_request_read_message(1, 1, b"RTL_ALT", -1))
        assert (await gcs.wait_for("PARAM_VALUE", since=since)).param_value == 3000
        assert drone.ap.limits().rtl_alt_m == 30.0


# --------------------------------------------------------------------------- arming and flight


async def test_arming_refused_without_fix_or_with_low_battery() -> None:
    async with flying_setup(time_factor=4.0) as (gcs, drone):
        assert await gcs.command(M.MAV_CMD_DO_SET_MODE, 1, AUTO) == M.MAV_RESULT_FAILED  # no mission
        drone.set_gps_fix(M.GPS_FIX_TYPE_NO_FIX)
        await gcs.wait_for("GPS_RAW_INT", lambda m: m.fix_type < 3)
        since = gcs.mark()
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1) == M.MAV_RESULT_FAILED
        assert (await gcs.wait_for("STATUSTEXT", since=since)).text == "PreArm: Need 3D Fix"
        health = (await gcs.wait_for("SYS_STATUS", since=since)).onboard_control_sensors_health
        assert not health & M.MAV_SYS_STATUS_SENSOR_GPS

        drone.set_gps_fix(None)
        await gcs.wait_for("GPS_RAW_INT", lambda m: m.fix_type == 3)
        drone.set_battery(12.0)
        since = gcs.mark()
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1) == M.MAV_RESULT_FAILED
        texts = [t.text for t in gcs.of("STATUSTEXT", since)]
        assert "PreArm: Battery 1 low capacity" in texts
        assert not drone.armed

        drone.set_battery(100.0)
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1) == M.MAV_RESULT_ACCEPTED
        hb = await gcs.wait_for("HEARTBEAT", lambda h: h.base_mode & ARMED_FLAG)
        assert hb.custom_mode == 0  # STABILIZE
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 0) == M.MAV_RESULT_ACCEPTED
        await gcs.wait_for("HEARTBEAT", lambda h: not h.base_mode & ARMED_FLAG)


async def test_guided_takeoff_climbs_at_limited_rate_to_altitude() -> None:
    async with flying_setup(time_factor=10.0) as (gcs, drone):
        assert await gcs.command(M.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 20) == M.MAV_RESULT_FAILED  # disarmed
        since = gcs.mark()
        await guided_takeoff(gcs, 20.0)
        await gcs.wait_for("EXTENDED_SYS_STATE", lambda s: s.landed_state == M.MAV_LANDED_STATE_TAKEOFF)
        top = await gcs.wait_for("GLOBAL_POSITION_INT", lambda p: p.relative_alt > 19_000, timeout=10)
        gpi = gcs.of("GLOBAL_POSITION_INT", since)
        assert max(-p.vz for p in gpi) <= 260  # WPNAV_SPEED_UP 2.5 m/s
        liftoff = next(p for p in gpi if p.relative_alt > 500)
        assert (top.time_boot_ms - liftoff.time_boot_ms) / 1000 >= 17.5 / 2.5  # 18.5 m, minus GPS noise
        await gcs.wait_for("EXTENDED_SYS_STATE", lambda s: s.landed_state == M.MAV_LANDED_STATE_IN_AIR)
        hb = await gcs.wait_for("HEARTBEAT")
        assert hb.custom_mode == GUIDED and hb.base_mode & ARMED_FLAG
        assert hb.system_status == M.MAV_STATE_ACTIVE
        assert abs(drone.relative_alt_m - 20.0) < 1.0
        vfr = await gcs.wait_for("VFR_HUD")
        assert 20 <= vfr.throttle <= 60 and abs(vfr.alt - (4.0 + 20.0)) < 2.0
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 0) == M.MAV_RESULT_FAILED  # flying


async def test_guided_reposition_then_rtl_lands_at_home_and_disarms() -> None:
    async with flying_setup(time_factor=5.0) as (gcs, drone):
        await guided_takeoff(gcs, 10.0)
        drone.clock.set_time_factor(40.0)
        home = await gcs.wait_for("HOME_POSITION", timeout=10)
        await gcs.wait_for("GLOBAL_POSITION_INT", lambda p: p.relative_alt > 9_500, timeout=10)
        lat, lon = offset_latlon(home.latitude / 1e7, home.longitude / 1e7, 0.0, 70.0)
        since = gcs.mark()
        reposition = M.MAVLink_command_int_message(
            1, 1, M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, M.MAV_CMD_DO_REPOSITION, 0, 0,
            -1, 0, 0, math.nan, round(lat * 1e7), round(lon * 1e7), 10.0,
        )  # fmt: skip
        gcs.send(reposition)
        ack = await gcs.wait_for("COMMAND_ACK", since=since)
        assert ack.result == M.MAV_RESULT_ACCEPTED and ack.command == M.MAV_CMD_DO_REPOSITION
        await gcs.wait_for(
            "GLOBAL_POSITION_INT", lambda p: distance_m(p.lat / 1e7, p.lon / 1e7, lat, lon) < 3, timeout=10
        )
        headings = [p.hdg for p in gcs.of("GLOBAL_POSITION_INT", since)[-3:]]
        assert all(abs(h - 9000) < 1500 for h in headings)  # flew (and faced) east

        since = gcs.mark()
        assert await gcs.command(M.MAV_CMD_NAV_RETURN_TO_LAUNCH) == M.MAV_RESULT_ACCEPTED
        await gcs.wait_for("HEARTBEAT", lambda h: h.custom_mode == RTL)
        await gcs.wait_for("HEARTBEAT", lambda h: not h.base_mode & ARMED_FLAG, timeout=15)
        gpi = gcs.of("GLOBAL_POSITION_INT", since)
        assert max(p.relative_alt for p in gpi) > 14_500  # climbed to RTL_ALT (15 m) before returning
        assert max(p.vz for p in gpi if p.relative_alt < 8_000) <= 60  # LAND_SPEED 0.5 m/s near ground
        landed = gcs.of("GLOBAL_POSITION_INT")[-1]
        assert distance_m(landed.lat / 1e7, landed.lon / 1e7, home.latitude / 1e7, home.longitude / 1e7) < 3
        assert abs(landed.relative_alt) < 1_000
        assert not drone.armed and drone.landed
        assert "Disarming motors" in [t.text for t in gcs.of("STATUSTEXT", since)]
        await gcs.wait_for("EXTENDED_SYS_STATE", lambda s: s.landed_state == M.MAV_LANDED_STATE_ON_GROUND)


async def test_low_battery_triggers_failsafe_rtl() -> None:
    async with flying_setup(time_factor=10.0) as (gcs, drone):
        await guided_takeoff(gcs, 12.0)
        await gcs.wait_for("GLOBAL_POSITION_INT", lambda p: p.relative_alt > 11_000, timeout=10)
        since = gcs.mark()
        drone.low_battery()
        text = await gcs.wait_for("STATUSTEXT", lambda t: t.text.startswith("Battery 1 is low"), since=since)
        assert text.severity == M.MAV_SEVERITY_CRITICAL
        hb = await gcs.wait_for("HEARTBEAT", lambda h: h.custom_mode == RTL, since=since)
        assert hb.system_status == M.MAV_STATE_CRITICAL
        batt = await gcs.wait_for("BATTERY_STATUS", since=since)
        assert batt.battery_remaining <= 15 and batt.charge_state == M.MAV_BATTERY_CHARGE_STATE_LOW


async def test_udpin_guided_position_targets_and_land_mode() -> None:
    """The drone listens (udpin) and answers whoever speaks; SET_MODE, SET_POSITION_TARGET_GLOBAL_INT
    (position, then velocity with ArduCopter's 3 s timeout) and LAND, which disarms on touchdown."""
    drone = SimulatedDrone(9, "udpin:127.0.0.1:0", time_factor=5.0, seed=9, gps_time_to_fix_s=0.5)
    gcs = Gcs()
    await gcs.open_udp()
    await drone.start()
    try:
        assert drone.local_address is not None
        gcs.peers[9] = drone.local_address
        gcs.send(M.MAVLink_heartbeat_message(M.MAV_TYPE_GCS, M.MAV_AUTOPILOT_INVALID, 0, 0, 0, 3), sysid=9)
        await gcs.wait_for("GPS_RAW_INT", lambda m: m.fix_type == 3, sysid=9)
        gcs.send(M.MAVLink_set_mode_message(9, M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED, GUIDED), sysid=9)
        await gcs.wait_for("HEARTBEAT", lambda h: h.custom_mode == GUIDED)
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1, sysid=9) == M.MAV_RESULT_ACCEPTED
        assert await gcs.command(M.MAV_CMD_NAV_TAKEOFF, 0, 0, 0, 0, 0, 0, 10, sysid=9) == M.MAV_RESULT_ACCEPTED
        drone.clock.set_time_factor(20.0)
        await gcs.wait_for("GLOBAL_POSITION_INT", lambda p: p.relative_alt > 9_500, timeout=5)

        home = drone.home_position
        lat, lon = offset_latlon(home.lat_deg, home.lon_deg, -40.0, 30.0)
        position_only = 0b110111111000
        goto = M.MAVLink_set_position_target_global_int_message(
            0, 9, 1, M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, position_only,
            round(lat * 1e7), round(lon * 1e7), 18.0, 0, 0, 0, 0, 0, 0, 0, 0,
        )  # fmt: skip
        gcs.send(goto, sysid=9)
        await gcs.wait_for(
            "GLOBAL_POSITION_INT",
            lambda p: distance_m(p.lat / 1e7, p.lon / 1e7, lat, lon) < 2.5 and p.relative_alt > 17_000,
            timeout=5,
        )
        velocity_only = 0b110111000111
        since = gcs.mark()
        velocity = M.MAVLink_set_position_target_global_int_message(
            0, 9, 1, M.MAV_FRAME_GLOBAL_RELATIVE_ALT_INT, velocity_only, 0, 0, 0, 3.0, -4.0, 0, 0, 0, 0, 0, 0
        )
        gcs.send(velocity, sysid=9)
        moving = await gcs.wait_for("VFR_HUD", lambda v: v.groundspeed > 4.9, since=since, timeout=3)
        assert 280 <= moving.heading <= 315  # 3 m/s north, 4 m/s west: course ~307 degrees
        await gcs.wait_for("VFR_HUD", lambda v: v.groundspeed < 0.05, since=gcs.cursor, timeout=3)

        since = gcs.mark()
        assert await gcs.command(M.MAV_CMD_NAV_LAND, sysid=9) == M.MAV_RESULT_ACCEPTED
        await gcs.wait_for("EXTENDED_SYS_STATE", lambda s: s.landed_state == M.MAV_LANDED_STATE_LANDING)
        await gcs.wait_for("HEARTBEAT", lambda h: not h.base_mode & ARMED_FLAG, since=since, timeout=10)
        assert drone.mode_name == "LAND" and drone.landed and drone.alt_msl_m == 4.0
    finally:
        await drone.stop()
        gcs.close()


# --------------------------------------------------------------------------- missions


def patrol_mission(home_lat: float, home_lon: float) -> list[Any]:
    wp1 = offset_latlon(home_lat, home_lon, 80.0, 0.0)
    wp2 = offset_latlon(home_lat, home_lon, 80.0, 60.0)
    wp3 = offset_latlon(home_lat, home_lon, 0.0, 60.0)
    return [
        mission_item(0, M.MAV_CMD_NAV_WAYPOINT, home_lat, home_lon, 0.0),
        mission_item(1, M.MAV_CMD_NAV_TAKEOFF, 0.0, 0.0, 15.0),
        mission_item(2, M.MAV_CMD_NAV_WAYPOINT, *wp1, 15.0),
        mission_item(3, M.MAV_CMD_DO_CHANGE_SPEED, 0.0, 0.0, 0.0, 1, 5.0, -1),
        mission_item(4, M.MAV_CMD_NAV_WAYPOINT, *wp2, 20.0),
        mission_item(5, M.MAV_CMD_NAV_WAYPOINT, *wp3, 15.0),
        mission_item(6, M.MAV_CMD_NAV_RETURN_TO_LAUNCH),
    ]


async def test_mission_upload_then_download_is_identical() -> None:
    async with flying_setup(time_factor=4.0) as (gcs, drone):
        items = patrol_mission(31.2304, 121.4737)
        assert await upload_mission(gcs, items) == M.MAV_MISSION_ACCEPTED
        assert len(drone.mission_items) == 6

        downloaded = await download_mission(gcs)
        assert len(downloaded) == len(items)
        assert downloaded[0].command == M.MAV_CMD_NAV_WAYPOINT  # slot 0 is the live home
        fields = ("seq", "frame", "command", "autocontinue", "param1", "param2", "param3", "param4", "x", "y", "z")
        for sent, got in zip(items[1:], downloaded[1:], strict=True):
            assert [getattr(got, f) for f in fields] == [getattr(sent, f) for f in fields]

        # The float form for an old ground station carries the same position.
        since = gcs.mark()
        gcs.send(M.MAVLink_mission_request_message(1, 1, 2, M.MAV_MISSION_TYPE_MISSION))
        legacy = await gcs.wait_for("MISSION_ITEM", since=since)
        assert abs(legacy.x - items[2].x / 1e7) < 1e-5 and abs(legacy.y - items[2].y / 1e7) < 1e-5

        since = gcs.mark()
        gcs.send(M.MAVLink_mission_clear_all_message(1, 1, M.MAV_MISSION_TYPE_MISSION))
        assert (await gcs.wait_for("MISSION_ACK", since=since)).type == M.MAV_MISSION_ACCEPTED
        assert drone.mission_items == []
        assert len(await download_mission(gcs)) == 1  # only home


async def test_mission_upload_rerequests_a_lost_item_and_accepts_float_items() -> None:
    async with flying_setup(time_factor=4.0) as (gcs, drone):
        items = patrol_mission(31.2304, 121.4737)
        # Answer item 1 with the legacy float MISSION_ITEM.
        item1 = items[1]
        items[1] = M.MAVLink_mission_item_message(
            1, 1, 1, M.MAV_FRAME_GLOBAL_RELATIVE_ALT, item1.command, 0, 1, 0, 0, 0, 0, 0.0, 0.0, 15.0, 0
        )
        since = gcs.mark()
        assert await upload_mission(gcs, items, ignore_first_request_for=3) == M.MAV_MISSION_ACCEPTED
        requests = [r.seq for r in gcs.of("MISSION_REQUEST_INT", since)]
        assert requests.count(3) == 2 and requests == sorted(requests)
        assert [i.command for i in drone.mission_items] == [i.command for i in items[1:]]
        assert drone.mission_items[0].z == 15.0


async def test_mission_upload_from_a_silent_gcs_is_cancelled() -> None:
    async with flying_setup(time_factor=20.0) as (gcs, drone):
        since = gcs.mark()
        gcs.send(M.MAVLink_mission_count_message(1, 1, 3, M.MAV_MISSION_TYPE_MISSION))
        ack = await gcs.wait_for("MISSION_ACK", since=since, timeout=5)
        assert ack.type == M.MAV_MISSION_OPERATION_CANCELLED
        assert [r.seq for r in gcs.of("MISSION_REQUEST_INT", since)] == [0] * 6  # first try + 5 retries
        await gcs.wait_for("STATUSTEXT", lambda t: t.text == "Mission upload timeout", since=since)
        assert drone.mission_items == []


async def test_auto_mission_flies_waypoints_and_reports_progress() -> None:
    async with flying_setup(time_factor=5.0) as (gcs, drone):
        home = await gcs.wait_for("HOME_POSITION")
        items = patrol_mission(home.latitude / 1e7, home.longitude / 1e7)
        assert await upload_mission(gcs, items) == M.MAV_MISSION_ACCEPTED
        assert await gcs.command(M.MAV_CMD_DO_SET_MODE, 1, GUIDED) == M.MAV_RESULT_ACCEPTED
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1) == M.MAV_RESULT_ACCEPTED
        since = gcs.mark()
        assert await gcs.command(M.MAV_CMD_MISSION_START) == M.MAV_RESULT_ACCEPTED
        drone.clock.set_time_factor(50.0)
        await gcs.wait_for("HEARTBEAT", lambda h: not h.base_mode & ARMED_FLAG, since=since, timeout=20)

        reached = [r.seq for r in gcs.of("MISSION_ITEM_REACHED", since)]
        assert reached == [1, 2, 4, 5, 6]  # every NAV item, in order; the DO item is not "reached"
        texts = [t.text for t in gcs.of("STATUSTEXT", since)]
        assert "Reached command #2" in texts and "Mission complete" in texts

        # Cruise at WPNAV_SPEED (10 m/s) until DO_CHANGE_SPEED slows the later legs to 5 m/s.
        fastest: dict[int, float] = {}
        seq = 0
        for r in gcs.log[since:]:
            if r.msg.get_type() == "MISSION_CURRENT":
                seq = r.msg.seq
            elif r.msg.get_type() == "VFR_HUD":
                fastest[seq] = max(fastest.get(seq, 0.0), r.msg.groundspeed)
        assert 9.0 < fastest[2] <= 10.3
        assert 4.0 < fastest[4] <= 5.3 and fastest[5] <= 5.3
        currents = [m.seq for m in gcs.of("MISSION_CURRENT", since)]
        assert {1, 2, 4, 5, 6} <= set(currents) and currents == sorted(currents)
        assert gcs.of("MISSION_CURRENT")[-1].mission_state == M.MISSION_STATE_COMPLETE

        landed = gcs.of("GLOBAL_POSITION_INT")[-1]
        assert distance_m(landed.lat / 1e7, landed.lon / 1e7, home.latitude / 1e7, home.longitude / 1e7) < 3
        assert drone.mission_seq == 6 and drone.battery_pct < 100.0


# --------------------------------------------------------------------------- faults and security


async def test_packet_loss_latency_and_link_drop() -> None:
    async with flying_setup(time_factor=10.0) as (gcs, drone):
        since = gcs.mark()
        await asyncio.sleep(0.8)
        baseline = gcs.mark() - since

        drone.set_packet_loss(50.0)
        since = gcs.mark()
        await asyncio.sleep(0.8)
        lossy = gcs.log[since:]
        assert 0.3 * baseline < len(lossy) < 0.7 * baseline
        seqs = [r.msg.get_seq() for r in lossy]
        gaps = sum((b - a) % 256 - 1 for a, b in itertools.pairwise(seqs))
        assert gaps > 0.3 * len(lossy)  # the receiver can see the loss in the sequence numbers
        assert drone.link_stats.sent_dropped > 0

        drone.set_packet_loss(0.0)
        drone.set_latency(150.0)
        started = time.monotonic()
        assert await gcs.command(M.MAV_CMD_GET_HOME_POSITION) == M.MAV_RESULT_ACCEPTED
        assert time.monotonic() - started >= 0.28  # 150 ms each way
        drone.set_latency(0.0)

        drone.drop_link(8.0)  # simulated seconds: 0.8 s of wall time at 10x
        await asyncio.sleep(0.2)  # frames already in flight (the 150 ms latency) still land
        since = gcs.mark()
        await asyncio.sleep(0.4)
        assert gcs.mark() == since
        assert drone.link_down
        await gcs.wait_for("HEARTBEAT", timeout=2.0)
        assert not drone.link_down


async def test_gps_glitch_moves_reported_position_then_recovers() -> None:
    async with flying_setup(time_factor=10.0) as (gcs, drone):
        home = drone.position
        since = gcs.mark()
        drone.gps_glitch(seconds=5.0, offset_m=300.0, bearing_deg=90.0)
        assert (await gcs.wait_for("STATUSTEXT", since=since)).text == "GPS Glitch"
        jumped = await gcs.wait_for("GLOBAL_POSITION_INT", since=since)
        assert 290 < distance_m(jumped.lat / 1e7, jumped.lon / 1e7, home.lat_deg, home.lon_deg) < 310
        assert jumped.lon / 1e7 > home.lon_deg  # east
        assert distance_m(drone.lat_deg, drone.lon_deg, home.lat_deg, home.lon_deg) < 0.1  # truth unmoved
        back = await gcs.wait_for(
            "GLOBAL_POSITION_INT",
            lambda p: distance_m(p.lat / 1e7, p.lon / 1e7, home.lat_deg, home.lon_deg) < 5,
            timeout=2.0,
        )
        assert (back.time_boot_ms - jumped.time_boot_ms) / 1000 >= 4.5


async def test_signing_rejects_unsigned_and_wrongly_signed_commands() -> None:
    key = bytes(range(32))
    async with flying_setup(time_factor=4.0, signing_key=key, gcs_key=key) as (gcs, drone):
        assert all(r.msg.get_signed() for r in gcs.log)  # everything from the drone verifies with the key

        gcs.mav.signing.sign_outgoing = False
        with contextlib.suppress(TimeoutError):
            await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1, timeout=0.6)
            raise AssertionError("unsigned command was answered")
        gcs.mav.signing.sign_outgoing = True
        gcs.mav.signing.secret_key = bytes(32)
        with contextlib.suppress(TimeoutError):
            await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1, timeout=0.6)
            raise AssertionError("command signed with the wrong key was answered")
        assert not drone.armed and drone.link_stats.rejected >= 2

        gcs.mav.signing.secret_key = key
        assert await gcs.command(M.MAV_CMD_COMPONENT_ARM_DISARM, 1) == M.MAV_RESULT_ACCEPTED
        assert drone.armed


# --------------------------------------------------------------------------- fleets


async def test_fleet_over_tcp_reconnects_and_scheduled_faults_hit_one_drone() -> None:
    gcs = Gcs()
    connections: list[asyncio.StreamWriter] = []

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                gcs.feed(data, writer.transport)
        writer.close()

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    faults = FaultConfig(sysids=frozenset({3})).link_drop(start_s=3.0, duration_s=1000.0)
    fleet = DroneFleet(3, f"tcp:127.0.0.1:{port}", first_sysid=1, time_factor=10.0, faults=faults, seed=3)
    await fleet.start()
    try:
        for sysid in (1, 2, 3):
            await gcs.wait_for("HEARTBEAT", sysid=sysid, since=0)
        spread = distance_m(fleet[0].lat_deg, fleet[0].lon_deg, fleet[1].lat_deg, fleet[1].lon_deg)
        assert 20 < spread < 60
        await asyncio.sleep(0.5)  # past the scheduled outage of drone 3 (3 simulated seconds)
        since = gcs.mark()
        await asyncio.sleep(0.4)
        assert gcs.of("HEARTBEAT", since, sysid=3) == [] and gcs.of("ATTITUDE", since, sysid=1) != []

        # Commands reach the right drone over its own connection.
        assert await gcs.command(M.MAV_CMD_DO_SET_MODE, 1, GUIDED, sysid=2) == M.MAV_RESULT_ACCEPTED
        assert fleet.by_sysid(2).mode == GUIDED and fleet.by_sysid(1).mode == 0

        # The server drops drone 1's connection; the drone reconnects on its own.
        victim = gcs.peers[1]
        before = len(connections)
        victim.close()
        await asyncio.sleep(0.05)
        since = gcs.mark()
        await gcs.wait_for("HEARTBEAT", sysid=1, since=since, timeout=5.0)
        assert len(connections) > before and gcs.peers[1] is not victim
    finally:
        await fleet.stop()
        server.close()
        await server.wait_closed()


async def test_run_drone_fleet_runs_until_stopped() -> None:
    gcs = Gcs()
    port = await gcs.open_udp()
    stop = asyncio.Event()
    task = asyncio.create_task(
        run_drone_fleet(4, f"udpout:127.0.0.1:{port}", first_sysid=11, time_factor=5.0, stop=stop, seed=1)
    )
    try:
        for sysid in (11, 12, 13, 14):
            hb = await gcs.wait_for("HEARTBEAT", sysid=sysid, since=0)
            assert hb.get_srcComponent() == 1
        assert len({gcs.peers[s] for s in (11, 12, 13, 14)}) == 4  # one socket per drone
    finally:
        stop.set()
        await asyncio.wait_for(task, 5.0)
        gcs.close()
    assert task.done() and task.exception() is None


async def test_fifty_drones_share_one_core() -> None:
    gcs = Gcs()
    port = await gcs.open_udp()
    fleet = DroneFleet(50, f"udpout:127.0.0.1:{port}", time_factor=1.0, seed=5)
    await fleet.start()
    try:
        await asyncio.sleep(0.5)
        cpu0, wall0, since = time.process_time(), time.monotonic(), gcs.mark()
        await asyncio.sleep(2.0)
        cpu_share = (time.process_time() - cpu0) / (time.monotonic() - wall0)
        heartbeats = gcs.of("HEARTBEAT", since)
    finally:
        await fleet.stop()
        gcs.close()
    assert len({h.get_srcSystem() for h in heartbeats}) == 50
    assert len(heartbeats) >= 80  # ~1 Hz each over 2 s
    assert cpu_share < 0.6  # includes this process's own parsing of ~1300 messages/s


# --------------------------------------------------------------------------- the command line


async def test_sim_drones_command_sends_mavlink_and_stops_on_sigint() -> None:
    """``patrolgate sim drones`` as a user runs it: a real process, its options parsed by the simulator, its
    HEARTBEATs received on a plain UDP socket; SIGINT ends it with exit code 0."""
    loop = asyncio.get_running_loop()
    systems: set[int] = set()
    parser = M.MAVLink(None)
    parser.robust_parsing = True

    class Ground(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            for msg in parser.parse_buffer(data) or []:
                if msg.get_type() == "HEARTBEAT":
                    systems.add(msg.get_srcSystem())

    transport, _ = await loop.create_datagram_endpoint(Ground, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gateway.cli", "sim", "drones", "--count", "2", "--first-sysid", "7",
        "--to", f"udpout:127.0.0.1:{port}", "--loss-pct", "0", stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while systems != {7, 8} and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert systems == {7, 8}
        proc.send_signal(signal.SIGINT)
        output, _ = await asyncio.wait_for(proc.communicate(), 15)
        assert proc.returncode == 0, output.decode(errors="replace")
    finally:
        transport.close()
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_sim_drones_command_refuses_bad_options_with_the_reason() -> None:
    for bad, reason in ((["--count", "200", "--first-sysid", "100"], "must be at most 250"),
                        (["--time-factor", "5000"], "--time-factor: 5000 is outside [0.1, 100]"),
                        (["--loss-pct", "500"], "--loss-pct: 500 is outside [0, 100]"),
                        (["--latency-ms", "-5"], "--latency-ms: -5 is outside [0, 10000]"),
                        (["--link-drop", "5"], "--link-drop: expected 2 numbers separated by commas"),
                        (["--home", "abc"], "--home: expected numbers separated by commas"),
                        (["--signing-key-hex", "zz"], "expected 64 hex digits")):
        done = subprocess.run([sys.executable, "-m", "gateway.cli", "sim", "drones", *bad], capture_output=True,
                              text=True, timeout=60)
        assert done.returncode == 2 and reason in done.stderr, done.stderr


def test_sim_drones_fault_flags_become_the_fault_timeline() -> None:
    from simulators.drone.cli import build_parser
    from simulators.drone.fault_cli import faults_from_args
    from simulators.drone.faults import GpsGlitch, LinkDrop, LowBattery

    args = build_parser("test").parse_args(["--loss-pct", "5", "--link-drop", "60,15", "--gps-glitch", "120",
                                            "--low-battery", "300,12", "--home", "31.2,121.5"])
    faults = faults_from_args(args)
    assert faults is not None and faults.packet_loss_pct == 5.0
    assert faults.timeline() == [(60.0, LinkDrop(60.0, 15.0)), (120.0, GpsGlitch(120.0)),
                                 (300.0, LowBattery(300.0, 12.0))]
    assert args.home == [31.2, 121.5]
    assert faults_from_args(build_parser("test").parse_args([])) is None
