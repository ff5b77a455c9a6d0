"""Failsafes: battery low/critical, GCS heartbeat loss, GPS loss and geofence, with ArduCopter's actions.

They latch like ArduCopter's (a low battery does not un-trigger because the voltage recovers at rest), and
they act only on an armed vehicle: on the ground the action is to disarm, in the air RTL or LAND.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .modes import POSITION_MODES, CopterMode

if TYPE_CHECKING:
    from .autopilot import Autopilot

CRITICAL = mavlink2.MAV_SEVERITY_CRITICAL
WARNING = mavlink2.MAV_SEVERITY_WARNING
INFO = mavlink2.MAV_SEVERITY_INFO
GPS_LOSS_TRIGGER_S = 1.0

# BATT_FS_*_ACT values
ACTION_NONE, ACTION_LAND, ACTION_RTL, ACTION_SMART_RTL, ACTION_SMART_RTL_LAND, ACTION_TERMINATE = range(6)


class FailsafeMonitor:
    def __init__(self, ap: Autopilot) -> None:
        self._ap = ap
        self.battery_low = False
        self.battery_critical = False
        self.gcs = False
        self.gps = False
        self.fence_breached = False
        self.last_gcs_heartbeat_s: float | None = None
        self._gps_bad_s = 0.0

    @property
    def any(self) -> bool:
        return self.battery_low or self.battery_critical or self.gcs or self.gps or self.fence_breached

    def gcs_heartbeat(self, now_s: float) -> None:
        self.last_gcs_heartbeat_s = now_s
        if self.gcs:
            self.gcs = False
            self._ap.text(INFO, "GCS Failsafe Cleared")

    def battery_reset(self) -> None:
        """Forget a latched battery failsafe (a fresh pack was 'inserted' by fault injection)."""
        params, batt = self._ap.params, self._ap.battery
        if batt.remaining_mah >= params["BATT_LOW_MAH"]:
            self.battery_low = self.battery_critical = False

    def check(self, dt_s: float, now_s: float) -> None:
        self._check_battery()
        self._check_gcs(now_s)
        self._check_gps(dt_s)
        self._check_fence()

    def _check_battery(self) -> None:
        ap, params, batt = self._ap, self._ap.params, self._ap.battery
        resting_v = batt.resting_voltage_v
        low = (params["BATT_LOW_MAH"] > 0 and batt.remaining_mah < params["BATT_LOW_MAH"]) or (
            params["BATT_LOW_VOLT"] > 0 and resting_v < params["BATT_LOW_VOLT"]
        )
        critical = (params["BATT_CRT_MAH"] > 0 and batt.remaining_mah < params["BATT_CRT_MAH"]) or (
            params["BATT_CRT_VOLT"] > 0 and resting_v < params["BATT_CRT_VOLT"]
        )
        if critical and not self.battery_critical:
            self.battery_critical = self.battery_low = True
            ap.text(CRITICAL, f"Battery 1 is critical {batt.voltage_v:.2f}V used {batt.consumed_mah:.0f} mAh")
            self._act(int(params["BATT_FS_CRT_ACT"]))
        elif low and not self.battery_low:
            self.battery_low = True
            ap.text(CRITICAL, f"Battery 1 is low {batt.voltage_v:.2f}V used {batt.consumed_mah:.0f} mAh")
            self._act(int(params["BATT_FS_LOW_ACT"]))

    def _check_gcs(self, now_s: float) -> None:
        ap = self._ap
        if self.gcs or self.last_gcs_heartbeat_s is None or ap.params["FS_GCS_ENABLE"] == 0:
            return
        if now_s - self.last_gcs_heartbeat_s < ap.params["FS_GCS_TIMEOUT"]:
            return
        if not ap.armed or ap.land_complete:
            return
        self.gcs = True
        ap.text(CRITICAL, "GCS Failsafe")
        self._act(ACTION_RTL)

    def _check_gps(self, dt_s: float) -> None:
        ap = self._ap
        if ap.gps.has_3d_fix:
            self._gps_bad_s = 0.0
            if self.gps:
                self.gps = False
                ap.text(INFO, "EKF Failsafe Cleared")
            return
        self._gps_bad_s += dt_s
        if self.gps or self._gps_bad_s < GPS_LOSS_TRIGGER_S or not ap.armed or ap.land_complete:
            return
        if ap.mode in POSITION_MODES:
            self.gps = True
            ap.text(CRITICAL, "EKF Failsafe")
            self._act(ACTION_LAND)

    def _check_fence(self) -> None:
        ap, params = self._ap, self._ap.params
        if params["FENCE_ENABLE"] == 0 or not ap.armed or ap.land_complete:
            self.fence_breached = False
            return
        fence_type = int(params["FENCE_TYPE"])
        v = ap.vehicle
        home_n, home_e = ap.frame.to_local(ap.home.lat_deg, ap.home.lon_deg)
        too_high = bool(fence_type & 1) and v.up_m - ap.home_up_m > params["FENCE_ALT_MAX"]
        too_far = bool(fence_type & 2) and math.hypot(v.north_m - home_n, v.east_m - home_e) > params["FENCE_RADIUS"]
        breached = too_high or too_far
        if breached and not self.fence_breached:
            ap.text(CRITICAL, "Fence Breached")
            if params["FENCE_ACTION"] != 0:
                self._act(ACTION_RTL)
        self.fence_breached = breached

    def _act(self, action: int) -> None:
        ap = self._ap
        if not ap.armed or action == ACTION_NONE:
            return
        if ap.land_complete:
            ap.disarm(reason="Disarming motors")
            return
        if action == ACTION_TERMINATE:
            ap.disarm(force=True, reason="Flight terminated")
            return
        if action in (ACTION_RTL, ACTION_SMART_RTL, ACTION_SMART_RTL_LAND):
            if ap.mode in (CopterMode.RTL, CopterMode.LAND):
                return
            ok, _ = ap.set_mode(CopterMode.RTL)
            if ok:
                return
        if ap.mode != CopterMode.LAND:
            ap.set_mode(CopterMode.LAND)
