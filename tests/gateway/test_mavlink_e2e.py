"""Gateway and simulated drones over real loopback UDP, into a real PostgreSQL."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from helpers import query, until

from drivers.commands import Arm, CommandRejected, Goto, MissionItem, ReturnHome, SetMode, Takeoff
from gateway.config import load_settings
from gateway.service import Gateway
from simulators.drone import DroneFleet, SimulatedDrone
from telemetry.validation import haversine_m

pytestmark = pytest.mark.postgres

TIME_FACTOR = 20.0




@pytest.fixture
async def gateway(db: str, tmp_path: Path) -> AsyncIterator[Gateway]:
    settings = load_settings(
        database={"dsn": db},
        mavlink={"endpoints": ["udpin:127.0.0.1:0"], "heartbeat_timeout": "1.5s", "command_timeout": "1s"},
        writer={"flush_interval": "50ms", "spool_dir": str(tmp_path / "spool")},
        api={"enabled": False},
    )
    gw = Gateway(settings)
    await gw.start()
    yield gw
    await gw.stop()


def _target(gw: Gateway) -> str:
    port = gw.drivers[0].local_address()[1]  # type: ignore[attr-defined]
    return f"udpout:127.0.0.1:{port}"


async def test_twenty_drones_on_one_endpoint_land_in_postgres_with_correct_values(gateway: Gateway,
                                                                                   db: str) -> None:
    async with DroneFleet(20, _target(gateway), time_factor=TIME_FACTOR, seed=5) as fleet:
        await until(lambda: len(gateway.live.latest) == 20
                    and all(s.lat_deg is not None and (s.gps_fix or 0) >= 3 for s in gateway.live.latest.values()),
                    what="20 drones reporting positions with a GPS fix")
        await gateway.writer.flush()  # type: ignore[union-attr]
        rows = query(db, "SELECT v.id, v.mavlink_sysid, l.lat, l.lon, l.alt_msl_m, l.alt_rel_m, l.battery_pct, "
                         "l.battery_v, l.mode, l.armed, l.gps_fix FROM vehicle_latest l "
                         "JOIN vehicles v ON v.key = l.vehicle_key ORDER BY v.mavlink_sysid")
        assert [r[0] for r in rows] == [f"drone-{i}" for i in range(1, 21)]
        for (vid, sysid, lat, lon, alt_msl, alt_rel, batt_pct, batt_v, mode, armed, fix), drone in zip(
                rows, fleet.drones, strict=True):
            assert f"drone-{sysid}" == vid
            assert haversine_m(lat, lon, drone.lat_deg, drone.lon_deg) < 5.0, vid  # metres, GPS noise
            assert abs(alt_msl - drone.alt_msl_m) < 2.0 and abs(alt_rel) < 1.0  # on the ground at home
            assert 0 < batt_pct <= 100 and 10.0 < batt_v < 30.0  # a 4S/6S pack in volts, not millivolts
            assert mode == drone.mode_name and armed is False and fix >= 3
        counts = query(db, "SELECT count(DISTINCT vehicle_key), count(*) FROM telemetry")
        assert counts[0][0] == 20 and counts[0][1] >= 20
        online = query(db, "SELECT count(*) FROM events WHERE type = 'online'")
        assert online == [(20,)]


async def test_mission_uploaded_downloaded_identical_flown_and_finished(gateway: Gateway, db: str) -> None:
    async with SimulatedDrone(1, _target(gateway), time_factor=TIME_FACTOR, seed=1) as drone:
        await until(lambda: "drone-1" in gateway.live.latest, what="drone-1 seen")
        home = drone.home_position
        mission = [
            MissionItem(22, 0, 0, 20.0),  # NAV_TAKEOFF to 20 m
            MissionItem(16, home.lat_deg + 0.0009, home.lon_deg, 20.0),  # 100 m north
            MissionItem(16, home.lat_deg + 0.0009, home.lon_deg + 0.0010, 25.0),
            MissionItem(16, home.lat_deg, home.lon_deg + 0.0010, 20.0),
            MissionItem(21, home.lat_deg, home.lon_deg, 0.0),  # NAV_LAND at home
        ]
        result = await gateway.fleet.upload_mission("drone-1", mission)
        assert result.value == len(mission) + 1  # ArduPilot's home item in front
        assert await gateway.fleet.download_mission("drone-1") == mission
        await until(lambda: drone.gps_fix_type >= 3, what="GPS fix")
        await gateway.fleet.execute("drone-1", SetMode("GUIDED"))
        await gateway.fleet.execute("drone-1", Arm())
        await gateway.fleet.execute("drone-1", SetMode("AUTO"))
        await gateway.fleet.start_mission("drone-1")
        await until(lambda: drone.armed and not drone.landed, what="take-off")
        await until(lambda: drone.landed and not drone.armed, timeout=60, what="mission finished and landed")
        assert haversine_m(drone.lat_deg, drone.lon_deg, home.lat_deg, home.lon_deg) < 5.0
        await asyncio.sleep(0.5)
        await gateway.writer.flush()  # type: ignore[union-attr]
        peak = query(db, "SELECT max(alt_rel_m), max(lat) FROM telemetry")
        assert peak[0][0] > 20.0 and peak[0][1] > home.lat_deg + 0.0008  # it flew the mission
        types = [r[0] for r in query(db, "SELECT type FROM events ORDER BY time, id")]
        assert "armed" in types and "disarmed" in types and "mode_changed" in types


async def test_rtl_and_land_and_refused_commands(gateway: Gateway, db: str) -> None:
    async with SimulatedDrone(2, _target(gateway), time_factor=TIME_FACTOR, seed=2) as drone:
        await until(lambda: "drone-2" in gateway.live.latest and drone.gps_fix_type >= 3, what="drone-2 ready")
        with pytest.raises(CommandRejected):
            await gateway.fleet.execute("drone-2", Takeoff(15.0))  # not armed: the autopilot refuses
        await gateway.fleet.execute("drone-2", SetMode("GUIDED"))
        await gateway.fleet.execute("drone-2", Arm())
        await gateway.fleet.execute("drone-2", Takeoff(15.0))
        await until(lambda: drone.relative_alt_m > 14.0, what="take-off to 15 m")
        home = drone.home_position
        await gateway.fleet.execute("drone-2", Goto(home.lat_deg + 0.0005, home.lon_deg, 15.0))
        await until(lambda: haversine_m(drone.lat_deg, drone.lon_deg, home.lat_deg + 0.0005, home.lon_deg) < 3,
                    what="reposition 55 m north")
        await gateway.fleet.execute("drone-2", ReturnHome())
        await until(lambda: drone.landed and not drone.armed, timeout=60, what="RTL landed and disarmed")
        assert haversine_m(drone.lat_deg, drone.lon_deg, home.lat_deg, home.lon_deg) < 3.0
        await asyncio.sleep(0.3)
        await gateway.writer.flush()  # type: ignore[union-attr]
        modes = [r[0] for r in query(db, "SELECT detail->>'to' FROM events WHERE type = 'mode_changed' "
                                         "ORDER BY time, id")]
        assert "RTL" in modes
        last = query(db, "SELECT armed, alt_rel_m FROM vehicle_latest")
        assert last[0][0] is False and math.isclose(last[0][1], 0.0, abs_tol=1.0)


async def test_link_loss_gives_offline_then_online(gateway: Gateway, db: str) -> None:
    async with SimulatedDrone(3, _target(gateway), time_factor=1.0, seed=3) as drone:
        await until(lambda: gateway.live.online.get("drone-3") is True, what="online")
        drone.drop_link(3.0)
        await until(lambda: gateway.live.online.get("drone-3") is False, timeout=10, what="offline")
        await until(lambda: gateway.live.online.get("drone-3") is True, timeout=10, what="online again")
        await gateway.writer.flush()  # type: ignore[union-attr]
        types = [r[0] for r in query(db, "SELECT type FROM events WHERE type IN ('online', 'offline') "
                                         "ORDER BY time, id")]
        assert types == ["online", "offline", "online"]
