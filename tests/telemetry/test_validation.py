from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from helpers import make_sample

from telemetry.model import VehicleKind
from telemetry.validation import PHYSICAL_RANGES, RangeCheckedSample, ValidationLimits, Validator, haversine_m


def test_accepts_a_plausible_sample() -> None:
    v = Validator()
    assert v.check(make_sample(ground_speed_mps=12.0, battery_pct=80.0, heading_deg=359.0)) is None
    assert v.accepted == 1


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"lat_deg": math.nan}, "invalid_coordinates"),
        ({"lon_deg": math.inf}, "invalid_coordinates"),
        ({"lat_deg": 91.0}, "invalid_coordinates"),
        ({"lon_deg": -180.5}, "invalid_coordinates"),
        ({"lat_deg": 0.0, "lon_deg": 0.0}, "invalid_coordinates"),
        ({"lat_deg": None}, "invalid_coordinates"),
        ({"ground_speed_mps": 250.0}, "impossible_speed"),
        ({"ground_speed_mps": -1.0}, "impossible_speed"),
        ({"ground_speed_mps": math.nan}, "impossible_speed"),
        ({"time": datetime.now(UTC) + timedelta(hours=2)}, "future_timestamp"),
        ({"vehicle_time": datetime.now(UTC) + timedelta(days=1)}, "future_timestamp"),
        ({"vehicle_time": datetime(1980, 1, 6, tzinfo=UTC)}, "stale_timestamp"),
        ({"battery_pct": 140.0}, "out_of_range:battery_pct"),
        ({"alt_msl_m": 50_000.0}, "out_of_range:alt_msl_m"),
        ({"heading_deg": math.nan}, "out_of_range:heading_deg"),
        ({"satellites": 900}, "out_of_range:satellites"),
        ({"fuel_pct": 101.0}, "out_of_range:fuel_pct"),
        ({"odometer_m": -1.0}, "out_of_range:odometer_m"),
    ],
)
def test_rejects_with_reason(fields: dict[str, object], reason: str) -> None:
    v = Validator()
    assert v.check(make_sample(**fields)) == reason
    assert v.rejected[reason] == 1
    assert v.accepted == 0


def test_no_fix_sample_without_position_is_accepted() -> None:
    v = Validator()
    assert v.check(make_sample(lat_deg=None, lon_deg=None, battery_pct=90.0)) is None


def test_exact_duplicate_is_rejected_but_other_vehicle_is_not() -> None:
    v = Validator()
    t = datetime.now(UTC) - timedelta(seconds=1)
    assert v.check(make_sample("car-01", t)) is None
    assert v.check(make_sample("car-01", t)) == "duplicate"
    assert v.check(make_sample("car-02", t)) is None
    assert v.check(make_sample("car-01", t + timedelta(milliseconds=1))) is None


def test_duplicate_uses_vehicle_time_when_present() -> None:
    v = Validator()
    vt = datetime.now(UTC) - timedelta(seconds=3)
    now = datetime.now(UTC) - timedelta(seconds=1)
    assert v.check(make_sample(t=now, vehicle_time=vt)) is None
    # Same vehicle clock, received again later (a redelivery): still a duplicate.
    assert v.check(make_sample(t=now + timedelta(seconds=1), vehicle_time=vt)) == "duplicate"


def test_seeded_times_count_as_duplicates_after_restart() -> None:
    v = Validator()
    t = datetime.now(UTC) - timedelta(seconds=10)
    v.seed("car-01", [t])
    assert v.check(make_sample("car-01", t)) == "duplicate"


def test_teleport_is_an_impossible_speed_but_heals_with_time() -> None:
    v = Validator()
    t = datetime.now(UTC) - timedelta(minutes=10)
    assert v.check(make_sample("drone-1", t, kind=VehicleKind.DRONE)) is None
    # 5 km away one second later: 5,000 m/s.
    far = {"lat_deg": 31.2304 + 0.045, "kind": VehicleKind.DRONE}
    assert v.check(make_sample("drone-1", t + timedelta(seconds=1), **far)) == "impossible_speed"
    # GPS noise of a few metres is never a speed problem, even 10 ms apart.
    near = {"lat_deg": 31.23042, "kind": VehicleKind.DRONE}
    assert v.check(make_sample("drone-1", t + timedelta(milliseconds=10), **near)) is None
    # Two minutes later the same far point is reachable (41 m/s < 60 m/s): accepted.
    assert v.check(make_sample("drone-1", t + timedelta(minutes=2), **far)) is None


def test_split_keeps_rejections_with_reason_and_detail() -> None:
    v = Validator()
    good, bad = v.split([make_sample(), make_sample("car-02", lat_deg=100.0)], source="mqtt")
    assert len(good) == 1
    assert [(r.reason, r.vehicle, r.source) for r in bad] == [("invalid_coordinates", "car-02", "test")]
    assert "lat=100.0" in bad[0].detail


def test_haversine_one_degree_of_latitude() -> None:
    assert haversine_m(0, 0, 1, 0) == pytest.approx(111_195, rel=1e-3)


def test_a_batch_gets_the_reasons_one_by_one_checks_give() -> None:
    """`split` looks a vehicle's state and a kind's speed limit up once per run of samples: whatever the order,
    each sample must get the reason it gets checked alone, in the same sequence."""
    t0 = datetime.now(UTC) - timedelta(minutes=10)
    samples = []
    for i in range(300):
        # Runs of one vehicle, vehicles coming back, both kinds; each vehicle id a new string object per sample.
        vehicle = "".join(["car-", str(i // 7 % 3)]) if i % 5 else "".join(["drone-", str(i % 2)])
        t = t0 + timedelta(seconds=i // 2)  # every other sample repeats its vehicle's time: duplicates
        fields = {"ground_speed_mps": 10.0, "battery_pct": 50.0 + i % 80}  # some beyond 100 %: out of range
        if i % 11 == 0:
            fields["ground_speed_mps"] = 65.0  # beyond a drone's limit (60 m/s), within a car's (70 m/s)
        if i % 23 == 0:
            fields["lat_deg"] = 31.2304 + 0.5  # a jump of 55 km: an impossible speed
        if i % 31 == 0:
            fields["lat_deg"] = 95.0
        samples.append(make_sample(vehicle, t, vehicle_time=t, **fields))
    one_by_one = Validator()
    expected = [one_by_one.check(s) for s in samples]
    batched = Validator()
    good, bad = batched.split(samples, source="test")
    assert [s for s, reason in zip(samples, expected, strict=True) if reason is None] == good
    assert [r.reason for r in bad] == [r for r in expected if r is not None]
    assert {"duplicate", "impossible_speed", "invalid_coordinates", "out_of_range:battery_pct"} <= set(expected)
    assert batched.rejected == one_by_one.rejected and batched.accepted == one_by_one.accepted == len(good)


def test_a_range_checked_sample_skips_only_the_range_check_it_had() -> None:
    """A decoder that held the fields to PHYSICAL_RANGES builds RangeCheckedSample: the validator trusts that,
    but not when its own ranges differ, and every other rule still applies."""
    fields = {"time": datetime.now(UTC) - timedelta(seconds=5), "vehicle": "car-01", "kind": VehicleKind.PATROL_CAR,
              "lat_deg": 31.2304, "lon_deg": 121.4737, "battery_pct": 50.0}
    assert Validator().check(RangeCheckedSample(**fields)) is None
    assert Validator().check(RangeCheckedSample(**{**fields, "lat_deg": 95.0})) == "invalid_coordinates"
    stricter = ValidationLimits(ranges={**PHYSICAL_RANGES, "battery_pct": (60.0, 100.0)})
    assert Validator(stricter).check(RangeCheckedSample(**fields)) == "out_of_range:battery_pct"
    assert Validator(stricter).check(make_sample(**{k: v for k, v in fields.items() if k not in ("time", "vehicle")})
                                     ) == "out_of_range:battery_pct"

