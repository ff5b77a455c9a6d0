"""Flat-earth conversions between WGS84 degrees and a local north/east frame in metres.

A patrol area is a few kilometres across, where an equirectangular projection around a fixed origin is
accurate to centimetres and far cheaper than geodesic maths on every physics step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

EARTH_RADIUS_M = 6_378_137.0


@dataclass(frozen=True, slots=True)
class GeoPoint:
    """A WGS84 position; altitude is metres above mean sea level."""

    lat_deg: float
    lon_deg: float
    alt_msl_m: float


class LocalFrame:
    """North/east metres relative to an origin (the drone's spawn point, like ArduPilot's EKF origin)."""

    def __init__(self, origin_lat_deg: float, origin_lon_deg: float) -> None:
        self.origin_lat_deg = origin_lat_deg
        self.origin_lon_deg = origin_lon_deg
        self._m_per_deg_lat = math.radians(1.0) * EARTH_RADIUS_M
        self._m_per_deg_lon = self._m_per_deg_lat * math.cos(math.radians(origin_lat_deg))

    def to_local(self, lat_deg: float, lon_deg: float) -> tuple[float, float]:
        """(north_m, east_m) of a lat/lon."""
        return (
            (lat_deg - self.origin_lat_deg) * self._m_per_deg_lat,
            (lon_deg - self.origin_lon_deg) * self._m_per_deg_lon,
        )

    def to_global(self, north_m: float, east_m: float) -> tuple[float, float]:
        """(lat_deg, lon_deg) of a local offset."""
        return (
            self.origin_lat_deg + north_m / self._m_per_deg_lat,
            self.origin_lon_deg + east_m / self._m_per_deg_lon,
        )


def offset_latlon(lat_deg: float, lon_deg: float, north_m: float, east_m: float) -> tuple[float, float]:
    """Move a lat/lon by metres north/east (used to spread a fleet around a home point)."""
    return LocalFrame(lat_deg, lon_deg).to_global(north_m, east_m)


def distance_m(lat1_deg: float, lon1_deg: float, lat2_deg: float, lon2_deg: float) -> float:
    """Horizontal distance in metres (haversine; used by tests and diagnostics, not the hot path)."""
    p1, p2 = math.radians(lat1_deg), math.radians(lat2_deg)
    dp = p2 - p1
    dl = math.radians(lon2_deg - lon1_deg)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(a)))


def wrap_pi(angle_rad: float) -> float:
    """Wrap an angle into [-pi, pi)."""
    return (angle_rad + math.pi) % (2 * math.pi) - math.pi


def wrap_360(angle_deg: float) -> float:
    """Wrap an angle into [0, 360)."""
    return angle_deg % 360.0
