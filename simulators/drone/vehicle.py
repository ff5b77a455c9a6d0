"""Multicopter kinematics: a position controller with ArduCopter-like speed, acceleration and yaw limits.

This is not a rigid-body simulation. Position and velocity follow the commanded setpoint through
acceleration-limited control, and attitude is *derived* from the acceleration plus drag the rotors must
produce. That is enough for telemetry to be physically consistent (tilt matches acceleration, heading
matches travel) at a cost of a few microseconds per step, which is what lets 50+ drones share one core.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .geo import wrap_pi

GRAVITY_MPS2 = 9.80665
DRAG_PER_S = 0.25  # linear drag: 10 m/s cruise needs ~2.5 m/s^2 of thrust, i.e. ~14 degrees of tilt
HORIZONTAL_KP_PER_S = 1.0
VERTICAL_KP_PER_S = 1.0
VERTICAL_ACCEL_MPS2 = 2.5
ON_GROUND_M = 0.02


@dataclass(slots=True)
class Setpoint:
    """What the flight mode wants from the position controller for one step.

    Horizontal: a position target (north_m/east_m) flown at up to max_speed_mps, or else a velocity.
    Vertical: a height target (up_m, metres above the ground) or else a climb rate.
    """

    north_m: float | None = None
    east_m: float | None = None
    max_speed_mps: float = 10.0
    vel_north_mps: float = 0.0
    vel_east_mps: float = 0.0
    up_m: float | None = None
    climb_mps: float = 0.0
    max_climb_mps: float = 2.5
    max_descent_mps: float = 1.5
    accel_mps2: float = 2.5
    yaw_deg: float | None = None
    face_travel: bool = True
    idle: bool = False  # motors spinning at idle on the ground: nothing moves


class Vehicle:
    """True physical state in a local frame: metres north/east of the origin, metres above the ground."""

    def __init__(self, yaw_deg: float = 0.0, mass_kg: float = 1.8) -> None:
        self.mass_kg = mass_kg
        self.north_m = 0.0
        self.east_m = 0.0
        self.up_m = 0.0
        self.vel_north_mps = 0.0
        self.vel_east_mps = 0.0
        self.vel_up_mps = 0.0
        self.accel_north_mps2 = 0.0
        self.accel_east_mps2 = 0.0
        self.accel_up_mps2 = 0.0
        self.yaw_rad = math.radians(yaw_deg)
        self.roll_rad = 0.0
        self.pitch_rad = 0.0
        self.roll_rate_radps = 0.0
        self.pitch_rate_radps = 0.0
        self.yaw_rate_radps = 0.0
        self.thrust_ratio = 0.0  # thrust / weight

    @property
    def on_ground(self) -> bool:
        return self.up_m <= ON_GROUND_M

    @property
    def ground_speed_mps(self) -> float:
        return math.hypot(self.vel_north_mps, self.vel_east_mps)

    @property
    def heading_deg(self) -> float:
        return math.degrees(self.yaw_rad) % 360.0

    @property
    def course_deg(self) -> float:
        """Course over ground; the heading while hovering."""
        if self.ground_speed_mps < 0.2:
            return self.heading_deg
        return math.degrees(math.atan2(self.vel_east_mps, self.vel_north_mps)) % 360.0

    def step(self, dt_s: float, sp: Setpoint, armed: bool, yaw_rate_max_dps: float) -> None:
        """Advance dt_s simulated seconds towards the setpoint."""
        if dt_s <= 0:
            return
        if not armed or sp.idle:
            self._step_unpowered(dt_s, armed)
        else:
            self._step_powered(dt_s, sp, yaw_rate_max_dps)
        self._update_attitude(dt_s, armed and not sp.idle)

    def _step_unpowered(self, dt_s: float, armed: bool) -> None:
        if self.up_m > ON_GROUND_M and not armed:
            # Disarmed in the air: ballistic fall with drag until it hits the ground.
            self.accel_up_mps2 = -GRAVITY_MPS2 - DRAG_PER_S * self.vel_up_mps
            self.accel_north_mps2 = -DRAG_PER_S * self.vel_north_mps
            self.accel_east_mps2 = -DRAG_PER_S * self.vel_east_mps
            self.vel_up_mps += self.accel_up_mps2 * dt_s
            self.vel_north_mps += self.accel_north_mps2 * dt_s
            self.vel_east_mps += self.accel_east_mps2 * dt_s
            self.north_m += self.vel_north_mps * dt_s
            self.east_m += self.vel_east_mps * dt_s
            self.up_m += self.vel_up_mps * dt_s
        if self.up_m <= ON_GROUND_M:
            self.up_m = 0.0
            self.vel_north_mps = self.vel_east_mps = self.vel_up_mps = 0.0
            self.accel_north_mps2 = self.accel_east_mps2 = self.accel_up_mps2 = 0.0
        self.yaw_rate_radps = 0.0

    def _step_powered(self, dt_s: float, sp: Setpoint, yaw_rate_max_dps: float) -> None:
        # Vertical: proportional height control, rate and acceleration limited.
        want_climb = VERTICAL_KP_PER_S * (sp.up_m - self.up_m) if sp.up_m is not None else sp.climb_mps
        want_climb = min(sp.max_climb_mps, max(-sp.max_descent_mps, want_climb))
        dv_up = want_climb - self.vel_up_mps
        max_dv = VERTICAL_ACCEL_MPS2 * dt_s
        dv_up = min(max_dv, max(-max_dv, dv_up))
        self.accel_up_mps2 = dv_up / dt_s
        self.vel_up_mps += dv_up
        self.up_m += self.vel_up_mps * dt_s
        grounded = self.up_m <= ON_GROUND_M and want_climb <= 0.0
        if self.up_m <= 0.0:
            self.up_m = 0.0
            self.vel_up_mps = max(0.0, self.vel_up_mps)

        # Horizontal: fly to a position with a sqrt deceleration profile, or track a velocity.
        want_n, want_e = sp.vel_north_mps, sp.vel_east_mps
        travel_dist_m = 0.0
        if sp.north_m is not None and sp.east_m is not None:
            d_n = sp.north_m - self.north_m
            d_e = sp.east_m - self.east_m
            travel_dist_m = math.hypot(d_n, d_e)
            if travel_dist_m > 1e-6:
                speed = min(
                    sp.max_speed_mps,
                    math.sqrt(2.0 * sp.accel_mps2 * travel_dist_m),
                    HORIZONTAL_KP_PER_S * travel_dist_m,
                )
                want_n, want_e = d_n / travel_dist_m * speed, d_e / travel_dist_m * speed
            else:
                want_n = want_e = 0.0
        else:
            want_speed = math.hypot(want_n, want_e)
            if want_speed > sp.max_speed_mps > 0:
                want_n, want_e = want_n / want_speed * sp.max_speed_mps, want_e / want_speed * sp.max_speed_mps
        if grounded:
            want_n = want_e = 0.0
            self.vel_north_mps = self.vel_east_mps = 0.0
        dv_n = want_n - self.vel_north_mps
        dv_e = want_e - self.vel_east_mps
        dv = math.hypot(dv_n, dv_e)
        max_dv = sp.accel_mps2 * dt_s
        if dv > max_dv:
            dv_n, dv_e = dv_n / dv * max_dv, dv_e / dv * max_dv
        self.accel_north_mps2 = dv_n / dt_s
        self.accel_east_mps2 = dv_e / dt_s
        self.vel_north_mps += dv_n
        self.vel_east_mps += dv_e
        self.north_m += self.vel_north_mps * dt_s
        self.east_m += self.vel_east_mps * dt_s

        # Yaw: slew-rate limited towards the commanded heading or the direction of travel.
        target_yaw = self.yaw_rad
        if sp.yaw_deg is not None:
            target_yaw = math.radians(sp.yaw_deg)
        elif sp.face_travel and math.hypot(want_n, want_e) > 1.0 and (sp.north_m is None or travel_dist_m > 2.0):
            target_yaw = math.atan2(want_e, want_n)
        if grounded:
            target_yaw = self.yaw_rad
        max_dyaw = math.radians(yaw_rate_max_dps) * dt_s
        dyaw = min(max_dyaw, max(-max_dyaw, wrap_pi(target_yaw - self.yaw_rad)))
        self.yaw_rate_radps = dyaw / dt_s
        self.yaw_rad = wrap_pi(self.yaw_rad + dyaw)

    def _update_attitude(self, dt_s: float, powered: bool) -> None:
        """Tilt = direction of the horizontal thrust needed for acceleration plus drag."""
        if powered and not self.on_ground:
            thrust_n = self.accel_north_mps2 + DRAG_PER_S * self.vel_north_mps
            thrust_e = self.accel_east_mps2 + DRAG_PER_S * self.vel_east_mps
            lift = GRAVITY_MPS2 + self.accel_up_mps2
            cos_y, sin_y = math.cos(self.yaw_rad), math.sin(self.yaw_rad)
            forward = thrust_n * cos_y + thrust_e * sin_y
            right = -thrust_n * sin_y + thrust_e * cos_y
            roll = math.atan2(right, lift)
            pitch = -math.atan2(forward, lift)
            self.thrust_ratio = math.sqrt(lift * lift + thrust_n * thrust_n + thrust_e * thrust_e) / GRAVITY_MPS2
        else:
            roll = pitch = 0.0
            self.thrust_ratio = 0.0
        self.roll_rate_radps = (roll - self.roll_rad) / dt_s
        self.pitch_rate_radps = (pitch - self.pitch_rad) / dt_s
        self.roll_rad, self.pitch_rad = roll, pitch
