"""The district's street grid: junctions, roads with speed limits, the depot, and metres <-> WGS84.

Cars move in a local flat frame (x east, y north, metres from the district centre) because kinematics are
simple there; only telemetry converts to latitude/longitude. Over a 2.5 km district the equirectangular
projection is accurate to millimetres, far below the simulated GPS noise.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

__all__ = ["EARTH_RADIUS_M", "RoadPoint", "StreetGrid"]

EARTH_RADIUS_M = 6_371_008.8
_DEG = 180.0 / math.pi


@dataclass(frozen=True, slots=True)
class RoadPoint:
    """The point on a road nearest to some position, and the road edge (junction a -> junction b) it lies on."""

    x: float
    y: float
    a: int
    b: int
    distance_m: float


class StreetGrid:
    """A square grid of ``blocks`` x ``blocks`` city blocks around a centre point.

    Junctions are numbered ``j * side + i`` (i east index, j north index, ``side = blocks + 1``). Every
    ``main_every``-th street (both directions, including the outer ring) is a main road with ``main_limit_mps``;
    the others are side streets with ``side_limit_mps``. Junctions where two main roads cross have traffic
    lights. The depot (base) sits on the main road west of the central junction.
    """

    def __init__(
        self,
        center_lat: float = 31.2304,
        center_lon: float = 121.4737,
        blocks: int = 10,
        spacing_m: float = 250.0,
        main_every: int = 5,
        main_limit_mps: float = 50.0 / 3.6,
        side_limit_mps: float = 30.0 / 3.6,
    ) -> None:
        if blocks < 1 or spacing_m <= 0 or main_every < 1:
            raise ValueError("blocks >= 1, spacing_m > 0 and main_every >= 1 are required")
        self.center_lat = center_lat
        self.center_lon = center_lon
        self.blocks = blocks
        self.side = blocks + 1
        self.spacing_m = spacing_m
        self.main_every = main_every
        self.main_limit_mps = main_limit_mps
        self.side_limit_mps = side_limit_mps
        self.half_extent_m = blocks * spacing_m / 2.0
        self._m_per_deg_lat = EARTH_RADIUS_M / _DEG
        self._m_per_deg_lon = EARTH_RADIUS_M * math.cos(math.radians(center_lat)) / _DEG
        n = self.side * self.side
        self.node_x: list[float] = [(k % self.side) * spacing_m - self.half_extent_m for k in range(n)]
        self.node_y: list[float] = [(k // self.side) * spacing_m - self.half_extent_m for k in range(n)]
        self.neighbors: list[tuple[int, ...]] = [self._neighbors(k) for k in range(n)]
        self.signalised: list[bool] = [self.is_main_col(k % self.side) and self.is_main_row(k // self.side)
                                       for k in range(n)]
        centre = self.node(blocks // 2, blocks // 2)
        west = self.node(blocks // 2 - 1, blocks // 2) if blocks >= 2 else centre
        self.base_edge = (west, centre)
        self.base_x = (self.node_x[west] + self.node_x[centre]) / 2.0
        self.base_y = self.node_y[centre]
        self._paths: dict[tuple[int, int], tuple[int, ...]] = {}

    # --- topology -------------------------------------------------------------------------------------------
    @property
    def node_count(self) -> int:
        return self.side * self.side

    def node(self, i: int, j: int) -> int:
        return j * self.side + i

    def is_main_col(self, i: int) -> bool:
        return i % self.main_every == 0

    def is_main_row(self, j: int) -> bool:
        return j % self.main_every == 0

    def _neighbors(self, k: int) -> tuple[int, ...]:
        i, j = k % self.side, k // self.side
        out = []
        if i > 0:
            out.append(k - 1)
        if i < self.blocks:
            out.append(k + 1)
        if j > 0:
            out.append(k - self.side)
        if j < self.blocks:
            out.append(k + self.side)
        return tuple(out)

    def limit(self, a: int, b: int) -> float:
        """Speed limit of the road between two adjacent junctions, m/s."""
        same_row = a // self.side == b // self.side  # an east-west street
        main = self.is_main_row(a // self.side) if same_row else self.is_main_col(a % self.side)
        return self.main_limit_mps if main else self.side_limit_mps

    def edge_length(self, a: int, b: int) -> float:
        return math.hypot(self.node_x[b] - self.node_x[a], self.node_y[b] - self.node_y[a])

    # --- geometry -------------------------------------------------------------------------------------------
    def to_latlon(self, x: float, y: float) -> tuple[float, float]:
        return self.center_lat + y / self._m_per_deg_lat, self.center_lon + x / self._m_per_deg_lon

    def to_xy(self, lat: float, lon: float) -> tuple[float, float]:
        return (lon - self.center_lon) * self._m_per_deg_lon, (lat - self.center_lat) * self._m_per_deg_lat

    def to_xy_array(self, lat: np.ndarray, lon: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Vectorised `to_xy`, for checking thousands of fixes at once."""
        return ((np.asarray(lon, dtype=float) - self.center_lon) * self._m_per_deg_lon,
                (np.asarray(lat, dtype=float) - self.center_lat) * self._m_per_deg_lat)

    def contains(self, x: float, y: float, margin_m: float = 0.0) -> bool:
        lim = self.half_extent_m + margin_m
        return -lim <= x <= lim and -lim <= y <= lim

    def _clamp(self, v: float) -> float:
        return min(max(v, -self.half_extent_m), self.half_extent_m)

    def nearest_node(self, x: float, y: float) -> int:
        i = min(max(round((x + self.half_extent_m) / self.spacing_m), 0), self.blocks)
        j = min(max(round((y + self.half_extent_m) / self.spacing_m), 0), self.blocks)
        return self.node(i, j)

    def project(self, x: float, y: float) -> RoadPoint:
        """The nearest point on any road (the grid lines inside the district)."""
        s, h = self.spacing_m, self.half_extent_m
        # nearest north-south street (column i), point clamped into the district
        i = min(max(round((x + h) / s), 0), self.blocks)
        cy = self._clamp(y)
        col_x = i * s - h
        d_col = math.hypot(x - col_x, y - cy)
        # nearest east-west street (row j)
        j = min(max(round((y + h) / s), 0), self.blocks)
        cx = self._clamp(x)
        row_y = j * s - h
        d_row = math.hypot(x - cx, y - row_y)
        if d_col <= d_row:
            j0 = min(int((cy + h) // s), self.blocks - 1)
            return RoadPoint(col_x, cy, self.node(i, j0), self.node(i, j0 + 1), d_col)
        i0 = min(int((cx + h) // s), self.blocks - 1)
        return RoadPoint(cx, row_y, self.node(i0, j), self.node(i0 + 1, j), d_row)

    def distance_to_road(self, x: np.ndarray | float, y: np.ndarray | float) -> np.ndarray:
        """Distance in metres from each point to the nearest road (vectorised; used by tests and checks)."""
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        s, h = self.spacing_m, self.half_extent_m
        col_x = np.clip(np.round((x + h) / s), 0, self.blocks) * s - h
        row_y = np.clip(np.round((y + h) / s), 0, self.blocks) * s - h
        d_col = np.hypot(x - col_x, y - np.clip(y, -h, h))
        d_row = np.hypot(x - np.clip(x, -h, h), y - row_y)
        return np.minimum(d_col, d_row)

    def road_limit_at(self, x: float, y: float) -> float:
        """Speed limit of the road nearest to a point (the higher one at a junction)."""
        p = self.project(x, y)
        lim = self.limit(p.a, p.b)
        for node in (p.a, p.b):
            if math.hypot(self.node_x[node] - p.x, self.node_y[node] - p.y) < 1.0:
                lim = max(lim, *(self.limit(node, n) for n in self.neighbors[node]))
        return lim

    # --- routing --------------------------------------------------------------------------------------------
    def shortest_path(self, a: int, b: int) -> tuple[int, ...]:
        """Fastest junction sequence from a to b (Dijkstra on travel time at the speed limits), cached."""
        key = (a, b)
        cached = self._paths.get(key)
        if cached is not None:
            return cached
        dist = {a: 0.0}
        prev: dict[int, int] = {}
        heap = [(0.0, a)]
        while heap:
            d, k = heapq.heappop(heap)
            if k == b:
                break
            if d > dist.get(k, math.inf):
                continue
            for n in self.neighbors[k]:
                nd = d + self.edge_length(k, n) / self.limit(k, n)
                if nd < dist.get(n, math.inf) - 1e-9:
                    dist[n] = nd
                    prev[n] = k
                    heapq.heappush(heap, (nd, n))
        path = [b]
        while path[-1] != a:
            path.append(prev[path[-1]])
        result = tuple(reversed(path))
        if len(self._paths) < 50_000:
            self._paths[key] = result
        return result
