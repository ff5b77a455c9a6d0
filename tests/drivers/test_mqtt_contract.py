"""The MQTT contract decoder against the captured example payloads and the JSON Schema files."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime
from pathlib import Path

import jsonschema
import orjson
import pytest
from msgspec.structs import astuple

from drivers.mqtt import contract
from drivers.mqtt.contract import (
    ContractError,
    decode_ack,
    decode_event,
    decode_status,
    decode_telemetry,
    encode_command,
    parse_topic,
)
from telemetry.model import Sample, VehicleKind
from telemetry.validation import RangeCheckedSample, Validator

MQTT = Path(__file__).resolve().parents[2] / "drivers" / "mqtt"
NOW = datetime(2026, 11, 28, 12, tzinfo=UTC)


def _data(name: str) -> bytes:
    return (MQTT / "testdata" / name).read_bytes()


def _schema(name: str) -> dict[str, object]:
    return json.loads((MQTT / "schema" / name).read_text())


@pytest.mark.parametrize(
    ("example", "schema"),
    [("telemetry_single.json", "telemetry.v1.json"), ("telemetry_batch.json", "telemetry.v1.json"),
     ("drone_telemetry.json", "telemetry.v1.json"), ("event_sos.json", "event.v1.json"),
     ("ack_accepted.json", "ack.v1.json")],
)
def test_examples_conform_to_the_published_schemas(example: str, schema: str) -> None:
    jsonschema.validate(json.loads(_data(example)), _schema(schema))


@pytest.mark.parametrize("example", ["bad_wrong_type.json", "bad_version.json"])
def test_bad_examples_fail_the_schema_too(example: str) -> None:
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(_data(example)), _schema("telemetry.v1.json"))


def test_single_sample_fields_and_units() -> None:
    [s], errors = decode_telemetry(_data("telemetry_single.json"), "car-03", NOW, "mqtt:t")
    assert errors == []
    assert (s.vehicle, s.kind, s.lat_deg, s.lon_deg, s.alt_msl_m, s.ground_speed_mps, s.heading_deg) == (
        "car-03", VehicleKind.PATROL_CAR, 31.230416, 121.473701, 4.2, 8.3, 92.0)
    assert s.vehicle_time == datetime(2025, 11, 28, 12, 0, 0, 123000, tzinfo=UTC)
    assert s.time == NOW
    assert (s.battery_pct, s.battery_v, s.mode, s.gps_fix, s.satellites) == (76.5, 48.1, "patrol", 3, 14)
    assert (s.seq, s.odometer_m, s.fuel_pct, s.rssi_dbm) == (1234, 12345.6, None, -71.0)
    assert s.extra is None  # every key of this payload is a contract field
    assert s.raw == _data("telemetry_single.json")


def test_drone_over_mqtt() -> None:
    [s], _ = decode_telemetry(_data("drone_telemetry.json"), "drone-21", NOW, "mqtt:t")
    assert (s.kind, s.alt_rel_m, s.armed, s.mode, s.roll_deg, s.link_quality_pct) == (
        VehicleKind.DRONE, 60.0, True, "AUTO", 2.0, 97.0)


def test_batch_keeps_unknown_keys_as_extra() -> None:
    samples, errors = decode_telemetry(_data("telemetry_batch.json"), "car-01", NOW, "mqtt:t")
    assert errors == [] and len(samples) == 3
    assert samples[2].extra == {"door": "closed"}


def test_a_bad_element_in_a_batch_rejects_only_that_element() -> None:
    batch = b'[{"v":1,"ts":1,"lat":1.5,"lon":2.5},{"v":1,"ts":2,"lat":true,"lon":2.5},{"v":1,"ts":3,"lat":1,"lon":2}]'
    samples, errors = decode_telemetry(batch, "car-01", NOW, "mqtt:t")
    assert [s.lat_deg for s in samples] == [1.5, 1.0]
    assert [e.reason for e in errors] == ["wrong_type:lat"]
    assert "element 1" in errors[0].detail


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"{nope", "bad_json"),
        (b'"just a string"', "not_an_object"),
        (b"[]", "empty_batch"),
        (b"[" + b",".join([b'{"v":1,"ts":1,"lat":1,"lon":1}'] * 1001) + b"]", "batch_too_large"),
        (b'{"v":99,"ts":1,"lat":1,"lon":1}', "unknown_version"),
        (b'{"ts":1,"lat":1,"lon":1}', "missing_field:v"),
        (b'{"v":1,"lat":1,"lon":1}', "missing_field:ts"),
        (b'{"v":1,"ts":1.5,"lat":1,"lon":1}', "wrong_type:ts"),
        (b'{"v":1,"ts":1,"lon":1}', "missing_field:lat"),
        (b'{"v":1,"ts":1,"lat":1,"lon":1,"speed_mps":"fast"}', "wrong_type:speed_mps"),
        (b'{"v":1,"ts":1,"lat":1,"lon":1,"gps_fix":3.5}', "wrong_type:gps_fix"),
        (b'{"v":1,"ts":1,"lat":1,"lon":1,"armed":1}', "wrong_type:armed"),
        (b'{"v":1,"ts":1,"lat":1,"lon":1,"odometer_m":"12 km"}', "wrong_type:odometer_m"),
        (b'{"v":1,"ts":1,"lat":1,"lon":1,"kind":"tank"}', "wrong_type:kind"),
    ],
)
def test_contract_violations_have_reasons(payload: bytes, reason: str) -> None:
    with pytest.raises(ContractError) as info:
        decode_telemetry(payload, "car-01", NOW, "mqtt:t")
    assert info.value.reason == reason


def test_topics() -> None:
    assert parse_topic("patrolgate/v1/car-03/telemetry", "patrolgate/v1").vehicle == "car-03"
    assert parse_topic("patrolgate/v1/car-03/cmd/ack", "patrolgate/v1").channel == "cmd/ack"
    for bad in ("patrolgate/v1/car 03/telemetry", "other/car-03/telemetry", "patrolgate/v1/car-03/video"):
        with pytest.raises(ContractError, match="bad_topic"):
            parse_topic(bad, "patrolgate/v1")


def test_status_event_and_ack() -> None:
    assert decode_status(b"online") is True and decode_status(b"offline\n") is False
    with pytest.raises(ContractError, match="bad_status"):
        decode_status(b"maybe")
    event = decode_event(_data("event_sos.json"), "car-03", VehicleKind.PATROL_CAR)
    assert (event.type, event.lat_deg, event.detail) == ("sos", 31.2304, {"note": "button pressed",
                                                                          "event_id": "e-5f1c"})
    ack = decode_ack(_data("ack_accepted.json"))
    assert (ack.command_id, ack.result, ack.reason) == ("c-000123", "accepted", None)


def _random_element(rng: random.Random) -> dict[str, object]:
    """A contract object with a random subset of fields, each a valid value or (sometimes) a wrong type."""
    element: dict[str, object] = {"v": 1, "ts": rng.randrange(1_600_000_000_000, 1_900_000_000_000),
                                  "lat": rng.uniform(-90, 90), "lon": rng.choice([rng.uniform(-180, 180), 121])}
    valid: dict[str, list[object]] = {
        "kind": ["patrol_car", "drone"], "alt_m": [4.2, 12], "alt_rel_m": [30.5], "heading_deg": [92.0, 0],
        "speed_mps": [8.3, 0], "climb_mps": [-1.5], "roll_deg": [2.0], "pitch_deg": [-3.0], "yaw_deg": [91.0],
        "battery_pct": [76.5, 100], "battery_v": [48.1], "mode": ["patrol", "AUTO"], "armed": [True, False],
        "gps_fix": [3, 0], "satellites": [14], "link_quality_pct": [88.0], "fuel_pct": [55, 55.5],
        "odometer_m": [12345.6, 1000], "rssi_dbm": [-71, -70.5], "seq": [1234], "unnamed_extra": ["x", 3],
    }
    wrong: list[object] = ["text", True, 1.5, [1], {"a": 1}, 10**29, -(2**63) - 1, 2**63]
    for name, values in valid.items():
        roll = rng.random()
        if roll < 0.5:
            element[name] = rng.choice(values)
        elif roll < 0.53:
            element[name] = rng.choice(wrong)
        elif roll < 0.56:
            element[name] = None
    if rng.random() < 0.05:  # beyond a physical range: decodes, then the pipeline's validation rejects it
        name, value = rng.choice([("battery_pct", 100.5), ("gps_fix", 9), ("odometer_m", -1), ("heading_deg", 361)])
        element[name] = value
    if rng.random() < 0.03:
        element["v"] = 2
    if rng.random() < 0.03:
        del element["lat"]
    return element


def _hostile(payload: bytes, rng: random.Random) -> bytes:
    """What json.dumps never writes: invalid UTF-8, a repeated key, a NaN token."""
    roll = rng.random()
    if roll < 0.03:
        return payload.replace(b'"patrol"', b'"\xe9"')
    if roll < 0.06 and payload.startswith(b"{"):
        return payload[:-1] + b', "lat": 45.5}'
    if roll < 0.08:
        return payload.replace(b"76.5", b"NaN")
    return payload


def _careful(payload: bytes, vehicle: str) -> tuple[list[object], list[str]]:
    """The careful path alone (orjson, then ``_sample``), as the decoder takes it when the fast one refuses."""
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return [], ["bad_json"]
    samples, reasons = [], []
    for element in doc if isinstance(doc, list) else [doc]:
        try:
            samples.append(contract._sample(element, vehicle, NOW, "mqtt:t", payload))
        except ContractError as exc:
            reasons.append(exc.reason)
    return samples, reasons


def test_fast_path_and_careful_path_agree_on_generated_payloads() -> None:
    rng = random.Random(20261128)
    fast_taken = out_of_range = 0
    for _ in range(3000):
        batch = [_random_element(rng) for _ in range(rng.choice([1, 1, 3, 50]))]
        payload = _hostile(json.dumps(batch if len(batch) > 1 or rng.random() < 0.3 else batch[0]).encode(), rng)
        expected, reasons = _careful(payload, "car-07")
        fast = contract._fast_samples(payload, "car-07", NOW, "mqtt:t")
        if fast is not None:
            fast_taken += 1
            assert reasons == [], payload  # the fast path never accepts what the careful path refuses
            assert [astuple(f) for f in fast] == [astuple(e) for e in expected]
            for f, e in zip(fast, expected, strict=True):  # ints stay ints in extra, numbers are floats
                assert [type(v) for v in (f.extra or {}).values()] == [type((e.extra or {})[k]) for k in f.extra or {}]
                assert type(f.lat_deg) is float and type(f.alt_msl_m) is type(e.alt_msl_m)
                # Its ranges were checked while parsing: validation skips that check, and must give the same verdict.
                assert type(f) is RangeCheckedSample and type(e) is Sample
                assert Validator().check(f) == Validator().check(e)
        verdicts = [Validator().check(e) or "" for e in expected]
        if any(v.startswith("out_of_range:") for v in verdicts):
            out_of_range += 1
            assert fast is None, payload  # never a RangeCheckedSample with a value beyond its range
        if reasons and (payload.startswith(b"{") or reasons == ["bad_json"]):  # refused whole
            with pytest.raises(ContractError) as refused:
                decode_telemetry(payload, "car-07", NOW, "mqtt:t")
            assert refused.value.reason == reasons[0]
            continue
        samples, errors = decode_telemetry(payload, "car-07", NOW, "mqtt:t")
        assert [astuple(x) for x in samples] == [astuple(e) for e in expected]
        assert [e.reason for e in errors] == reasons
    assert 300 < fast_taken < 3000 and out_of_range > 100  # both paths were exercised, and the ranges


def test_every_command_the_gateway_sends_conforms_to_the_command_schema() -> None:
    """Each fleet command as the MQTT driver puts it on ``.../cmd`` (its contract type and params)."""
    from drivers import commands as c
    from drivers.mqtt.driver import _contract_command

    examples = [
        c.Arm(), c.Disarm(force=True), c.Takeoff(25.0), c.Land(), c.ReturnHome(), c.Goto(31.23, 121.47),
        c.Goto(31.23, 121.47, alt_rel_m=40.0, speed_mps=6.0), c.SetMode("AUTO"), c.StartMission(), c.Hold(),
        c.ResumePatrol(), c.FollowRoute(((31.23, 121.47), (31.24, 121.48)), loop=True, speed_mps=8.0),
        c.UploadMission((c.MissionItem(16, 31.23, 121.47, 30.0),)), c.DownloadMission(),
    ]
    # A new command needs an example here (by name: a slots dataclass leaves its pre-slots class registered too).
    assert {type(e).__name__ for e in examples} == {cls.__name__ for cls in c.Command.__subclasses__()}
    schema = _schema("command.v1.json")
    for command in examples:
        command_type, params = _contract_command(command)
        jsonschema.validate(json.loads(encode_command("c-1", command_type, params, NOW)), schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(json.loads(encode_command("c-1", "self_destruct", {}, NOW)), schema)
