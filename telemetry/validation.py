"""Plausibility checks between the drivers and storage.

A sample that fails a rule is not stored as telemetry: it becomes a `Rejection` with a reason code (counted per
reason, kept in the ``rejected`` table), so bad input never disappears silently and never poisons a batch.

Reason codes: ``invalid_coordinates`` (NaN, infinite, out of range, or exactly 0/0 "null island"),
``impossible_speed`` (reported speed out of range for the kind, or the jump from the last accepted position
implies one), ``future_timestamp``, ``stale_timestamp`` (a vehicle clock before 2000), ``duplicate`` (same vehicle,
same timestamp), ``out_of_range:<field>`` for any other field outside its physical range.
"""

from __future__ import annotations

import math
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from operator import attrgetter

from telemetry.model import Rejection, Sample, VehicleKind, utcnow

__all__ = ["ValidationLimits", "Validator", "haversine_m"]

_EARTH_RADIUS_M = 6_371_008.8
_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS84 points (degrees); error < 0.5 % (spherical Earth)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Physical limits; speeds in m/s, distances in metres, times in seconds."""

    max_speed_mps: dict[str, float] = field(
        default_factory=lambda: {VehicleKind.DRONE: 60.0, VehicleKind.PATROL_CAR: 70.0}
    )
    #: A jump shorter than this is GPS noise, never an impossible speed.
    jump_noise_m: float = 50.0
    max_future_s: float = 300.0
    duplicate_window: int = 512
    #: (min, max) per optional field; None bounds are open.
    ranges: dict[str, tuple[float | None, float | None]] = field(
        default_factory=lambda: {
            "alt_msl_m": (-1000.0, 20_000.0),
            "alt_rel_m": (-1000.0, 20_000.0),
            "heading_deg": (0.0, 360.0),
            "climb_mps": (-100.0, 100.0),
            "roll_deg": (-180.0, 180.0),
            "pitch_deg": (-180.0, 180.0),
            "yaw_deg": (-180.0, 360.0),
            "battery_pct": (0.0, 100.0),
            "battery_v": (0.0, 1000.0),
            "gps_fix": (0, 8),
            "satellites": (0, 255),
            "link_quality_pct": (0.0, 100.0),
        }
    )


@dataclass(slots=True)
class _VehicleState:
    last_lat: float | None = None
    last_lon: float | None = None
    last_time: datetime | None = None
    recent: OrderedDict[datetime, None] = field(default_factory=OrderedDict)


class Validator:
    """Checks samples one by one; keeps per-vehicle state for duplicates and position jumps.

    Not thread-safe: the gateway's pipeline owns one and calls it from the event loop.
    """

    def __init__(self, limits: ValidationLimits | None = None) -> None:
        self.limits = limits or ValidationLimits()
        names = tuple(self.limits.ranges)
        self._range_names = names
        self._range_values = attrgetter(*names)
        self._range_bounds = tuple(
            (-math.inf if lo is None else lo, math.inf if hi is None else hi) for lo, hi in self.limits.ranges.values()
        )
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._vehicles: dict[str, _VehicleState] = {}

    def seed(self, vehicle: str, key_times: list[datetime]) -> None:
        """Remember already-stored timestamps (after a restart) so redelivered messages count as duplicates."""
        state = self._vehicles.setdefault(vehicle, _VehicleState())
        for t in key_times[-self.limits.duplicate_window :]:
            state.recent[t] = None

    def check(self, sample: Sample, now: datetime | None = None) -> str | None:
        """The reason code when ``sample`` must be rejected, else None (and the sample is remembered)."""
        now = now or utcnow()
        reason = self._reason(sample, now + timedelta(seconds=self.limits.max_future_s))
        if reason is None:
            self._remember(sample)
            self.accepted += 1
        else:
            self.rejected[reason] += 1
        return reason

    def split(self, samples: list[Sample], source: str) -> tuple[list[Sample], list[Rejection]]:
        """Partition a driver's samples into accepted ones and rejections ready to store."""
        now = utcnow()
        horizon = now + timedelta(seconds=self.limits.max_future_s)
        good: list[Sample] = []
        bad: list[Rejection] = []
        reason_for, remember, rejected = self._reason, self._remember, self.rejected
        for s in samples:
            reason = reason_for(s, horizon)
            if reason is None:
                remember(s)
                good.append(s)
            else:
                rejected[reason] += 1
                bad.append(
                    Rejection(time=now, source=s.source or source, reason=reason, vehicle=s.vehicle,
                              detail=describe(s), raw=s.raw)
                )
        self.accepted += len(good)
        return good, bad

    def _reason(self, s: Sample, horizon: datetime) -> str | None:
        lat, lon = s.lat_deg, s.lon_deg
        if lat is None or lon is None:
            if lat is not lon:
                return "invalid_coordinates"
        elif not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
            return "invalid_coordinates"  # NaN fails the comparisons too
        limit = self.limits.max_speed_mps.get(s.kind, 70.0)
        speed = s.ground_speed_mps
        if speed is not None and not 0.0 <= speed <= limit:
            return "impossible_speed"
        vehicle_time = s.vehicle_time
        if s.time > horizon or (vehicle_time is not None and vehicle_time > horizon):
            return "future_timestamp"
        if vehicle_time is not None and vehicle_time < _EPOCH_2000:
            return "stale_timestamp"
        for value, (lo, hi), name in zip(self._range_values(s), self._range_bounds, self._range_names, strict=True):
            if value is not None and not lo <= value <= hi:
                return f"out_of_range:{name}"
        state = self._vehicles.get(s.vehicle)
        if state is None:
            return None
        key = s.key_time
        if key in state.recent:
            return "duplicate"
        if lat is not None and lon is not None and state.last_lat is not None and state.last_time is not None:
            distance_m = haversine_m(state.last_lat, state.last_lon or 0.0, lat, lon)
            if distance_m > self.limits.jump_noise_m:
                dt_s = abs((key - state.last_time).total_seconds())
                if dt_s == 0 or distance_m / dt_s > limit:
                    return "impossible_speed"
        return None

    def _remember(self, s: Sample) -> None:
        state = self._vehicles.get(s.vehicle)
        if state is None:
            state = self._vehicles[s.vehicle] = _VehicleState()
        key = s.key_time
        state.recent[key] = None
        if len(state.recent) > self.limits.duplicate_window:
            state.recent.popitem(last=False)
        if s.lat_deg is not None and (state.last_time is None or key >= state.last_time):
            state.last_lat, state.last_lon, state.last_time = s.lat_deg, s.lon_deg, key


def describe(s: Sample) -> str:
    """A short human-readable account of a rejected sample for the ``rejected.detail`` column."""
    return (
        f"vehicle={s.vehicle} time={s.key_time.isoformat()} lat={s.lat_deg} lon={s.lon_deg} "
        f"speed_mps={s.ground_speed_mps} alt_msl_m={s.alt_msl_m} battery_pct={s.battery_pct}"
    )
