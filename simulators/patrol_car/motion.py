"""One simulated patrol car: kinematics on the street grid, behaviour modes, battery, GNSS and radio state.

The car follows a polyline of waypoints (junctions and a few off-junction points). Speed is limited by the
road's limit, an optional commanded cruise speed, and a look-ahead braking curve so the car arrives at turns
slowly (~4 m/s), at stops with zero speed and never exceeds the limit. Integration uses sub-steps of at most
0.25 s so 1 Hz telemetry still shows realistic acceleration (~2 m/s²) and braking (<= 4 m/s²).
Everything here is plain Python on purpose: a per-car step costs a few microseconds, so 1,000 cars at 1 Hz
need a few percent of one core and stay easy to read.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from itertools import pairwise

from simulators.patrol_car.grid import StreetGrid

__all__ = [
    "ACCEL_MPS2",
    "BRAKE_MPS2",
    "MODES",
    "TURN_SPEED_MPS",
    "SimulatedCar",
    "Waypoint",
]

ACCEL_MPS2 = 2.0
BRAKE_MPS2 = 4.0  # hardest braking the car ever does
_PLAN_BRAKE_MPS2 = 3.0  # comfortable braking used for the look-ahead, leaves margin to BRAKE_MPS2
TURN_SPEED_MPS = 4.0
OFFROAD_SPEED_MPS = 3.0  # courtyards, parking lots: the last leg of a goto to a point off the road
SUBSTEP_S = 0.25
MODES = ("patrol", "goto", "route", "return", "hold", "parked")

# Electric patrol car with a 48 V LiFePO4 pack (16 cells): ~10 kWh, 48.0 V empty .. 53.6 V full.
PACK_WH = 10_000.0
_PACK_J = PACK_WH * 3600.0
_CELLS = 16
_IDLE_W = 300.0  # lights, radio, computer, cameras
_ROLL_W_PER_MPS = 250.0  # rolling + air resistance, linearised for 0..14 m/s
_MASS_KG = 900.0
_DRIVE_EFF = 0.85
_PACK_R_OHM = 0.02
_CHARGE_W = 3_300.0
AUTO_RETURN_PCT = 20.0
AUTO_RESUME_PCT = 95.0


def _pack_voltage(soc_pct: float, power_w: float) -> float:
    ocv = _CELLS * (3.0 + 0.35 * min(max(soc_pct, 0.0), 100.0) / 100.0)
    current = min(power_w, 10_000.0) / ocv
    return ocv - current * _PACK_R_OHM


class Waypoint:
    """A point the car drives to: `limit` is the road limit on the way there, `corner` the speed it may pass it."""

    __slots__ = ("corner", "dwell", "limit", "node", "seg_len", "x", "y")

    def __init__(self, x: float, y: float, node: int, limit: float, dwell: float = 0.0) -> None:
        self.x = x
        self.y = y
        self.node = node  # junction id, or -1 for a point between junctions / off the road
        self.limit = limit
        self.dwell = dwell  # seconds stopped here (traffic light, stop sign)
        self.corner = 0.0
        self.seg_len = 0.0  # length of the segment that ends here


@dataclass(slots=True)
class _RouteSpec:
    points: list[tuple[float, float]]
    loop: bool


class SimulatedCar:
    """A patrol car on the grid. Call `step(dt)` to advance simulated time; read the state or `telemetry()`.

    Behaviour: ``patrol`` (random walk over the grid, the default), ``goto`` (drive to a point, then ``hold``),
    ``route`` (follow waypoints, optionally looping), ``return`` (drive to the depot, then ``parked`` and
    charge), ``hold`` (brake to a standstill and stay). A patrolling car whose battery drops below 20 % returns
    to the depot by itself and resumes patrol once charged.
    """

    def __init__(
        self,
        vehicle_id: str,
        grid: StreetGrid,
        rng: random.Random | None = None,
        *,
        start: tuple[float, float] | None = None,
        battery_pct: float | None = None,
        odometer_m: float | None = None,
    ) -> None:
        self.vehicle_id = vehicle_id
        self.grid = grid
        self.rng = rng or random.Random()
        r = self.rng
        if start is None:
            a = r.randrange(grid.node_count)
            b = r.choice(grid.neighbors[a])
            f = r.uniform(0.1, 0.9)
            start = (grid.node_x[a] + f * (grid.node_x[b] - grid.node_x[a]),
                     grid.node_y[a] + f * (grid.node_y[b] - grid.node_y[a]))
        self.x, self.y = start
        self.speed = 0.0
        self.accel = 0.0
        self.heading_deg = 90.0 * r.randrange(4)
        self.odometer_m = odometer_m if odometer_m is not None else r.uniform(5_000.0, 150_000.0)
        self.battery_pct = battery_pct if battery_pct is not None else r.uniform(60.0, 100.0)
        self.battery_v = _pack_voltage(self.battery_pct, _IDLE_W)
        self.mode = "patrol"
        self.path: list[Waypoint] = []
        self.cruise_mps: float | None = None
        self.dwell_s = 0.0
        self.sim_time_s = 0.0
        self.events: list[tuple[str, dict[str, object]]] = []  # (type, detail) waiting to be published
        self.target: tuple[float, float] | None = None
        self._route: _RouteSpec | None = None
        self._last_node = -1
        self._auto_return = False
        self._low_battery_sent = False
        self._door_close_at: float | None = None
        # GNSS / radio state, slowly varying per car
        self.gps_fix = 4 if r.random() < 0.3 else 3
        self.satellites = r.randint(10, 18)
        self._rssi_base = r.uniform(-95.0, -65.0)
        self.rssi_dbm = round(self._rssi_base)
        self._bias_x = 0.0
        self._bias_y = 0.0
        self._bias_z = r.uniform(-1.0, 1.0)
        self._plan_patrol()

    # --- state read-outs ------------------------------------------------------------------------------------
    @property
    def latlon(self) -> tuple[float, float]:
        """True (noise-free) position in WGS84 degrees."""
        return self.grid.to_latlon(self.x, self.y)

    def route_latlon(self) -> list[tuple[float, float]]:
        """The remaining waypoints of the current route, WGS84."""
        return [self.grid.to_latlon(w.x, w.y) for w in self.path]

    # --- commands (already validated; see commands.py) -----------------------------------------------------
    def goto(self, x: float, y: float, speed_mps: float | None = None) -> None:
        """Drive along the roads to the target's road, then to the point itself, and hold there."""
        self._cancel_auto()
        self.mode = "goto"
        self.cruise_mps = speed_mps
        self.target = (x, y)
        self._route = None
        self._set_path(self._plan_from_here(x, y))

    def follow_route(self, points: list[tuple[float, float]], loop: bool = False,
                     speed_mps: float | None = None) -> None:
        """Visit the points in order along the roads; with ``loop`` start over after the last one."""
        if not points:
            raise ValueError("a route needs at least one point")
        self._cancel_auto()
        self.mode = "route"
        self.cruise_mps = speed_mps
        self._route = _RouteSpec(list(points), loop)
        self.target = points[-1]
        self._set_path(self._plan_route())

    def return_to_base(self) -> None:
        self.mode = "return"
        self.cruise_mps = None
        self._route = None
        self.target = (self.grid.base_x, self.grid.base_y)
        self._set_path(self._plan_from_here(self.grid.base_x, self.grid.base_y))

    def hold(self) -> None:
        """Brake (comfortably) to a standstill straight ahead and stay there."""
        self._cancel_auto()
        self.mode = "hold"
        self._route = None
        self.target = None
        self.dwell_s = 0.0
        if self.speed < 0.1:
            self.speed = 0.0
            self.path = []
            return
        d = self.speed * self.speed / (2.0 * _PLAN_BRAKE_MPS2) + 0.5
        h = math.radians(self.heading_deg)
        lim = self.grid.half_extent_m
        x = min(max(self.x + d * math.sin(h), -lim), lim)
        y = min(max(self.y + d * math.cos(h), -lim), lim)
        self._set_path([Waypoint(x, y, -1, max(self.speed, 0.1))])

    def resume(self) -> None:
        """Back to the normal patrol (random walk) from wherever the car is."""
        self._cancel_auto()
        self.mode = "patrol"
        self.cruise_mps = None
        self._route = None
        self.target = None
        self._plan_patrol()

    def _cancel_auto(self) -> None:
        self._auto_return = False

    # --- simulation -----------------------------------------------------------------------------------------
    def step(self, dt: float) -> None:
        """Advance simulated time by dt seconds."""
        remaining = dt
        while remaining > 1e-9:
            h = SUBSTEP_S if remaining > SUBSTEP_S else remaining
            self._substep(h)
            remaining -= h
        self.sim_time_s += dt
        self._check_battery()

    def _substep(self, h: float) -> None:
        v0 = self.speed
        if self.dwell_s > 0.0:
            self.dwell_s -= h
            self.speed = 0.0
            self.accel = 0.0
            self._use_energy(h, 0.0, 0.0)
            return
        path = self.path
        if not path:
            self.speed = 0.0
            self.accel = 0.0
            if self.mode == "parked":
                self._charge(h)
            else:
                self._use_energy(h, 0.0, 0.0)
            return
        first = path[0]
        d0 = math.hypot(first.x - self.x, first.y - self.y)
        cap = first.limit if self.cruise_mps is None else min(first.limit, self.cruise_mps)
        # look-ahead: the speed from which we can still brake to each upcoming waypoint's passing speed
        allowed = cap
        dist = d0 - v0 * h
        n = len(path)
        for k in range(min(n, 4)):
            w = path[k]
            if k:
                dist += w.seg_len
            if dist > 60.0:
                break
            c = w.corner
            lim = math.sqrt(c * c + 2.0 * _PLAN_BRAKE_MPS2 * dist) if dist > 0.0 else c
            if lim < allowed:
                allowed = lim
        v1 = min(allowed, v0 + ACCEL_MPS2 * h) if v0 < allowed else max(allowed, v0 - BRAKE_MPS2 * h)
        move = 0.5 * (v0 + v1) * h
        self.speed = v1
        self.accel = (v1 - v0) / h
        self._use_energy(h, v1, self.accel)
        while move > 0.0 and path:
            w = path[0]
            dx = w.x - self.x
            dy = w.y - self.y
            d = math.hypot(dx, dy)
            if d > 1e-6:
                self.heading_deg = math.degrees(math.atan2(dx, dy)) % 360.0
            if move < d:
                f = move / d
                self.x += dx * f
                self.y += dy * f
                self.odometer_m += move
                return
            self.x = w.x
            self.y = w.y
            self.odometer_m += d
            move -= d
            path.pop(0)
            if w.node >= 0:
                self._last_node = w.node
            if self.mode == "patrol" and len(path) < 3:
                self._extend_patrol()
            if w.dwell > 0.0 or not path:
                self.speed = 0.0
                self.accel = 0.0
                self.dwell_s = w.dwell
                if not path:
                    self._path_done()
                return

    def _path_done(self) -> None:
        if self.mode == "patrol":
            self._plan_patrol()
        elif self.mode == "route" and self._route is not None and self._route.loop:
            self._set_path(self._plan_route())
        elif self.mode == "return":
            self.mode = "parked"
        elif self.mode in ("goto", "route"):
            self.mode = "hold"

    def _use_energy(self, h: float, v: float, a: float) -> None:
        power = _IDLE_W + _ROLL_W_PER_MPS * v
        if a > 0.0:
            power += _MASS_KG * a * v / _DRIVE_EFF
        self.battery_pct = max(0.0, self.battery_pct - power * h / _PACK_J * 100.0)
        self.battery_v = _pack_voltage(self.battery_pct, power)

    def _charge(self, h: float) -> None:
        self.battery_pct = min(100.0, self.battery_pct + _CHARGE_W * h / _PACK_J * 100.0)
        self.battery_v = _pack_voltage(self.battery_pct, -_CHARGE_W)

    def _check_battery(self) -> None:
        if self.battery_pct < AUTO_RETURN_PCT:
            if not self._low_battery_sent:
                self._low_battery_sent = True
                self.events.append(("low_battery", {"battery_pct": round(self.battery_pct, 1)}))
            if self.mode == "patrol":
                self.return_to_base()
                self._auto_return = True
        elif self.battery_pct > AUTO_RETURN_PCT + 5.0:
            self._low_battery_sent = False
        if self._auto_return and self.mode == "parked" and self.battery_pct >= AUTO_RESUME_PCT:
            self.resume()

    def roll_events(self, probability: float) -> None:
        """With `probability` per call raise an ``sos`` or ``door_open`` event (a door closes again later)."""
        if self._door_close_at is not None and self.sim_time_s >= self._door_close_at:
            self._door_close_at = None
            self.events.append(("door_closed", {"door": "driver"}))
        if probability <= 0.0 or self.rng.random() >= probability:
            return
        if self._door_close_at is None and self.rng.random() < 0.6:
            self._door_close_at = self.sim_time_s + self.rng.uniform(3.0, 20.0)
            self.events.append(("door_open", {"door": "driver"}))
        else:
            self.events.append(("sos", {"note": "button pressed"}))

    # --- telemetry ------------------------------------------------------------------------------------------
    def telemetry(self, ts_ms: int, seq: int) -> dict[str, object]:
        """One contract v1 telemetry object for the current state, with GNSS noise of ~1-1.5 m."""
        r = self.rng
        self._bias_x = 0.98 * self._bias_x + r.gauss(0.0, 0.15)
        self._bias_y = 0.98 * self._bias_y + r.gauss(0.0, 0.15)
        self._bias_z = 0.98 * self._bias_z + r.gauss(0.0, 0.2)
        lat, lon = self.grid.to_latlon(self.x + self._bias_x + r.gauss(0.0, 0.7),
                                       self.y + self._bias_y + r.gauss(0.0, 0.7))
        moving = self.speed > 0.05
        speed = max(0.0, self.speed + r.gauss(0.0, 0.05)) if moving else 0.0
        heading = (self.heading_deg + r.gauss(0.0, 0.8)) % 360.0 if moving else self.heading_deg
        if r.random() < 0.1:
            self.satellites = min(20, max(7, self.satellites + r.choice((-1, 1))))
        if r.random() < 0.3:
            self.rssi_dbm = round(min(-50.0, max(-110.0, self._rssi_base + r.gauss(0.0, 4.0))))
        return {
            "v": 1,
            "ts": ts_ms,
            "kind": "patrol_car",
            "seq": seq,
            "lat": round(lat, 7),
            "lon": round(lon, 7),
            "alt_m": round(4.0 + self._bias_z + r.gauss(0.0, 0.8), 1),
            "speed_mps": round(speed, 2),
            "heading_deg": round(heading, 1) % 360.0,
            "battery_pct": round(self.battery_pct, 1),
            "battery_v": round(self.battery_v, 2),
            "odometer_m": round(self.odometer_m, 1),
            "mode": self.mode,
            "gps_fix": self.gps_fix,
            "satellites": self.satellites,
            "rssi_dbm": self.rssi_dbm,
        }

    # --- planning -------------------------------------------------------------------------------------------
    def _junction_wp(self, node: int, limit: float) -> Waypoint:
        """A junction waypoint; some junctions make the car stop: red lights (signalised) or stop signs."""
        r = self.rng
        if self.grid.signalised[node]:
            dwell = r.uniform(1.0, 5.0) if r.random() < 0.5 else 0.0
        else:
            dwell = r.uniform(1.0, 3.0) if r.random() < 0.15 else 0.0
        return Waypoint(self.grid.node_x[node], self.grid.node_y[node], node, limit, dwell)

    def _set_path(self, wps: list[Waypoint]) -> None:
        self.path = []
        self._append(wps, self.x, self.y)

    def _append(self, wps: list[Waypoint], px: float, py: float) -> None:
        """Append waypoints, dropping zero-length segments, and recompute passing speeds at the joints."""
        path = self.path
        if path:
            px, py = path[-1].x, path[-1].y
        for w in wps:
            w.seg_len = math.hypot(w.x - px, w.y - py)
            if w.seg_len < 0.5:
                if path and w.node >= 0 and path[-1].node < 0:
                    path[-1].node = w.node
                continue
            path.append(w)
            px, py = w.x, w.y
        self._corners()

    def _corners(self) -> None:
        path = self.path
        px, py = self.x, self.y
        last = len(path) - 1
        for k, w in enumerate(path):
            if k == last or w.dwell > 0.0:
                w.corner = 0.0
            else:
                nxt = path[k + 1]
                ix, iy = w.x - px, w.y - py
                ox, oy = nxt.x - w.x, nxt.y - w.y
                ni = math.hypot(ix, iy) or 1.0
                no = math.hypot(ox, oy) or 1.0
                cos = (ix * ox + iy * oy) / (ni * no)
                if cos > 0.94:  # within ~20 degrees: straight on
                    w.corner = min(w.limit, nxt.limit)
                elif cos > -0.7:  # a turn
                    w.corner = min(TURN_SPEED_MPS, w.limit, nxt.limit)
                else:  # U-turn: stop and turn
                    w.corner = 0.0
            px, py = w.x, w.y

    def _plan_patrol(self) -> None:
        """Start a random walk: get onto the road and head for the junction ahead (or any, when stopped)."""
        self.dwell_s = 0.0
        g = self.grid
        wps: list[Waypoint] = []
        p = g.project(self.x, self.y)
        x, y, moving = self.x, self.y, self.speed > 0.5
        if p.distance_m > 1.0:
            wps.append(Waypoint(p.x, p.y, -1, OFFROAD_SPEED_MPS))
            x, y, moving = p.x, p.y, False
        start = self._start_nodes(p.a, p.b, x, y, moving)
        node, _ = self.rng.choice(start)
        limit = g.limit(p.a, p.b)
        if math.hypot(g.node_x[node] - x, g.node_y[node] - y) >= 0.5:
            wps.append(self._junction_wp(node, limit))
            self._last_node = p.b if node == p.a else p.a  # the junction behind: no U-turn there
        else:
            self._last_node = node
        self.path = []
        self._append(wps, self.x, self.y)
        while len(self.path) < 3:
            self._extend_patrol()

    def _extend_patrol(self) -> None:
        g = self.grid
        path = self.path
        if path and path[-1].node >= 0:
            node = path[-1].node
            prev = path[-2].node if len(path) >= 2 else self._last_node
        elif not path and self._last_node >= 0:
            node, prev = self._last_node, -1
        else:  # should not happen: the walk always ends on a junction
            self._plan_patrol()
            return
        options = [n for n in g.neighbors[node] if n != prev] or list(g.neighbors[node])
        nxt = self.rng.choice(options)
        self._append([self._junction_wp(nxt, g.limit(node, nxt))], self.x, self.y)

    def _start_nodes(self, a: int, b: int, x: float, y: float, moving: bool) -> list[tuple[int, float]]:
        """Junctions the car can head for first from a road point, with the distance to each."""
        g = self.grid
        da = math.hypot(g.node_x[a] - x, g.node_y[a] - y)
        db = math.hypot(g.node_x[b] - x, g.node_y[b] - y)
        if da < 0.5:
            return [(a, 0.0)]
        if db < 0.5:
            return [(b, 0.0)]
        if moving:
            h = math.radians(self.heading_deg)
            ahead = (g.node_x[b] - g.node_x[a]) * math.sin(h) + (g.node_y[b] - g.node_y[a]) * math.cos(h)
            return [(b, db)] if ahead > 0 else [(a, da)]
        return [(a, da), (b, db)]

    def _plan_from_here(self, tx: float, ty: float) -> list[Waypoint]:
        h = math.radians(self.heading_deg)
        return self._plan(self.x, self.y, math.sin(h), math.cos(h), self.speed > 0.5, tx, ty)

    def _plan_route(self) -> list[Waypoint]:
        assert self._route is not None
        wps: list[Waypoint] = []
        x, y = self.x, self.y
        h = math.radians(self.heading_deg)
        hx, hy, moving = math.sin(h), math.cos(h), self.speed > 0.5
        for tx, ty in self._route.points:
            leg = self._plan(x, y, hx, hy, moving, tx, ty)
            if leg:
                px, py = (wps[-1].x, wps[-1].y) if wps else (x, y)
                last = leg[-1]
                before = leg[-2] if len(leg) >= 2 else None
                bx, by = (before.x, before.y) if before else (px, py)
                norm = math.hypot(last.x - bx, last.y - by) or 1.0
                hx, hy = (last.x - bx) / norm, (last.y - by) / norm
                x, y, moving = last.x, last.y, True
                wps.extend(leg)
        return wps

    def _plan(self, x: float, y: float, hx: float, hy: float, moving: bool,
              tx: float, ty: float) -> list[Waypoint]:
        """Waypoints from (x, y) to (tx, ty): onto the road, along the fastest junction path to the target's
        road, along it to the target's road point, and a last short leg if the target lies off the road."""
        g = self.grid
        wps: list[Waypoint] = []
        p = g.project(x, y)
        if p.distance_m > 1.0:
            wps.append(Waypoint(p.x, p.y, -1, OFFROAD_SPEED_MPS))
            x, y, moving = p.x, p.y, False
        tp = g.project(tx, ty)
        t_limit = g.limit(tp.a, tp.b)
        if {p.a, p.b} == {tp.a, tp.b}:
            ahead = (tp.x - x) * hx + (tp.y - y) * hy
            if not moving or ahead >= 0.0:
                wps.append(Waypoint(tp.x, tp.y, -1, t_limit))
                if tp.distance_m > 2.0:
                    wps.append(Waypoint(tx, ty, -1, OFFROAD_SPEED_MPS))
                return wps
        if moving:
            da = math.hypot(g.node_x[p.a] - x, g.node_y[p.a] - y)
            db = math.hypot(g.node_x[p.b] - x, g.node_y[p.b] - y)
            if da < 0.5:
                starts = [(p.a, 0.0)]
            elif db < 0.5:
                starts = [(p.b, 0.0)]
            else:
                ahead_b = (g.node_x[p.b] - g.node_x[p.a]) * hx + (g.node_y[p.b] - g.node_y[p.a]) * hy
                starts = [(p.b, db)] if ahead_b > 0 else [(p.a, da)]
        else:
            starts = self._start_nodes(p.a, p.b, x, y, False)
        s_limit = g.limit(p.a, p.b)
        best: tuple[float, int, int, float] | None = None
        for s, ds in starts:
            for t in (tp.a, tp.b):
                path = g.shortest_path(s, t)
                cost = ds / s_limit + sum(g.edge_length(u, v) / g.limit(u, v) for u, v in pairwise(path))
                cost += math.hypot(g.node_x[t] - tp.x, g.node_y[t] - tp.y) / t_limit
                if best is None or cost < best[0]:
                    best = (cost, s, t, ds)
        assert best is not None
        _, s, t, ds = best
        path = g.shortest_path(s, t)
        if ds >= 0.5:
            wps.append(self._junction_wp(s, s_limit))
        for u, v in pairwise(path):
            wps.append(self._junction_wp(v, g.limit(u, v)))
        wps.append(Waypoint(tp.x, tp.y, -1, t_limit))
        if tp.distance_m > 2.0:
            wps.append(Waypoint(tx, ty, -1, OFFROAD_SPEED_MPS))
        return wps
