"""Navigation behaviours shared by flight modes and mission items: hold, go-to, take off, land, RTL.

Each task turns the vehicle state into a Setpoint every step and says when it is done; modes (LOITER,
GUIDED, RTL, LAND) and mission commands (WAYPOINT, TAKEOFF, RETURN_TO_LAUNCH, LAND) are compositions of
these, the way ArduCopter's modes reuse the same waypoint and land controllers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .vehicle import Setpoint, Vehicle

ALT_REACHED_M = 0.5


@dataclass(slots=True)
class NavLimits:
    """Speeds and distances from the parameter table, converted to SI units."""

    wp_speed_mps: float = 10.0
    climb_mps: float = 2.5
    descent_mps: float = 1.5
    accel_mps2: float = 2.5
    wp_radius_m: float = 2.0
    land_speed_mps: float = 0.5
    land_speed_high_mps: float = 1.5
    land_alt_low_m: float = 10.0
    rtl_alt_m: float = 15.0
    rtl_alt_final_m: float = 0.0
    rtl_loiter_s: float = 5.0
    rtl_speed_mps: float = 10.0
    yaw_rate_dps: float = 60.0
    face_travel: bool = True  # WP_YAW_BEHAVIOR != 0: point the nose where the vehicle is going


class NavTask:
    """Base behaviour: hold nothing in particular. Subclasses fill in setpoint()."""

    done: bool = False
    landing: bool = False  # descending to touch down (EXTENDED_SYS_STATE LANDING, land detection)
    taking_off: bool = False  # allowed to spin up from the ground

    def setpoint(self, v: Vehicle, lim: NavLimits, now_s: float) -> Setpoint:
        raise NotImplementedError


class HoldTask(NavTask):
    """Hold a 3D position (LOITER, BRAKE, GUIDED with no target, end of a mission)."""

    def __init__(self, north_m: float, east_m: float, up_m: float, accel_mps2: float | None = None) -> None:
        self.north_m, self.east_m, self.up_m = north_m, east_m, up_m
        self.accel_mps2 = accel_mps2
        self.yaw_deg: float | None = None

    @classmethod
    def here(cls, v: Vehicle, accel_mps2: float | None = None) -> HoldTask:
        """Hold where the vehicle will stop, not where it is: it cannot stop instantly."""
        accel = accel_mps2 or 2.5
        speed = v.ground_speed_mps
        stop_m = speed * speed / (2.0 * accel)
        north, east = v.north_m, v.east_m
        if speed > 0.1:
            north += v.vel_north_mps / speed * stop_m
            east += v.vel_east_mps / speed * stop_m
        return cls(north, east, v.up_m, accel_mps2)

    def setpoint(self, v: Vehicle, lim: NavLimits, now_s: float) -> Setpoint:
        return Setpoint(
            north_m=self.north_m,
            east_m=self.east_m,
            max_speed_mps=lim.wp_speed_mps,
            up_m=self.up_m,
            max_climb_mps=lim.climb_mps,
            max_descent_mps=lim.descent_mps,
            accel_mps2=self.accel_mps2 or lim.accel_mps2,
            yaw_deg=self.yaw_deg,
            face_travel=False,
        )


class GotoTask(NavTask):
    """Fly to a 3D point at up to a speed; done inside the waypoint radius and near the altitude."""

    def __init__(self, north_m: float, east_m: float, up_m: float, speed_mps: float | None = None) -> None:
        self.north_m, self.east_m, self.up_m = north_m, east_m, up_m
        self.speed_mps = speed_mps
        self.yaw_deg: float | None = None

    def distance_m(self, v: Vehicle) -> float:
        return math.hypot(self.north_m - v.north_m, self.east_m - v.east_m)

    def setpoint(self, v: Vehicle, lim: NavLimits, now_s: float) -> Setpoint:
        if not self.done and self.distance_m(v) <= lim.wp_radius_m and abs(self.up_m - v.up_m) <= 1.0:
            self.done = True
        return Setpoint(
            north_m=self.north_m,
            east_m=self.east_m,
            max_speed_mps=self.speed_mps or lim.wp_speed_mps,
            up_m=self.up_m,
            max_climb_mps=lim.climb_mps,
            max_descent_mps=lim.descent_mps,
            accel_mps2=lim.accel_mps2,
            yaw_deg=self.yaw_deg,
            face_travel=lim.face_travel,
        )


class VelocityTask(NavTask):
    """GUIDED velocity control; like ArduCopter it stops if the GCS stops refreshing the command (3 s)."""

    TIMEOUT_S = 3.0

    def __init__(self, vel_north_mps: float, vel_east_mps: float, climb_mps: float, now_s: float) -> None:
        self.vel_north_mps, self.vel_east_mps, self.climb_mps = vel_north_mps, vel_east_mps, climb_mps
        self.expires_s = now_s + self.TIMEOUT_S
        self.yaw_deg: float | None = None

    def setpoint(self, v: Vehicle, lim: NavLimits, now_s: float) -> Setpoint:
        expired = now_s >= self.expires_s
        return Setpoint(
            vel_north_mps=0.0 if expired else self.vel_north_mps,
            vel_east_mps=0.0 if expired else self.vel_east_mps,
            max_speed_mps=lim.wp_speed_mps * 1.5,
            climb_mps=0.0 if expired else self.climb_mps,
            max_climb_mps=lim.climb_mps,
            max_descent_mps=lim.descent_mps,
            accel_mps2=lim.accel_mps2,
            yaw_deg=self.yaw_deg,
            face_travel=lim.face_travel,
        )


class TakeoffTask(NavTask):
    """Vertical climb from where the vehicle is to a height above the ground."""

    taking_off = True

    def __init__(self, north_m: float, east_m: float, up_m: float) -> None:
        self.north_m, self.east_m, self.up_m = north_m, east_m, up_m

    def setpoint(self, v: Vehicle, lim: NavLimits, now_s: float) -> Setpoint:
        if v.up_m >= self.up_m - ALT_REACHED_M:
            self.done = True
            self.taking_off = False
        return Setpoint(
            north_m=self.north_m,
            east_m=self.east_m,
            max_speed_mps=lim.wp_speed_mps,
            up_m=self.up_m,
            max_climb_mps=lim.climb_mps,
            max_descent_mps=lim.descent_mps,
            accel_mps2=lim.accel_mps2,
            face_travel=False,
        )


class LandTask(NavTask):
    """Optionally fly to a point at the current height, then descend: fast above LAND_ALT_LOW, slow below.

    `done` is set by the autopilot's land detector, not here: touching the ground is a physical event.
    """

    def __init__(self, north_m: float | None = None, east_m: float | None = None) -> None:
        self._approach_to = (north_m, east_m) if north_m is not None and east_m is not None else None
        self._approach: GotoTask | None = None
        self._north_m = north_m
        self._east_m = east_m

    def setpoint(self, v: Vehicle, lim: NavLimits, now_s: float) -> Setpoint:
        if not self.landing and self._approach_to is not None:
            if self._approach is None:
                self._approach = GotoTask(*self._approach_to, v.up_m)
            sp = self._approach.setpoint(v, lim, now_s)
            if not self._approach.done:
                return sp
        if not self.landing:
            self.landing = True
            if self._approach_to is None:
                self._north_m, self._east_m = v.north_m, v.east_m
        descent = lim.land_speed_high_mps if v.up_m > lim.land_alt_low_m else lim.land_speed_mps
        return Setpoint(
            north_m=self._north_m,
            east_m=self._east_m,
            max_speed_mps=lim.wp_speed_mps,
            climb_mps=-descent,
            max_climb_mps=lim.climb_mps,
            max_descent_mps=max(descent, lim.land_speed_mps),
            accel_mps2=lim.accel_mps2,
            face_travel=False,
        )


class RtlTask(NavTask):
    """ArduCopter RTL: climb to RTL_ALT (if lower), return home, loiter RTL_LOIT_TIME, land (or hover at
    RTL_ALT_FINAL). Heights are metres above the ground; home_up_m is the home's height above it."""

    def __init__(self, v: Vehicle, lim: NavLimits, home_north_m: float, home_east_m: float, home_up_m: float):
        self.home = (home_north_m, home_east_m, home_up_m)
        self.return_up_m = max(v.up_m, home_up_m + lim.rtl_alt_m)
        self.phase = "climb"
        self._task: NavTask = GotoTask(v.north_m, v.east_m, self.return_up_m)
        self._loiter_until_s: float | None = None

    def setpoint(self, v: Vehicle, lim: NavLimits, now_s: float) -> Setpoint:
        home_n, home_e, home_up = self.home
        if self.phase == "climb" and v.up_m >= self.return_up_m - ALT_REACHED_M:
            self.phase = "return"
            self._task = GotoTask(home_n, home_e, self.return_up_m, lim.rtl_speed_mps)
        if self.phase == "return" and self._task.done:
            self.phase = "loiter"
            self._task = HoldTask(home_n, home_e, self.return_up_m)
            self._loiter_until_s = now_s + lim.rtl_loiter_s
        if self.phase == "loiter" and self._loiter_until_s is not None and now_s >= self._loiter_until_s:
            if lim.rtl_alt_final_m > 0:
                self.phase = "final"
                self._task = HoldTask(home_n, home_e, home_up + lim.rtl_alt_final_m)
            else:
                self.phase = "land"
                self._task = LandTask(home_n, home_e)
        sp = self._task.setpoint(v, lim, now_s)
        self.landing = self._task.landing
        return sp
