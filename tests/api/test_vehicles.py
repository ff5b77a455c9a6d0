"""The fleet endpoints serve the live state: every model field with its unit in the name, never the raw message."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import httpx
import jsonschema
from helpers import make_sample

from api.app import create_app
from drivers.mqtt.contract import SCHEMA_DIR
from gateway.config import load_settings
from gateway.service import Gateway
from telemetry.model import VehicleKind


async def test_a_cars_latest_state_has_its_car_fields_and_not_its_raw_payload() -> None:
    gateway = Gateway(load_settings(database={"dsn": "postgresql://unused"}, api={"enabled": False}))
    t = datetime(2026, 11, 28, 8, 0, tzinfo=UTC)
    gateway.live.update([
        make_sample("car-03", t, kind=VehicleKind.PATROL_CAR, vehicle_time=t - timedelta(milliseconds=80),
                    odometer_m=12345.5, fuel_pct=55.0, rssi_dbm=-71.0, seq=7, raw=b'[{"v": 1}]' * 50),
    ])
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        one = (await client.get("/api/v1/vehicles/car-03")).json()
        fleet = (await client.get("/api/v1/vehicles")).json()
        missing = await client.get("/api/v1/vehicles/car-99")
    latest = one["latest"]
    assert (latest["odometer_m"], latest["fuel_pct"], latest["rssi_dbm"], latest["seq"]) == (12345.5, 55.0, -71.0, 7)
    assert latest["vehicle_time"] == "2026-11-28T07:59:59.920000+00:00"
    assert "raw" not in latest
    assert fleet == [one]
    assert missing.status_code == 404


async def test_the_mqtt_contract_schemas_are_served_as_kept_in_the_repository() -> None:
    gateway = Gateway(load_settings(database={"dsn": "postgresql://unused"}, api={"enabled": False}))
    transport = httpx.ASGITransport(app=create_app(gateway))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        names = (await client.get("/api/v1/schema/mqtt")).json()
        served = {name: await client.get(f"/api/v1/schema/mqtt/{name}") for name in names}
        missing = await client.get("/api/v1/schema/mqtt/nope.json")
        escape = await client.get("/api/v1/schema/mqtt/%2E%2E")  # the handler's own guard, not the router
    assert names == ["ack.v1.json", "command.v1.json", "event.v1.json", "telemetry.v1.json"]
    for name, response in served.items():
        assert response.headers["content-type"] == "application/schema+json"
        assert response.json() == json.loads((SCHEMA_DIR / name).read_text())
        jsonschema.Draft202012Validator.check_schema(response.json())
    assert missing.status_code == 404 and "GET /api/v1/schema/mqtt lists them" in missing.json()["detail"]
    assert escape.status_code == 404 and "no MQTT schema '..'" in escape.json()["detail"]
