"""GPS receiver model: time to first fix, a slowly wandering position error, satellites, HDOP, glitches.

The error is a first-order Gauss-Markov process (a bounded random walk, ~0.5 m) because that is what a
consumer GNSS receiver's position does while the vehicle sits still; white noise would look wrong on a map.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

FIX_NONE = mavlink2.GPS_FIX_TYPE_NO_FIX
FIX_2D = mavlink2.GPS_FIX_TYPE_2D_FIX
FIX_3D = mavlink2.GPS_FIX_TYPE_3D_FIX


@dataclass(slots=True)
class GpsGlitchState:
    """An active glitch: a constant offset of the reported position until `until_s` (simulated)."""

    north_m: float
    east_m: float
    until_s: float


class GpsModel:
    """Errors the receiver adds on top of the true position. Units: metres, seconds (simulated)."""

    def __init__(
        self,
        rng: random.Random,
        time_to_fix_s: float = 3.0,
        sigma_m: float = 0.5,
        correlation_time_s: float = 20.0,
    ) -> None:
        self._rng = rng
        self._time_to_fix_s = time_to_fix_s
        self._sigma_m = sigma_m
        self._tau_s = correlation_time_s
        self.error_north_m = rng.gauss(0.0, sigma_m)
        self.error_east_m = rng.gauss(0.0, sigma_m)
        self.error_up_m = rng.gauss(0.0, sigma_m * 1.5)
        self.fix_type = FIX_NONE
        self.forced_fix_type: int | None = None
        self.satellites = 0
        self.hdop = 99.99
        self.glitch: GpsGlitchState | None = None
        self._elapsed_s = 0.0
        self._sat_timer_s = 0.0

    def step(self, dt_s: float, now_s: float) -> None:
        """Advance the receiver: acquisition, error random walk, satellite count drift, glitch expiry."""
        self._elapsed_s += dt_s
        previous_fix = self.fix_type
        if self.forced_fix_type is not None:
            self.fix_type = self.forced_fix_type
        elif self._elapsed_s >= self._time_to_fix_s:
            self.fix_type = FIX_3D
        elif self._elapsed_s >= self._time_to_fix_s * 0.6:
            self.fix_type = FIX_2D
        if self.fix_type != previous_fix:
            self._sat_timer_s = 0.0

        decay = math.exp(-dt_s / self._tau_s)
        drive = self._sigma_m * math.sqrt(max(0.0, 1.0 - decay * decay))
        self.error_north_m = self.error_north_m * decay + drive * self._rng.gauss(0.0, 1.0)
        self.error_east_m = self.error_east_m * decay + drive * self._rng.gauss(0.0, 1.0)
        self.error_up_m = self.error_up_m * decay + 1.5 * drive * self._rng.gauss(0.0, 1.0)

        self._sat_timer_s -= dt_s
        if self._sat_timer_s <= 0:
            self._sat_timer_s = self._rng.uniform(5.0, 20.0)
            if self.fix_type >= FIX_3D:
                self.satellites = self._rng.randint(12, 16)
            elif self.fix_type == FIX_2D:
                self.satellites = self._rng.randint(4, 6)
            else:
                self.satellites = self._rng.randint(0, 3)
        if self.fix_type >= FIX_3D:
            self.hdop = 0.6 + 6.0 / max(self.satellites, 6) + self._rng.uniform(-0.03, 0.03)
        elif self.fix_type == FIX_2D:
            self.hdop = 2.5
        else:
            self.hdop = 99.99

        if self.glitch is not None and now_s >= self.glitch.until_s:
            self.glitch = None

    def start_glitch(self, now_s: float, duration_s: float, offset_m: float, bearing_deg: float) -> None:
        bearing = math.radians(bearing_deg)
        self.glitch = GpsGlitchState(offset_m * math.cos(bearing), offset_m * math.sin(bearing), now_s + duration_s)

    def offset_m(self) -> tuple[float, float, float]:
        """(north, east, up) error the receiver currently reports, glitch included."""
        north, east = self.error_north_m, self.error_east_m
        if self.glitch is not None:
            north += self.glitch.north_m
            east += self.glitch.east_m
        return north, east, self.error_up_m

    @property
    def has_3d_fix(self) -> bool:
        return self.fix_type >= FIX_3D
