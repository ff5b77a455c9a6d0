"""The MAVLink driver over real loopback sockets, with pymavlink as the drone side."""

from __future__ import annotations

import asyncio
import os
import random
import socket
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from helpers import until
from pymavlink.dialects.v20 import ardupilotmega as mavlink

from drivers.mavlink import DroneConfig, MavlinkDriver, MavlinkOptions
from telemetry.model import Event, Rejection, Sample, VehicleInfo

M = mavlink


@dataclass
class Collector:
    """Records what the driver emits (stands in for the pipeline, to look at the driver alone)."""

    samples: list[Sample] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)
    vehicles: list[VehicleInfo] = field(default_factory=list)

    async def __call__(self, samples: Sequence[Sample] = (), *, events: Sequence[Event] = (),
                       rejections: Sequence[Rejection] = (), vehicles: Sequence[VehicleInfo] = (),
                       ack: Any = None) -> None:
        self.samples += samples
        self.events += events
        self.rejections += rejections
        self.vehicles += vehicles


class FakeDrone:
    """A minimal pymavlink drone on its own UDP socket (for frames the simulator would never send)."""

    def __init__(self, sysid: int, target: tuple[str, int], key: bytes | None = None) -> None:
        self.mav = M.MAVLink(None, srcSystem=sysid, srcComponent=1)
        if key:
            self.mav.signing.secret_key = key
            self.mav.signing.sign_outgoing = True
            self.mav.signing.link_id = 1
            self.mav.signing.timestamp = 1
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.target = target

    def frame(self, msg: Any) -> bytes:
        data = msg.pack(self.mav)
        self.mav.seq = (self.mav.seq + 1) % 256  # pack() alone does not advance the sequence number
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendto(data, self.target)

    def heartbeat(self, mode: int = 4, armed: bool = False) -> bytes:
        base = M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED | (M.MAV_MODE_FLAG_SAFETY_ARMED if armed else 0)
        return self.frame(M.MAVLink_heartbeat_message(M.MAV_TYPE_QUADROTOR, M.MAV_AUTOPILOT_ARDUPILOTMEGA, base,
                                                      mode, M.MAV_STATE_ACTIVE, 3))

    def position(self, t_ms: int, lat: float = 31.2304, lon: float = 121.4737) -> bytes:
        return self.frame(M.MAVLink_global_position_int_message(t_ms, round(lat * 1e7), round(lon * 1e7), 54_000,
                                                                50_000, 300, -400, 10, 9000))

    def close(self) -> None:
        self.sock.close()




@pytest.fixture
async def driver_and_sink(request: pytest.FixtureRequest) -> AsyncIterator[tuple[MavlinkDriver, Collector]]:
    options: MavlinkOptions = getattr(request, "param", None) or MavlinkOptions()
    options.endpoints = ["udpin:127.0.0.1:0"]
    options.heartbeat_timeout_s = 0.6
    driver = MavlinkDriver(options)
    sink = Collector()
    await driver.start(sink)
    yield driver, sink
    await driver.stop()


async def test_position_becomes_a_sample_with_converted_units(driver_and_sink: Any) -> None:
    driver, sink = driver_and_sink
    drone = FakeDrone(7, driver.local_address())
    drone.send(drone.heartbeat(mode=4, armed=True))
    drone.send(drone.frame(M.MAVLink_attitude_message(1000, 0.1, -0.2, 1.5, 0, 0, 0)))
    drone.send(drone.frame(M.MAVLink_sys_status_message(0, 0, 0, 500, 22_750, 1234, 76, 0, 0, 0, 0, 0, 0)))
    drone.send(drone.frame(M.MAVLink_vfr_hud_message(0, 5.0, 90, 40, 54.0, -0.4)))
    drone.send(drone.frame(M.MAVLink_gps_raw_int_message(0, 3, 0, 0, 0, 70, 0, 0, 0, 16)))
    drone.send(drone.position(1000))
    await until(lambda: sink.samples)
    s = sink.samples[0]
    assert (s.vehicle, s.lat_deg, s.lon_deg, s.alt_msl_m, s.alt_rel_m) == ("drone-7", 31.2304, 121.4737, 54.0, 50.0)
    assert s.ground_speed_mps == pytest.approx(5.0)  # hypot(3, -4) m/s from cm/s
    assert s.heading_deg == 90.0 and s.climb_mps == pytest.approx(-0.4)
    assert s.roll_deg == pytest.approx(5.7296, abs=1e-3) and s.yaw_deg == pytest.approx(85.944, abs=1e-3)
    assert (s.battery_pct, s.battery_v, s.mode, s.armed, s.gps_fix, s.satellites) == (76.0, 22.75, "GUIDED", True,
                                                                                      3, 16)
    assert s.extra is not None and s.extra["hdop"] == 0.7 and s.extra["current_a"] == 12.34
    assert [v.mavlink_sysid for v in sink.vehicles] == [7]
    assert [e.type for e in sink.events] == ["online"]
    drone.close()


async def test_heartbeat_timeout_gives_offline_then_online(driver_and_sink: Any) -> None:
    driver, sink = driver_and_sink
    drone = FakeDrone(3, driver.local_address())
    drone.send(drone.heartbeat())
    await until(lambda: [e.type for e in sink.events] == ["online"])
    await until(lambda: [e.type for e in sink.events] == ["online", "offline"], timeout=3)
    drone.send(drone.heartbeat(mode=6))
    await until(lambda: [e.type for e in sink.events] == ["online", "offline", "online", "mode_changed"])
    assert sink.events[-1].detail == {"from": "GUIDED", "to": "RTL"}
    drone.send(drone.heartbeat(mode=9, armed=True))
    await until(lambda: len(sink.events) == 6)
    assert [(e.type, e.detail.get("to")) for e in sink.events[4:]] == [("mode_changed", "LAND"), ("armed", None)]
    drone.close()


async def test_packet_loss_from_sequence_gaps(driver_and_sink: Any) -> None:
    driver, _ = driver_and_sink
    drone = FakeDrone(4, driver.local_address())
    frames = [drone.heartbeat()] + [drone.position(i * 100) for i in range(1, 102)]
    for i, f in enumerate(frames):
        if i == 0 or i % 10:  # every tenth frame lost on the way (10, 20, ... 100)
            drone.send(f)
    await until(lambda: driver.stats()["drones"].get("drone-4", {}).get("received") == 92)
    assert driver.stats()["drones"]["drone-4"]["lost"] == 10
    drone.close()


async def test_one_drone_on_two_links_is_one_vehicle_counted_once() -> None:
    driver = MavlinkDriver(MavlinkOptions(endpoints=["udpin:127.0.0.1:0", "udpin:127.0.0.1:0"]))
    sink = Collector()
    await driver.start(sink)
    try:
        drone = FakeDrone(9, driver.local_address(0))
        frames = [drone.heartbeat()] + [drone.position(i * 100) for i in range(1, 21)]
        for f in frames:
            drone.send(f)
            drone.sock.sendto(f, driver.local_address(1))  # the same frame over a second radio
        await until(lambda: len(sink.samples) == 20)
        await asyncio.sleep(0.1)
        assert len(sink.samples) == 20
        assert [v.vehicle for v in sink.vehicles] == ["drone-9"]
        links = driver.stats()["links"]
        assert sum(link["duplicates"] for link in links.values()) == 21
        drone.close()
    finally:
        await driver.stop()


_KEY = bytes(range(32))


@pytest.mark.parametrize(
    "driver_and_sink", [MavlinkOptions(drones={5: DroneConfig("drone-5", signing_key=_KEY, require_signing=True)})],
    indirect=True,
)
async def test_signing_required_drops_unsigned_and_forged_frames(driver_and_sink: Any) -> None:
    driver, sink = driver_and_sink
    signed = FakeDrone(5, driver.local_address(), key=_KEY)
    forger = FakeDrone(5, driver.local_address(), key=bytes(32))  # right sysid, wrong key
    plain = FakeDrone(5, driver.local_address())  # unsigned
    signed.send(signed.heartbeat())
    for i in range(1, 6):
        signed.send(signed.position(i * 100))
        forger.send(forger.position(10_000 + i))
        plain.send(plain.position(20_000 + i))
    # A replay of a captured, correctly signed frame: its timestamp is older than the last one seen.
    old = signed.position(50)
    for i in range(6, 9):
        signed.send(signed.position(i * 100))
    signed.send(old)
    await until(lambda: len(sink.samples) == 8)
    await asyncio.sleep(0.2)
    assert sorted(s.extra["time_boot_ms"] for s in sink.samples) == [i * 100 for i in range(1, 9)]
    reasons = sorted(r.reason for r in sink.rejections)
    assert reasons == ["bad_signature"] * 5 + ["replayed_signature"] + ["unsigned"] * 5
    assert sum(link["signing_dropped"] for link in driver.stats()["links"].values()) == 11
    for d in (signed, forger, plain):
        d.close()


@pytest.mark.parametrize(
    "driver_and_sink", [MavlinkOptions(drones={5: DroneConfig("drone-5", signing_key=_KEY, require_signing=True)})],
    indirect=True,
)
async def test_commands_to_a_signing_drone_are_signed(driver_and_sink: Any) -> None:
    from drivers.commands import Arm

    driver, _ = driver_and_sink
    drone = FakeDrone(5, driver.local_address(), key=_KEY)
    drone.send(drone.heartbeat())
    await until(lambda: driver.owns("drone-5"))
    receiver = M.MAVLink(None)
    receiver.signing.secret_key = _KEY
    receiver.signing.sign_outgoing = False
    task = asyncio.create_task(driver.execute("drone-5", Arm()))
    got: list[Any] = []
    while not got:
        await asyncio.sleep(0.02)
        try:
            data, _ = drone.sock.recvfrom(65535)
        except BlockingIOError:
            continue
        for msg in receiver.parse_buffer(data) or []:
            if msg.get_type() == "COMMAND_LONG" and msg.command == M.MAV_CMD_COMPONENT_ARM_DISARM:
                got.append(msg)
    assert receiver.signing.goodsig_count >= 1 and receiver.signing.badsig_count == 0
    drone.send(drone.frame(M.MAVLink_command_ack_message(M.MAV_CMD_COMPONENT_ARM_DISARM, M.MAV_RESULT_ACCEPTED)))
    result = await asyncio.wait_for(task, 5)
    assert result.result == "accepted"
    drone.close()


async def test_hostile_input_never_crashes_and_is_counted(driver_and_sink: Any) -> None:
    driver, sink = driver_and_sink
    drone = FakeDrone(8, driver.local_address())
    rng = random.Random(3)
    good = [drone.heartbeat()] + [drone.position(i) for i in range(1, 51)]
    for i, frame in enumerate(good):
        drone.send(frame)
        kind = i % 5
        if kind == 0:
            junk = os.urandom(rng.randint(1, 300))
        elif kind == 1:
            junk = frame[: rng.randint(1, len(frame) - 1)]  # truncated
        elif kind == 2:
            junk = frame[:-2] + bytes([frame[-2] ^ 0xFF, frame[-1]])  # bad CRC
        elif kind == 3:
            junk = bytes([0xFD, 4, 0, 0, 7, 8, 1, 0x39, 0x30, 0x00]) + b"abcd" + b"\x00\x00"  # unknown msgid 12345
        else:  # a valid frame with absurd values: the driver passes it on, validation rejects it later
            junk = drone.position(100_000 + i, lat=123.0, lon=200.0)
        drone.send(junk)
    await until(lambda: len(sink.samples) >= 60)
    await asyncio.sleep(0.2)
    stats = driver.stats()["links"]
    link = next(iter(stats.values()))
    assert link["bad_crc"] >= 10 and link["unknown_id"] >= 10 and link["junk_bytes"] > 0
    times = sorted(s.extra["time_boot_ms"] for s in sink.samples if s.lat_deg is not None and s.lat_deg < 90)
    assert times == list(range(1, 51))  # every good frame came through
    assert len([s for s in sink.samples if s.lat_deg == 123.0]) == 10
    assert {r.reason for r in sink.rejections} <= {"bad_crc", "unknown_message_id", "junk_bytes"}
    assert sink.rejections and all(r.raw for r in sink.rejections)
    drone.close()


async def test_stop_returns_when_a_flush_was_just_due() -> None:
    """A cancel that arrives as the flusher wakes up must still stop it (Python 3.11's wait_for lost it)."""
    driver = MavlinkDriver(MavlinkOptions(endpoints=["udpin:127.0.0.1:0"]))
    await driver.start(Collector())
    await asyncio.sleep(0.05)
    loop = asyncio.get_running_loop()
    started = loop.time()
    driver._wake.set()  # the flusher's wake-up is due...
    async with asyncio.timeout(2):
        await driver.stop()  # ...and the cancel comes before it runs
    assert loop.time() - started < 1.0
