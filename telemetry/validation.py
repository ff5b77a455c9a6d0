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
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any

from telemetry.model import UNIX_EPOCH, Rejection, Sample, VehicleKind, utcnow

__all__ = ["PHYSICAL_RANGES", "RangeCheckedSample", "ValidationLimits", "Validator", "haversine_m"]

_EARTH_RADIUS_M = 6_371_008.8
#: Metres per degree of a great circle: R * |dlat| + R * |dlon| (in radians) bounds any great-circle distance
#: from above (the way along the meridian, then along the parallel, is never shorter), for a cheap first test.
_M_PER_DEG = _EARTH_RADIUS_M * math.pi / 180.0
_EPOCH_2000 = datetime(2000, 1, 1, tzinfo=UTC)


def haversine_m(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance in metres between two WGS84 points (degrees); error < 0.5 % (spherical Earth)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp = p2 - p1
    dl = math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * _EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


#: The physical (min, max) of every bounded Sample field, in the field's unit; None bounds are open.
PHYSICAL_RANGES: Mapping[str, tuple[float | None, float | None]] = MappingProxyType({
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
    "odometer_m": (0.0, None),
    "fuel_pct": (0.0, 100.0),
})


class RangeCheckedSample(Sample, gc=False):
    """A Sample whose decoder already held every field of PHYSICAL_RANGES to its range.

    The MQTT contract's fast path decodes with these ranges as msgspec constraints, checked in C while parsing
    (a value outside sends the payload down the careful path, whose plain Samples this validator range-checks,
    so the reason is the same ``out_of_range:<field>``). The validator skips only that check, and only while
    its ranges are PHYSICAL_RANGES: it was a quarter of validation's time per sample.
    """


@dataclass(frozen=True, slots=True)
class ValidationLimits:
    """Physical limits; speeds in m/s, distances in metres, times in seconds."""

    max_speed_mps: dict[str, float] = field(
        default_factory=lambda: {VehicleKind.DRONE: 60.0, VehicleKind.PATROL_CAR: 70.0}
    )
    #: A jump shorter than this is GPS noise, never an impossible speed.
    jump_noise_m: float = 50.0
    max_future_s: float = 300.0
    #: Key times remembered per vehicle for the duplicate check: at least this many, at most twice as many.
    duplicate_window: int = 512
    #: (min, max) per optional field; None bounds are open.
    ranges: dict[str, tuple[float | None, float | None]] = field(default_factory=lambda: dict(PHYSICAL_RANGES))


_NO_VEHICLE = object()


@dataclass(slots=True)
class _VehicleState:
    last_lat: float | None = None
    last_lon: float | None = None
    last_time: datetime | None = None
    # Remembered key times (as offsets from the Unix epoch) in two generations: ``recent`` fills up to the
    # window, then becomes ``older``.
    recent: set[timedelta] = field(default_factory=set)
    older: set[timedelta] = field(default_factory=set)


def _range_checker(ranges: Mapping[str, tuple[float | None, float | None]]) -> Callable[[Any], str | None]:
    """One straight-line function checking every bounded field: a loop over the fields cost as much as all the
    other checks together. NaN fails the comparison, so it is out of range, as None bounds are open."""
    lines = ["def check(s):"]
    bounds: dict[str, float] = {}
    for i, (name, (lo, hi)) in enumerate(ranges.items()):
        if not name.isidentifier():
            raise ValueError(f"not a sample field: {name!r}")
        bounds[f"lo{i}"] = -math.inf if lo is None else lo
        bounds[f"hi{i}"] = math.inf if hi is None else hi
        lines += [f"    v = s.{name}",
                  f"    if v is not None and not lo{i} <= v <= hi{i}:",
                  f"        return {'out_of_range:' + name!r}"]
    lines.append("    return None")
    namespace: dict[str, Any] = dict(bounds)
    exec(compile("\n".join(lines) + "\n", "<validation ranges>", "exec"), namespace)
    check: Callable[[Any], str | None] = namespace["check"]
    return check


class Validator:
    """Checks samples one by one; keeps per-vehicle state for duplicates and position jumps.

    Not thread-safe: the gateway's pipeline owns one and calls it from the event loop.
    """

    def __init__(self, limits: ValidationLimits | None = None) -> None:
        self.limits = limits or ValidationLimits()
        self._out_of_range = _range_checker(self.limits.ranges)
        #: The sample type whose ranges need no check here (None when the limits use other ranges).
        self._range_checked = RangeCheckedSample if self.limits.ranges == PHYSICAL_RANGES else None
        self.rejected: Counter[str] = Counter()
        self.accepted = 0
        self._vehicles: dict[str, _VehicleState] = {}

    def seed(self, vehicle: str, key_times: list[datetime]) -> None:
        """Remember already-stored timestamps (after a restart) so redelivered messages count as duplicates."""
        state = self._vehicles.setdefault(vehicle, _VehicleState())
        for t in key_times[-self.limits.duplicate_window :]:
            self._remember_mark(state, t - UNIX_EPOCH)

    def check(self, sample: Sample, now: datetime | None = None) -> str | None:
        """The reason code when ``sample`` must be rejected, else None (and the sample is remembered)."""
        now = now or utcnow()
        _, bad = self._partition([sample], now + timedelta(seconds=self.limits.max_future_s))
        return bad[0][1] if bad else None

    def split(self, samples: list[Sample], source: str) -> tuple[list[Sample], list[Rejection]]:
        """Partition a driver's samples into accepted ones and rejections ready to store."""
        now = utcnow()
        good, bad = self._partition(samples, now + timedelta(seconds=self.limits.max_future_s))
        return good, [
            Rejection(time=now, source=s.source or source, reason=reason, vehicle=s.vehicle, detail=describe(s),
                      raw=s.raw)
            for s, reason in bad
        ]

    def _partition(self, samples: list[Sample], horizon: datetime) -> tuple[list[Sample], list[tuple[Sample, str]]]:
        """Accepted samples (remembered for the duplicate and jump checks), and the others with their reason.

        One loop with every rule written out: per sample it runs at the ingest rate (hundreds of thousands a
        second, on the event loop), and a method call per rule and per remembered time cost a fifth of it.
        The vehicle's state and the kind's speed limit are looked up again only when they change: the samples
        of a batched message come in a row.
        """
        limits = self.limits
        max_speed, noise_m, window = limits.max_speed_mps, limits.jump_noise_m, limits.duplicate_window
        out_of_range, range_checked, vehicles = self._out_of_range, self._range_checked, self._vehicles
        epoch, epoch_2000 = UNIX_EPOCH, _EPOCH_2000
        good: list[Sample] = []
        bad: list[tuple[Sample, str]] = []
        keep, refuse = good.append, bad.append
        vehicle: object = _NO_VEHICLE  # no vehicle string is this object: the first sample looks its state up
        state = _VehicleState()
        kind: VehicleKind | None = None
        limit = 70.0
        for s in samples:
            lat, lon = s.lat_deg, s.lon_deg
            if lat is None or lon is None:
                if lat is not lon:
                    refuse((s, "invalid_coordinates"))
                    continue
            elif not (-90.0 <= lat <= 90.0 and -180.0 <= lon <= 180.0) or (lat == 0.0 and lon == 0.0):
                refuse((s, "invalid_coordinates"))  # NaN fails the comparisons too
                continue
            if s.kind is not kind:
                kind = s.kind
                limit = max_speed.get(kind, 70.0)
            speed = s.ground_speed_mps
            if speed is not None and not 0.0 <= speed <= limit:
                refuse((s, "impossible_speed"))
                continue
            key = s.vehicle_time
            if key is None:
                key = s.time
                if key > horizon:
                    refuse((s, "future_timestamp"))
                    continue
            elif s.time > horizon or key > horizon:
                refuse((s, "future_timestamp"))
                continue
            elif key < epoch_2000:
                refuse((s, "stale_timestamp"))
                continue
            if type(s) is not range_checked:
                reason = out_of_range(s)
                if reason is not None:
                    refuse((s, reason))
                    continue
            if s.vehicle is not vehicle:  # identity: the samples of one message share the string
                vehicle = s.vehicle
                found = vehicles.get(vehicle)
                if found is None:
                    found = vehicles[vehicle] = _VehicleState()
                state = found
            # Duplicates are found by the time's offset from the epoch, a timedelta: hashing an aware datetime
            # costs twice as much (it builds a UTC copy of itself first), once per sample.
            mark = key - epoch
            recent = state.recent
            if mark in recent or mark in state.older:
                refuse((s, "duplicate"))
                continue
            last_lat, last_time = state.last_lat, state.last_time
            if lat is not None and last_lat is not None and last_time is not None:
                last_lon = state.last_lon or 0.0
                # Most fixes are metres apart: the cheap upper bound settles them without trigonometry.
                if (abs(lat - last_lat) + abs(lon - last_lon)) * _M_PER_DEG > noise_m:  # type: ignore[operator]
                    distance_m = haversine_m(last_lat, last_lon, lat, lon)  # type: ignore[arg-type]
                    if distance_m > noise_m:
                        dt_s = abs((key - last_time).total_seconds())
                        if dt_s == 0 or distance_m / dt_s > limit:
                            refuse((s, "impossible_speed"))
                            continue
            recent.add(mark)
            if len(recent) >= window:
                state.older, state.recent = recent, set()
            if lat is not None and (last_time is None or key >= last_time):
                state.last_lat, state.last_lon, state.last_time = lat, lon, key
            keep(s)
        self.accepted += len(good)
        rejected = self.rejected
        for _, reason in bad:
            rejected[reason] += 1
        return good, bad

    def _remember_mark(self, state: _VehicleState, mark: timedelta) -> None:
        recent = state.recent
        recent.add(mark)
        if len(recent) >= self.limits.duplicate_window:
            state.older, state.recent = recent, set()


def describe(s: Sample) -> str:
    """A short human-readable account of a rejected sample for the ``rejected.detail`` column."""
    return (
        f"vehicle={s.vehicle} time={s.key_time.isoformat()} lat={s.lat_deg} lon={s.lon_deg} "
        f"speed_mps={s.ground_speed_mps} alt_msl_m={s.alt_msl_m} battery_pct={s.battery_pct}"
    )
