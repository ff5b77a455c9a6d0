"""The MQTT contract, version 1 (docs/mqtt.md): topics, and payloads decoded into the telemetry model.

Decoding is strict about types and lenient about extras: a field of the wrong type, a missing required field or
an unknown contract version rejects the payload (or, in a batch, that one element) with a reason code; fields
the contract does not name are kept in ``Sample.extra``. Range checks (coordinates, speeds, clocks) are left to
the pipeline's validation, the same for every protocol (the fast path holds fields to their physical ranges while
parsing, only so that validation can skip that check for its samples: see ``_WireSample``). Reason codes:
``bad_topic``, ``bad_json``, ``not_an_object``, ``unknown_version``, ``missing_field:<name>``,
``wrong_type:<name>``, ``batch_too_large``, ``empty_batch``, ``bad_status``, ``vehicle_not_allowed``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import orjson

from telemetry.model import UNIX_EPOCH, Event, Sample, VehicleKind
from telemetry.validation import PHYSICAL_RANGES, RangeCheckedSample

__all__ = [
    "CONTRACT_VERSION",
    "MAX_BATCH",
    "SCHEMA_DIR",
    "ContractError",
    "Topic",
    "decode_ack",
    "decode_event",
    "decode_status",
    "decode_telemetry",
    "encode_command",
    "parse_topic",
]

CONTRACT_VERSION = 1
MAX_BATCH = 1000
#: The contract's JSON Schema files (``<payload>.v1.json``), kept with the code that implements it.
SCHEMA_DIR = Path(__file__).parent / "schema"
VEHICLE_ID_RE = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_KINDS = {"patrol_car": VehicleKind.PATROL_CAR, "drone": VehicleKind.DRONE}

# contract field -> (Sample attribute, accepted JSON types)
_NUM = (int, float)
_FIELDS: dict[str, tuple[str, tuple[type, ...]]] = {
    "alt_m": ("alt_msl_m", _NUM),
    "alt_rel_m": ("alt_rel_m", _NUM),
    "speed_mps": ("ground_speed_mps", _NUM),
    "climb_mps": ("climb_mps", _NUM),
    "heading_deg": ("heading_deg", _NUM),
    "roll_deg": ("roll_deg", _NUM),
    "pitch_deg": ("pitch_deg", _NUM),
    "yaw_deg": ("yaw_deg", _NUM),
    "battery_pct": ("battery_pct", _NUM),
    "battery_v": ("battery_v", _NUM),
    "mode": ("mode", (str,)),
    "armed": ("armed", (bool,)),
    "gps_fix": ("gps_fix", (int,)),
    "satellites": ("satellites", (int,)),
    "link_quality_pct": ("link_quality_pct", _NUM),
    "fuel_pct": ("fuel_pct", _NUM),
    "odometer_m": ("odometer_m", _NUM),
    "rssi_dbm": ("rssi_dbm", _NUM),
    "seq": ("seq", (int,)),
}
_CORE = {"v", "ts", "lat", "lon", "kind"}
#: Keys that become Sample attributes; everything else (keys the contract does not name) goes to ``extra``.
_MAPPED = _CORE | set(_FIELDS)


class ContractError(ValueError):
    """A message breaks the contract; ``reason`` is the code stored with the rejection."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True, slots=True)
class Topic:
    vehicle: str
    channel: str  # telemetry | status | event | cmd/ack


def parse_topic(topic: str, prefix: str) -> Topic:
    """``{prefix}/{vehicle_id}/{channel}`` -> Topic; raises ContractError('bad_topic')."""
    if not topic.startswith(prefix + "/"):
        raise ContractError("bad_topic", f"{topic!r} is not under {prefix!r}")
    rest = topic[len(prefix) + 1 :]
    vehicle, _, channel = rest.partition("/")
    if not VEHICLE_ID_RE.match(vehicle) or channel not in ("telemetry", "status", "event", "cmd/ack"):
        raise ContractError("bad_topic", f"{topic!r}: expected {prefix}/<vehicle_id>/(telemetry|status|event|cmd/ack)")
    return Topic(vehicle, channel)


def _load(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError as exc:
        raise ContractError("bad_json", str(exc)) from None


def _check_version(doc: dict[str, Any]) -> None:
    version = doc.get("v")
    if version is None:
        raise ContractError("missing_field:v", "every payload carries the contract version, 'v': 1")
    if version != CONTRACT_VERSION or isinstance(version, bool):
        raise ContractError("unknown_version", f"v={version!r}; this gateway speaks v={CONTRACT_VERSION}")


def _number(doc: dict[str, Any], name: str) -> float:
    value = doc.get(name)
    if value is None:
        raise ContractError(f"missing_field:{name}")
    if not isinstance(value, _NUM) or isinstance(value, bool):
        raise ContractError(f"wrong_type:{name}", f"expected a number, got {type(value).__name__}")
    return float(value)


def _ts(doc: dict[str, Any]) -> datetime:
    ts = doc.get("ts")
    if ts is None:
        raise ContractError("missing_field:ts")
    if not isinstance(ts, int) or isinstance(ts, bool):
        raise ContractError("wrong_type:ts", "expected integer milliseconds since the Unix epoch (UTC)")
    try:
        return UNIX_EPOCH + timedelta(milliseconds=ts)
    except OverflowError:
        raise ContractError("wrong_type:ts", f"{ts} ms is not a representable time") from None


_NUM_TYPES = (int, float)  # checked with type(): bool is an int subclass but not a number here


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _field(doc: dict[str, Any], name: str, types: tuple[type, ...]) -> Any:
    value = doc.get(name)
    if value is None:
        return None
    if type(value) in types:
        if types is _NUM_TYPES:
            return float(value)
        if type(value) is int and not _INT64_MIN <= value <= _INT64_MAX:  # the database's bigint, as _Int64
            raise ContractError(f"wrong_type:{name}", f"{value} does not fit in 64 bits")
        return value
    raise ContractError(f"wrong_type:{name}", f"got {type(value).__name__}")


def _sample(doc: Any, vehicle: str, received: datetime, source: str, raw: bytes) -> Sample:
    """One contract object -> Sample. Runs for every sample of every car: positional, no setattr."""
    if type(doc) is not dict:
        raise ContractError("not_an_object", f"expected a JSON object, got {type(doc).__name__}")
    _check_version(doc)
    vehicle_time = _ts(doc)
    lat, lon = _number(doc, "lat"), _number(doc, "lon")
    kind_name = doc.get("kind", "patrol_car")
    kind = _KINDS.get(kind_name) if isinstance(kind_name, str) else None
    if kind is None:
        raise ContractError("wrong_type:kind", f"expected 'patrol_car' or 'drone', got {kind_name!r}")
    num, text, boolean, integer = _NUM_TYPES, (str,), (bool,), (int,)
    extra = {k: v for k, v in doc.items() if k not in _MAPPED and v is not None}
    return Sample(
        received, vehicle, kind, lat, lon, vehicle_time,
        _field(doc, "alt_m", num), _field(doc, "alt_rel_m", num), _field(doc, "heading_deg", num),
        _field(doc, "speed_mps", num), _field(doc, "climb_mps", num), _field(doc, "roll_deg", num),
        _field(doc, "pitch_deg", num), _field(doc, "yaw_deg", num), _field(doc, "battery_pct", num),
        _field(doc, "battery_v", num), _field(doc, "mode", text), _field(doc, "armed", boolean),
        _field(doc, "gps_fix", integer), _field(doc, "satellites", integer), _field(doc, "link_quality_pct", num),
        _field(doc, "odometer_m", num), _field(doc, "fuel_pct", num), _field(doc, "rssi_dbm", num),
        _field(doc, "seq", integer), extra or None, source, raw,
    )


#: JSON integers the careful path keeps as integers: orjson turns wider ones into floats, and an integer wider
#: than 64 bits could not be written to the database or the spool (it crashed the writer before this bound).
_Int64 = Annotated[int, msgspec.Meta(ge=_INT64_MIN, le=_INT64_MAX)]


def _wire_type(attribute: str, types: tuple[type, ...]) -> Any:
    """The msgspec type of a ``_FIELDS`` entry, with the careful path's rules (see ``_WireSample``), bounded by
    the attribute's physical range when it has one (see ``RangeCheckedSample``)."""
    lo, hi = PHYSICAL_RANGES.get(attribute, (None, None))
    if types == (int,):
        lo = _INT64_MIN if lo is None else max(math.ceil(lo), _INT64_MIN)  # an integer >= 0.5 is >= 1
        hi = _INT64_MAX if hi is None else min(math.floor(hi), _INT64_MAX)
        return Annotated[int, msgspec.Meta(ge=lo, le=hi)] | None
    if types is _NUM:
        if lo is None and hi is None:
            return float | None
        return Annotated[float, msgspec.Meta(ge=lo, le=hi)] | None
    if attribute in PHYSICAL_RANGES:  # a RangeCheckedSample would claim a check nobody made
        raise TypeError(f"{attribute} has a physical range but the contract does not decode it as a number")
    (single,) = types
    return single | None


#: A contract telemetry object exactly as the contract names it: the fast path's schema, built from
#: ``_FIELDS`` so the two paths cannot drift apart. msgspec checks the JSON types while parsing (in C, no dict
#: per sample): numbers accept JSON integers and floats, integers reject floats and booleans, as ``_field``
#: does. Anything it refuses, including keys the contract does not name (kept in ``extra`` by the careful
#: path) and integers beyond 64 bits, goes the careful path, which gives the exact reason and keeps the good
#: elements of a batch. Bounded fields are held to their physical ranges, so its samples are
#: ``RangeCheckedSample``s (a value outside goes the careful path and is rejected by the pipeline's validation,
#: with the same reason). The version and the kind are checked while parsing too (``v`` only ever equals this
#: contract's version, ``kind`` decodes to the enum): a batch of 50 samples saved 50 lookups and comparisons.
_WireSample = msgspec.defstruct(
    "_WireSample",
    [("v", Literal[CONTRACT_VERSION]), ("ts", _Int64), ("lat", float), ("lon", float),
     ("kind", VehicleKind, VehicleKind.PATROL_CAR)]
    + [(name, _wire_type(attribute, types), None) for name, (attribute, types) in _FIELDS.items()],
    forbid_unknown_fields=True,
    gc=False,  # plain values only; one per sample, dropped at once: no reason to track it for the cycle collector
)


_WIRE_DECODER = msgspec.json.Decoder(list[_WireSample] | _WireSample)
_MS = timedelta(milliseconds=1)


def _fast_samples(payload: bytes, vehicle: str, received: datetime, source: str) -> list[Sample] | None:
    """The whole payload as samples when every element is plainly valid, else None (take the careful path)."""
    try:
        doc = _WIRE_DECODER.decode(payload)
    except (msgspec.ValidationError, msgspec.DecodeError, UnicodeDecodeError):  # invalid UTF-8: not a DecodeError
        return None
    wires = doc if type(doc) is list else [doc]
    if not wires or len(wires) > MAX_BATCH:
        return None
    epoch, ms = UNIX_EPOCH, _MS
    try:
        return [
            RangeCheckedSample(
                received, vehicle, w.kind, w.lat, w.lon, epoch + w.ts * ms, w.alt_m, w.alt_rel_m, w.heading_deg,
                w.speed_mps, w.climb_mps, w.roll_deg, w.pitch_deg, w.yaw_deg, w.battery_pct, w.battery_v, w.mode,
                w.armed, w.gps_fix, w.satellites, w.link_quality_pct, w.odometer_m, w.fuel_pct, w.rssi_dbm, w.seq,
                None, source, payload,
            )
            for w in wires
        ]
    except OverflowError:  # a ts beyond datetime's range: the careful path words the error
        return None


def decode_telemetry(payload: bytes, vehicle: str, received: datetime,
                     source: str) -> tuple[list[Sample], list[ContractError]]:
    """One object or a batch array -> samples, plus one error per bad element (the good ones are kept).

    Valid payloads (nearly all) take ``_fast_samples``; the rest are parsed again here, element by element,
    for the exact reason of each bad one. Both paths give equal samples (tested on generated payloads).
    """
    fast = _fast_samples(payload, vehicle, received, source)
    if fast is not None:
        return fast, []
    doc = _load(payload)
    if isinstance(doc, list):
        if not doc:
            raise ContractError("empty_batch")
        if len(doc) > MAX_BATCH:
            raise ContractError("batch_too_large", f"{len(doc)} samples; at most {MAX_BATCH} per message")
        samples: list[Sample] = []
        errors: list[ContractError] = []
        for i, element in enumerate(doc):
            try:
                samples.append(_sample(element, vehicle, received, source, payload))
            except ContractError as exc:
                errors.append(ContractError(exc.reason, f"element {i}: {exc.detail}"))
        return samples, errors
    return [_sample(doc, vehicle, received, source, payload)], []


def decode_status(payload: bytes) -> bool:
    """The plain text ``online`` / ``offline`` -> True / False."""
    text = payload.strip().lower()
    if text == b"online":
        return True
    if text == b"offline":
        return False
    raise ContractError("bad_status", f"expected 'online' or 'offline', got {payload[:40]!r}")


def decode_event(payload: bytes, vehicle: str, kind: VehicleKind | None) -> Event:
    doc = _load(payload)
    if not isinstance(doc, dict):
        raise ContractError("not_an_object")
    _check_version(doc)
    event_type = doc.get("type")
    if not isinstance(event_type, str) or not event_type or len(event_type) > 40:
        raise ContractError("wrong_type:type", "expected a short event type word such as 'sos'")
    detail = doc.get("detail") or {}
    if not isinstance(detail, dict):
        raise ContractError("wrong_type:detail", "expected a JSON object")
    if "id" in doc:
        detail = {**detail, "event_id": doc["id"]}
    lat = doc.get("lat")
    lon = doc.get("lon")
    return Event(_ts(doc), vehicle, event_type, detail, kind=kind,
                 lat_deg=float(lat) if isinstance(lat, _NUM) else None,
                 lon_deg=float(lon) if isinstance(lon, _NUM) else None)


@dataclass(frozen=True, slots=True)
class Ack:
    command_id: str
    result: str
    reason: str | None


def decode_ack(payload: bytes) -> Ack:
    doc = _load(payload)
    if not isinstance(doc, dict):
        raise ContractError("not_an_object")
    _check_version(doc)
    command_id, result = doc.get("id"), doc.get("result")
    if not isinstance(command_id, str) or result not in ("accepted", "rejected", "unsupported", "failed"):
        raise ContractError("wrong_type:result", "an ack needs a string 'id' and a known 'result'")
    reason = doc.get("reason")
    return Ack(command_id, result, reason if isinstance(reason, str) else None)


def encode_command(command_id: str, command_type: str, params: dict[str, Any], now: datetime) -> bytes:
    return orjson.dumps({"v": CONTRACT_VERSION, "id": command_id, "ts": int(now.timestamp() * 1000),
                         "type": command_type, "params": params})
