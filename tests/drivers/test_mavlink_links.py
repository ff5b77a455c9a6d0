"""MAVLink links other than UDP-in: TCP server and client, UDP-out, serial (a pseudo-terminal), GCS relay."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import tty
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as mavlink
from test_mavlink_driver import Collector, FakeDrone, until

from drivers.commands import MissionItem, SetMode, UploadMission
from drivers.mavlink import MavlinkDriver, MavlinkOptions
from simulators.drone import SimulatedDrone

M = mavlink


async def _driver(*endpoints: str, forward: tuple[str, ...] = ()) -> tuple[MavlinkDriver, Collector]:
    driver = MavlinkDriver(MavlinkOptions(endpoints=list(endpoints), forward=list(forward)))
    sink = Collector()
    await driver.start(sink)
    return driver, sink


async def test_tcp_server_with_simulated_drones() -> None:
    driver, sink = await _driver("tcpin:127.0.0.1:0")
    try:
        port = driver.local_address()[1]
        async with SimulatedDrone(11, f"tcp:127.0.0.1:{port}", time_factor=10, seed=11), \
                SimulatedDrone(12, f"tcp:127.0.0.1:{port}", time_factor=10, seed=12):
            await until(lambda: {s.vehicle for s in sink.samples} == {"drone-11", "drone-12"}, timeout=10)
            result = await driver.execute("drone-11", SetMode("ALT_HOLD"))
            assert result.result == "accepted"
    finally:
        await driver.stop()


async def test_udpout_reaches_a_drone_that_listens() -> None:
    # The drone side listens (as a companion computer or a router would); the gateway sends to it.
    async with SimulatedDrone(21, "udpin:127.0.0.1:0", time_factor=10, seed=21) as udp_drone:
        udp_port = udp_drone.local_address[1]
        driver, sink = await _driver(f"udpout:127.0.0.1:{udp_port}")
        try:
            # udpout: the gateway must speak first so a listening drone learns where to answer.
            gcs = FakeDrone(250, ("127.0.0.1", udp_port))
            driver._endpoints[0].broadcast(gcs.heartbeat())
            gcs.close()
            await until(lambda: any(s.vehicle == "drone-21" for s in sink.samples), timeout=10)
        finally:
            await driver.stop()


async def test_serial_link_over_a_pseudo_terminal() -> None:
    master, slave = os.openpty()
    tty.setraw(master)
    driver, sink = await _driver(f"serial:{os.ttyname(slave)}:57600")
    try:
        drone = FakeDrone(31, ("127.0.0.1", 9))
        stream = drone.heartbeat() + b"".join(drone.position(i * 100) for i in range(1, 6))
        for i in range(0, len(stream), 7):  # a serial line delivers arbitrary pieces
            os.write(master, stream[i:i + 7])
        await until(lambda: len(sink.samples) == 5)
        assert [s.extra["time_boot_ms"] for s in sink.samples] == [100, 200, 300, 400, 500]
        drone.close()
    finally:
        await driver.stop()
        os.close(master)
        os.close(slave)


async def test_relay_to_a_ground_station_both_ways() -> None:
    gcs = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    gcs.bind(("127.0.0.1", 0))
    gcs.setblocking(False)
    driver, _ = await _driver("udpin:127.0.0.1:0", forward=(f"udpout:127.0.0.1:{gcs.getsockname()[1]}",))
    try:
        drone = FakeDrone(41, driver.local_address())
        drone.send(drone.heartbeat())
        drone.send(drone.position(100))
        parser = M.MAVLink(None)
        seen: list[Any] = []
        relay_address: list[Any] = []

        def drain() -> bool:
            try:
                data, address = gcs.recvfrom(65535)
            except BlockingIOError:
                return False
            relay_address[:] = [address]
            seen.extend(m.get_type() for m in parser.parse_buffer(data) or [])
            return True

        await until(lambda: (drain(), "GLOBAL_POSITION_INT" in seen)[1])
        assert {"HEARTBEAT", "GLOBAL_POSITION_INT"} <= set(seen)
        # The ground station answers through the gateway: a command for system 41 reaches the drone.
        gcs_mav = M.MAVLink(None, srcSystem=255, srcComponent=190)
        cmd = M.MAVLink_command_long_message(41, 1, M.MAV_CMD_COMPONENT_ARM_DISARM, 0, 1, 0, 0, 0, 0, 0, 0)
        gcs.sendto(cmd.pack(gcs_mav), relay_address[0])
        drone_parser = M.MAVLink(None)
        received: list[Any] = []

        def drone_drain() -> bool:
            try:
                data, _ = drone.sock.recvfrom(65535)
            except BlockingIOError:
                return False
            received.extend(drone_parser.parse_buffer(data) or [])
            return True

        await until(lambda: (drone_drain(), any(m.get_type() == "COMMAND_LONG" for m in received))[1])
        arm = next(m for m in received if m.get_type() == "COMMAND_LONG")
        assert (arm.target_system, arm.command, arm.param1, arm.get_srcSystem()) == (41, 400, 1.0, 255)
        drone.close()
    finally:
        await driver.stop()
        gcs.close()


async def test_upload_answers_the_older_mission_request_too() -> None:
    """Some autopilots still ask with MISSION_REQUEST (float items); the gateway answers with MISSION_ITEM."""
    driver, _ = await _driver("udpin:127.0.0.1:0")
    try:
        drone = FakeDrone(51, driver.local_address())
        drone.send(drone.heartbeat())
        await until(lambda: driver.owns("drone-51"))
        items = [MissionItem(16, 31.2310, 121.4740, 20.0), MissionItem(21, 31.2304, 121.4737, 0.0)]
        upload = asyncio.create_task(driver.execute("drone-51", UploadMission(tuple(items))))
        parser = M.MAVLink(None)
        got: dict[int, Any] = {}

        async def next_msg(kind: str) -> Any:
            while True:
                try:
                    data, _ = drone.sock.recvfrom(65535)
                except BlockingIOError:
                    await asyncio.sleep(0.01)
                    continue
                for m in parser.parse_buffer(data) or []:
                    if m.get_type() == kind:
                        return m

        count = await asyncio.wait_for(next_msg("MISSION_COUNT"), 5)
        assert count.count == 3  # home + 2
        for seq in range(count.count):
            drone.send(drone.frame(M.MAVLink_mission_request_message(255, 190, seq, 0)))
            item = await asyncio.wait_for(next_msg("MISSION_ITEM"), 5)
            got[item.seq] = item
        drone.send(drone.frame(M.MAVLink_mission_ack_message(255, 190, M.MAV_MISSION_ACCEPTED, 0)))
        result = await asyncio.wait_for(upload, 5)
        assert result.value == 3
        assert (got[1].command, round(got[1].x, 4), round(got[1].y, 4), got[1].z) == (16, 31.231, 121.474, 20.0)
        assert got[2].command == 21
        drone.close()
    finally:
        await driver.stop()



async def test_tcp_client_connects_out_and_reconnects() -> None:
    drone = FakeDrone(61, ("127.0.0.1", 9))
    connections: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        n = len(connections)
        writer.write(drone.heartbeat() + b"".join(drone.position(n * 1000 + i) for i in range(3)))
        await writer.drain()
        if n == 1:
            writer.close()  # the first connection drops: the gateway must come back by itself

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    driver, sink = await _driver(f"tcp:127.0.0.1:{port}")
    try:
        await until(lambda: len(sink.samples) == 6, timeout=10)
        assert sorted(s.extra["time_boot_ms"] for s in sink.samples) == [1000, 1001, 1002, 2000, 2001, 2002]
        assert len(connections) == 2
    finally:
        await driver.stop()
        server.close()
        for w in connections:
            w.close()
        await server.wait_closed()
        drone.close()


def test_batch_reader_gives_what_recvfrom_gives() -> None:
    """recvmmsg through ctypes (Linux) and the portable recvfrom reader: same datagrams, same source addresses."""
    from drivers.mavlink.endpoints import _RecvFrom, _RecvMmsg

    for family, host in ((socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")):
        got: list[tuple[list[bytes], list[Any]]] = []
        for make in (_RecvMmsg.create, _RecvFrom):
            sock = socket.socket(family, socket.SOCK_DGRAM)
            sock.bind((host, 0))
            sock.setblocking(False)
            reader = make(sock)
            assert reader is not None
            senders = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(3)]
            for sender in senders:
                sender.bind((host, 0))
            for i in range(150):  # more than one recvmmsg call, empty datagrams included
                senders[i % 3].sendto(bytes([i]) * i, sock.getsockname())
            datagrams: list[bytes] = []
            sources: list[Any] = []
            with contextlib.suppress(BlockingIOError):
                reader.read(datagrams, sources, 4096)
            assert datagrams == [bytes([i]) * i for i in range(150)]
            assert [reader.address(s) for s in sources] == [senders[i % 3].getsockname() for i in range(150)]
            got.append((datagrams, [reader.address(s) for s in sources]))
            for s in (sock, *senders):
                s.close()
        assert got[0][0] == got[1][0]
