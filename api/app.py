"""The HTTP API for operators and the command center (FastAPI).

Built around a running ``gateway.service.Gateway``: live state comes from memory, history from the database.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec
import orjson
from fastapi import FastAPI, HTTPException
from fastapi.responses import Response

from drivers.mqtt.contract import SCHEMA_DIR

if TYPE_CHECKING:
    from gateway.service import Gateway

__all__ = ["create_app"]


def _sample_json(sample: Any) -> dict[str, Any]:
    """A sample as JSON, without ``raw``: the message it came from (a whole batch of 50 for MQTT) is not state."""
    doc = msgspec.structs.asdict(sample)
    doc.pop("raw", None)
    doc["time"] = sample.time.isoformat()
    doc["vehicle_time"] = sample.vehicle_time.isoformat() if sample.vehicle_time else None
    return doc


def create_app(gateway: Gateway) -> FastAPI:
    app = FastAPI(title="patrolgate", version="0.1.0",
                  description="Telemetry gateway for city patrol fleets: fleet state, tracks, commands.")

    @app.get("/api/v1/health")
    async def health() -> dict[str, Any]:
        writer = gateway.writer
        database = bool(writer and writer.stats.db_up)
        health: dict[str, Any] = {"status": "ok" if database else "degraded", "database": database}
        if gateway.ingest is not None:  # a worker being started again holds its vehicles' telemetry back
            workers = gateway.ingest.stats()
            health["ingest_workers_alive"] = f"{workers['alive']}/{workers['workers']}"
            if workers["alive"] < workers["workers"]:
                health["status"] = "degraded"
        return health

    @app.get("/api/v1/status")
    async def status() -> dict[str, Any]:
        return gateway.status()

    @app.get("/api/v1/vehicles")
    async def vehicles() -> list[dict[str, Any]]:
        return [
            {"id": vid, "online": gateway.live.online.get(vid), "latest": _sample_json(s)}
            for vid, s in sorted(gateway.live.latest.items())
        ]

    @app.get("/api/v1/vehicles/{vehicle_id}")
    async def vehicle(vehicle_id: str) -> dict[str, Any]:
        sample = gateway.live.latest.get(vehicle_id)
        if sample is None:
            raise HTTPException(404, f"vehicle {vehicle_id!r} has not reported")
        return {"id": vehicle_id, "online": gateway.live.online.get(vehicle_id), "latest": _sample_json(sample)}

    @app.get("/api/v1/schema/mqtt")
    async def mqtt_schemas() -> list[str]:
        """The MQTT contract's JSON Schema files (docs/mqtt.md), for vehicle makers to validate against."""
        return sorted(p.name for p in SCHEMA_DIR.glob("*.json"))

    @app.get("/api/v1/schema/mqtt/{name}", response_class=Response)
    async def mqtt_schema(name: str) -> Response:
        path = SCHEMA_DIR / name
        if path.parent != SCHEMA_DIR or path.suffix != ".json" or not path.is_file():
            raise HTTPException(404, f"no MQTT schema {name!r}; GET /api/v1/schema/mqtt lists them")
        document = path.read_bytes()
        orjson.loads(document)  # a broken file is a server error, not a document
        return Response(document, media_type="application/schema+json")

    return app
