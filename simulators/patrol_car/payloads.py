"""Wire encoding of the contract v1 objects, and the deliberately broken telemetry payloads of the
malformed-payload fault."""

from __future__ import annotations

import random
from typing import Any

import orjson

__all__ = ["encode", "event_object", "malformed_telemetry"]


def encode(obj: Any) -> bytes:
    return orjson.dumps(obj)


def event_object(event_id: str, ts_ms: int, etype: str, lat: float, lon: float,
                 detail: dict[str, Any] | None) -> dict[str, Any]:
    return {"v": 1, "id": event_id, "ts": ts_ms, "type": etype, "lat": round(lat, 7), "lon": round(lon, 7),
            "detail": detail}


def malformed_telemetry(kind: str, sample: dict[str, Any], rng: random.Random) -> bytes:
    """A bad payload derived from a good sample; each kind breaks exactly one rule of the contract."""
    if kind == "not_json":
        good = orjson.dumps(sample)
        return good[: rng.randint(5, max(6, len(good) // 2))]  # a truncated upload
    bad = dict(sample)
    if kind == "wrong_types":
        bad["ts"] = str(sample["ts"])
        bad["lat"] = str(sample["lat"])
        bad["lon"] = str(sample["lon"])
        bad["speed_mps"] = "fast"
    elif kind == "lat_out_of_range":
        bad["lat"] = rng.choice((1.0, -1.0)) * rng.uniform(90.5, 200.0)
    elif kind == "unknown_version":
        bad["v"] = 99
    else:
        raise ValueError(f"unknown malformed kind {kind!r}")
    return orjson.dumps(bad)
