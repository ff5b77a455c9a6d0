"""A deterministic, realistic fleet of samples for the ingest benchmark.

The mix: 20 % drones reporting at 5 Hz with attitude, climb and, as the MAVLink driver gives them, autopilot
boot time and HDOP in ``extra``; 80 % patrol cars at 1 Hz with odometer, signal strength and message counter;
all moving around a district centre.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta

from telemetry.model import Sample, VehicleKind, utcnow

__all__ = ["fleet_mix"]

_CENTRE_LAT_DEG, _CENTRE_LON_DEG = 31.2304, 121.4737


def fleet_mix(rows: int, *, vehicles: int = 1000, seed: int = 7, chunk: int = 1000,
              start: datetime | None = None) -> Iterator[list[Sample]]:
    """Yield ``rows`` samples in chunks of ``chunk``, in receive-time order, same output for the same seed."""
    rng = random.Random(seed)
    start = start or (utcnow() - timedelta(hours=2))
    drones = max(1, vehicles // 5)
    phase = [rng.uniform(0, 2 * math.pi) for _ in range(vehicles)]
    out: list[Sample] = []
    step_ms = 0
    produced = 0
    while produced < rows:
        step_ms += 200  # one 5 Hz tick: every drone reports, a fifth of the cars report
        now = start + timedelta(milliseconds=step_ms)
        tick = step_ms // 200
        for v in range(vehicles):
            is_drone = v < drones
            if not is_drone and (v + tick) % 5:
                continue
            angle = phase[v] + tick * (0.002 if is_drone else 0.0005)
            lat = _CENTRE_LAT_DEG + 0.01 * math.sin(angle) + rng.gauss(0, 2e-6)
            lon = _CENTRE_LON_DEG + 0.012 * math.cos(angle) + rng.gauss(0, 2e-6)
            if is_drone:
                sample = Sample(
                    time=now, vehicle=f"drone-{v + 1}", kind=VehicleKind.DRONE, lat_deg=lat, lon_deg=lon,
                    alt_msl_m=64.0 + rng.uniform(-1, 1), alt_rel_m=60.0, heading_deg=(math.degrees(angle) % 360.0),
                    ground_speed_mps=9.5 + rng.uniform(-0.5, 0.5), climb_mps=rng.uniform(-0.3, 0.3),
                    roll_deg=rng.uniform(-5, 5), pitch_deg=rng.uniform(-8, 0), yaw_deg=rng.uniform(-180, 180),
                    battery_pct=max(0.0, 95.0 - tick * 0.001), battery_v=24.2, mode="AUTO", armed=True,
                    gps_fix=3, satellites=16, link_quality_pct=98.0, extra={"time_boot_ms": tick * 200, "hdop": 0.7},
                    source="mavlink:bench",
                )
            else:
                sample = Sample(
                    time=now, vehicle=f"car-{v + 1:04d}", kind=VehicleKind.PATROL_CAR, lat_deg=lat, lon_deg=lon,
                    vehicle_time=now - timedelta(milliseconds=80), alt_msl_m=4.0,
                    heading_deg=(math.degrees(angle) % 360.0), ground_speed_mps=8.3 + rng.uniform(-1, 1),
                    battery_pct=76.0, battery_v=48.1, mode="patrol", gps_fix=3, satellites=14,
                    odometer_m=12000.0 + tick * 8.3, rssi_dbm=-71.0, seq=tick,
                    source="mqtt:bench",
                )
            out.append(sample)
            produced += 1
            if len(out) >= chunk or produced >= rows:
                yield out
                out = []
                if produced >= rows:
                    return
