"""LiPo battery pack: charge drawn from electrical power, voltage from a LiPo discharge curve plus sag.

Current comes from the power the flight actually needs (hover, climb, cruise drag), so a patrol that climbs
and cruises drains faster than one that hovers, and the voltage a gateway sees sags under load like a real
pack's does.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

# Resting LiPo cell voltage by state of charge (percent), a typical 1C discharge curve.
_SOC_PCT = (0.0, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0)
_CELL_V = (3.27, 3.61, 3.69, 3.71, 3.73, 3.77, 3.79, 3.82, 3.87, 3.93, 4.00, 4.10, 4.20)

AVIONICS_CURRENT_A = 0.45
ARMED_IDLE_POWER_W = 25.0


def cell_voltage_v(soc_pct: float) -> float:
    """Resting cell voltage for a state of charge, linear between table points."""
    soc = min(100.0, max(0.0, soc_pct))
    i = bisect.bisect_right(_SOC_PCT, soc)
    if i >= len(_SOC_PCT):
        return _CELL_V[-1]
    lo_s, hi_s = _SOC_PCT[i - 1], _SOC_PCT[i]
    lo_v, hi_v = _CELL_V[i - 1], _CELL_V[i]
    return lo_v + (hi_v - lo_v) * (soc - lo_s) / (hi_s - lo_s)


@dataclass(slots=True)
class BatteryPack:
    """State of one pack. Units: volts, amps, mAh, percent, watts."""

    cells: int = 4
    capacity_mah: float = 5200.0
    internal_resistance_ohm_per_cell: float = 0.005
    consumed_mah: float = 0.0
    consumed_wh: float = 0.0
    current_a: float = AVIONICS_CURRENT_A
    temperature_c: float = 25.0

    @property
    def remaining_pct(self) -> float:
        return max(0.0, 100.0 * (1.0 - self.consumed_mah / self.capacity_mah))

    @property
    def remaining_mah(self) -> float:
        return max(0.0, self.capacity_mah - self.consumed_mah)

    @property
    def resting_voltage_v(self) -> float:
        return self.cells * cell_voltage_v(self.remaining_pct)

    @property
    def voltage_v(self) -> float:
        """Terminal voltage under the present load."""
        sag_v = self.current_a * self.internal_resistance_ohm_per_cell * self.cells
        return max(0.0, self.resting_voltage_v - sag_v)

    def cell_voltages_v(self) -> list[float]:
        per_cell_v = self.voltage_v / self.cells
        return [per_cell_v] * self.cells

    def set_remaining_pct(self, pct: float) -> None:
        """Jump the state of charge (fault injection: a pack that was never charged, a dying cell)."""
        pct = min(100.0, max(0.0, pct))
        self.consumed_mah = self.capacity_mah * (1.0 - pct / 100.0)

    def step(self, dt_s: float, power_w: float) -> None:
        """Drain the pack by an electrical load for dt_s seconds."""
        resting_v = max(1.0, self.resting_voltage_v)
        self.current_a = power_w / resting_v + AVIONICS_CURRENT_A
        self.consumed_mah += self.current_a * dt_s / 3.6
        self.consumed_wh += self.current_a * self.voltage_v * dt_s / 3600.0
        # Packs warm up under load and cool towards ambient.
        target_c = 25.0 + 0.6 * self.current_a
        self.temperature_c += (target_c - self.temperature_c) * min(1.0, dt_s / 120.0)

    def time_remaining_s(self) -> float:
        if self.current_a <= 0.05:
            return 0.0
        return self.remaining_mah / (self.current_a * 1000.0) * 3600.0


def flight_power_w(
    hover_power_w: float,
    armed: bool,
    flying: bool,
    thrust_ratio: float,
    climb_mps: float,
    ground_speed_mps: float,
    mass_kg: float,
) -> float:
    """Electrical power for the current flight state.

    Hover power scales with thrust^1.5 (momentum theory), climbing adds the potential-energy rate at ~60 %
    propulsive efficiency, descending saves a little, and cruising adds parasitic drag power ~ v^3.
    """
    if not armed:
        return 0.0
    if not flying:
        return ARMED_IDLE_POWER_W
    power_w = hover_power_w * max(0.2, thrust_ratio) ** 1.5
    if climb_mps > 0:
        power_w += mass_kg * 9.81 * climb_mps / 0.6
    else:
        power_w *= max(0.75, 1.0 + 0.08 * climb_mps)
    power_w += 0.5 * 1.225 * 0.04 * ground_speed_mps**3 / 0.6
    return power_w
