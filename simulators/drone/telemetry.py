"""Builds the MAVLink telemetry messages from the autopilot's state, in MAVLink's units.

GLOBAL_POSITION_INT: lat/lon 1e-7 deg, alt/relative_alt mm, vx/vy/vz cm/s NED, hdg cdeg.
GPS_RAW_INT: alt mm MSL, eph/epv = DOP x 100, vel cm/s, cog cdeg.  ATTITUDE: radians, rad/s.
VFR_HUD: m/s, metres MSL, heading whole degrees.  SYS_STATUS/BATTERY_STATUS: mV, cA, mAh, percent.
"""

from __future__ import annotations

import random
from collections.abc import Callable

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .autopilot import Autopilot
from .clock import SimClock
from .modes import POSITION_MODES, CopterMode
from .streams import (
    ATTITUDE,
    AUTOPILOT_VERSION,
    BATTERY_STATUS,
    EXTENDED_SYS_STATE,
    GLOBAL_POSITION_INT,
    GPS_RAW_INT,
    HEARTBEAT,
    HOME_POSITION,
    LOCAL_POSITION_NED,
    MISSION_CURRENT,
    SYS_STATUS,
    SYSTEM_TIME,
    VFR_HUD,
)

M = mavlink2
GEOID_SEPARATION_M = 10.0  # WGS84 ellipsoid above MSL around Shanghai, for GPS_RAW_INT.alt_ellipsoid
FIRMWARE_VERSION = (4, 5, 7)
UINT16_UNKNOWN = 65535

SENSORS_PRESENT = (
    M.MAV_SYS_STATUS_SENSOR_3D_GYRO
    | M.MAV_SYS_STATUS_SENSOR_3D_ACCEL
    | M.MAV_SYS_STATUS_SENSOR_3D_MAG
    | M.MAV_SYS_STATUS_SENSOR_ABSOLUTE_PRESSURE
    | M.MAV_SYS_STATUS_SENSOR_GPS
    | M.MAV_SYS_STATUS_SENSOR_ANGULAR_RATE_CONTROL
    | M.MAV_SYS_STATUS_SENSOR_ATTITUDE_STABILIZATION
    | M.MAV_SYS_STATUS_SENSOR_YAW_POSITION
    | M.MAV_SYS_STATUS_SENSOR_Z_ALTITUDE_CONTROL
    | M.MAV_SYS_STATUS_SENSOR_XY_POSITION_CONTROL
    | M.MAV_SYS_STATUS_SENSOR_MOTOR_OUTPUTS
    | M.MAV_SYS_STATUS_AHRS
    | M.MAV_SYS_STATUS_SENSOR_BATTERY
    | M.MAV_SYS_STATUS_PREARM_CHECK
)

CAPABILITIES = (
    M.MAV_PROTOCOL_CAPABILITY_MISSION_FLOAT
    | M.MAV_PROTOCOL_CAPABILITY_PARAM_FLOAT
    | M.MAV_PROTOCOL_CAPABILITY_MISSION_INT
    | M.MAV_PROTOCOL_CAPABILITY_COMMAND_INT
    | M.MAV_PROTOCOL_CAPABILITY_PARAM_ENCODE_C_CAST
    | M.MAV_PROTOCOL_CAPABILITY_SET_POSITION_TARGET_GLOBAL_INT
    | M.MAV_PROTOCOL_CAPABILITY_SET_POSITION_TARGET_LOCAL_NED
    | M.MAV_PROTOCOL_CAPABILITY_MAVLINK2
)


class TelemetryBuilder:
    """One drone's message factory. `boot_s` is the simulated instant the autopilot 'powered on'."""

    def __init__(self, ap: Autopilot, clock: SimClock, boot_s: float, sysid: int, rng: random.Random) -> None:
        self._ap = ap
        self._clock = clock
        self._boot_s = boot_s
        self._sysid = sysid
        self._rng = rng
        self.drop_rate_pct = 0.0
        self._builders: dict[int, Callable[[], mavlink2.MAVLink_message | None]] = {
            HEARTBEAT: self.heartbeat,
            SYS_STATUS: self.sys_status,
            SYSTEM_TIME: self.system_time,
            GPS_RAW_INT: self.gps_raw_int,
            ATTITUDE: self.attitude,
            LOCAL_POSITION_NED: self.local_position_ned,
            GLOBAL_POSITION_INT: self.global_position_int,
            MISSION_CURRENT: self.mission_current,
            VFR_HUD: self.vfr_hud,
            BATTERY_STATUS: self.battery_status,
            EXTENDED_SYS_STATE: self.extended_sys_state,
            HOME_POSITION: self.home_position,
            AUTOPILOT_VERSION: self.autopilot_version,
        }

    def can_build(self, msg_id: int) -> bool:
        return msg_id in self._builders

    def build(self, msg_id: int) -> mavlink2.MAVLink_message | None:
        builder = self._builders.get(msg_id)
        return builder() if builder is not None else None

    # ----------------------------------------------------------------- helpers

    @property
    def _boot_ms(self) -> int:
        return int((self._ap.now_s - self._boot_s) * 1000.0) & 0xFFFFFFFF

    @property
    def _boot_us(self) -> int:
        return int((self._ap.now_s - self._boot_s) * 1e6)

    # ----------------------------------------------------------------- messages

    def heartbeat(self) -> mavlink2.MAVLink_message:
        ap = self._ap
        base_mode = (
            M.MAV_MODE_FLAG_CUSTOM_MODE_ENABLED
            | M.MAV_MODE_FLAG_STABILIZE_ENABLED
            | M.MAV_MODE_FLAG_MANUAL_INPUT_ENABLED
        )
        if ap.mode in POSITION_MODES:
            base_mode |= M.MAV_MODE_FLAG_GUIDED_ENABLED
        if ap.armed:
            base_mode |= M.MAV_MODE_FLAG_SAFETY_ARMED
        if ap.failsafe.any:
            status = M.MAV_STATE_CRITICAL
        elif ap.land_complete:
            status = M.MAV_STATE_STANDBY
        else:
            status = M.MAV_STATE_ACTIVE
        return M.MAVLink_heartbeat_message(
            M.MAV_TYPE_QUADROTOR, M.MAV_AUTOPILOT_ARDUPILOTMEGA, base_mode, int(ap.mode), status, 3
        )

    def sys_status(self) -> mavlink2.MAVLink_message:
        ap, batt = self._ap, self._ap.battery
        enabled = SENSORS_PRESENT if ap.armed else SENSORS_PRESENT & ~M.MAV_SYS_STATUS_SENSOR_MOTOR_OUTPUTS
        health = SENSORS_PRESENT
        if not ap.gps.has_3d_fix or ap.gps.glitch is not None:
            health &= ~M.MAV_SYS_STATUS_SENSOR_GPS
        if ap.failsafe.battery_low:
            health &= ~M.MAV_SYS_STATUS_SENSOR_BATTERY
        if ap.prearm_failure() is not None:
            health &= ~M.MAV_SYS_STATUS_PREARM_CHECK
        return M.MAVLink_sys_status_message(
            SENSORS_PRESENT,
            enabled,
            health,
            180 + self._rng.randint(0, 40),  # load, d%
            round(batt.voltage_v * 1000),
            round(batt.current_a * 100),
            round(batt.remaining_pct),
            round(self.drop_rate_pct * 100),  # c%
            0, 0, 0, 0, 0,
        )  # fmt: skip

    def system_time(self) -> mavlink2.MAVLink_message:
        unix_us = int(self._clock.unix_s(self._ap.now_s) * 1e6)
        return M.MAVLink_system_time_message(unix_us, self._boot_ms)

    def gps_raw_int(self) -> mavlink2.MAVLink_message:
        ap, gps, v = self._ap, self._ap.gps, self._ap.vehicle
        if gps.fix_type >= M.GPS_FIX_TYPE_2D_FIX:
            pos = ap.estimated_position()
            lat, lon, alt_mm = round(pos.lat_deg * 1e7), round(pos.lon_deg * 1e7), round(pos.alt_msl_m * 1000)
            alt_ellipsoid_mm = alt_mm + round(GEOID_SEPARATION_M * 1000)
            vel_cms = round(v.ground_speed_mps * 100)
            cog_cdeg = round(v.course_deg * 100) % 36000
        else:
            lat = lon = alt_mm = alt_ellipsoid_mm = vel_cms = 0
            cog_cdeg = UINT16_UNKNOWN
        hdop = min(gps.hdop, 99.99)
        return M.MAVLink_gps_raw_int_message(
            self._boot_us,
            gps.fix_type,
            lat,
            lon,
            alt_mm,
            round(hdop * 100),
            round(min(hdop * 1.4, 99.99) * 100),
            vel_cms,
            cog_cdeg,
            gps.satellites,
            alt_ellipsoid_mm,
            round(hdop * 1500),  # h_acc mm
            round(hdop * 2500),  # v_acc mm
            250,  # vel_acc mm/s
            0,
            0,
        )

    def attitude(self) -> mavlink2.MAVLink_message:
        v = self._ap.vehicle
        jitter = 0.003 if self._ap.armed and not v.on_ground else 0.0005
        g = self._rng.gauss
        return M.MAVLink_attitude_message(
            self._boot_ms,
            v.roll_rad + g(0.0, jitter),
            v.pitch_rad + g(0.0, jitter),
            v.yaw_rad,
            v.roll_rate_radps + g(0.0, jitter),
            v.pitch_rate_radps + g(0.0, jitter),
            v.yaw_rate_radps,
        )

    def global_position_int(self) -> mavlink2.MAVLink_message:
        ap, v = self._ap, self._ap.vehicle
        if ap.had_position:
            pos = ap.estimated_position()
            lat, lon = round(pos.lat_deg * 1e7), round(pos.lon_deg * 1e7)
            alt_mm = round(pos.alt_msl_m * 1000)
            rel_mm = round((pos.alt_msl_m - ap.home.alt_msl_m) * 1000)
        else:
            lat = lon = alt_mm = rel_mm = 0
        return M.MAVLink_global_position_int_message(
            self._boot_ms,
            lat,
            lon,
            alt_mm,
            rel_mm,
            round(v.vel_north_mps * 100),
            round(v.vel_east_mps * 100),
            round(-v.vel_up_mps * 100),
            round(v.heading_deg * 100) % 36000,
        )

    def local_position_ned(self) -> mavlink2.MAVLink_message:
        ap, v = self._ap, self._ap.vehicle
        north, east, up = ap.estimated_local()
        return M.MAVLink_local_position_ned_message(
            self._boot_ms, north, east, -up, v.vel_north_mps, v.vel_east_mps, -v.vel_up_mps
        )

    def vfr_hud(self) -> mavlink2.MAVLink_message:
        ap, v = self._ap, self._ap.vehicle
        flying = ap.armed and not ap.land_complete
        throttle = min(100, round(v.thrust_ratio * ap.params["MOT_THST_HOVER"] * 100)) if flying else 0
        alt_msl = ap.estimated_position().alt_msl_m
        return M.MAVLink_vfr_hud_message(
            v.ground_speed_mps, v.ground_speed_mps, round(v.heading_deg) % 360, throttle, alt_msl, v.vel_up_mps
        )

    def battery_status(self) -> mavlink2.MAVLink_message:
        ap, batt = self._ap, self._ap.battery
        cells_mv = [round(c * 1000) for c in batt.cell_voltages_v()][:10]
        cells_mv += [UINT16_UNKNOWN] * (10 - len(cells_mv))
        if ap.failsafe.battery_critical:
            charge_state = M.MAV_BATTERY_CHARGE_STATE_CRITICAL
        elif ap.failsafe.battery_low:
            charge_state = M.MAV_BATTERY_CHARGE_STATE_LOW
        else:
            charge_state = M.MAV_BATTERY_CHARGE_STATE_OK
        return M.MAVLink_battery_status_message(
            0,
            M.MAV_BATTERY_FUNCTION_ALL,
            M.MAV_BATTERY_TYPE_LIPO,
            round(batt.temperature_c * 100),
            cells_mv,
            round(batt.current_a * 100),
            round(batt.consumed_mah),
            round(batt.consumed_wh * 36),  # hJ
            round(batt.remaining_pct),
            round(batt.time_remaining_s()),
            charge_state,
            [0, 0, 0, 0],
            0,
            0,
        )

    def extended_sys_state(self) -> mavlink2.MAVLink_message:
        ap = self._ap
        if not ap.armed or (ap.land_complete and not ap.taking_off):
            landed = M.MAV_LANDED_STATE_ON_GROUND
        elif ap.taking_off:
            landed = M.MAV_LANDED_STATE_TAKEOFF
        elif ap.landing:
            landed = M.MAV_LANDED_STATE_LANDING
        else:
            landed = M.MAV_LANDED_STATE_IN_AIR
        return M.MAVLink_extended_sys_state_message(M.MAV_VTOL_STATE_UNDEFINED, landed)

    def home_position(self) -> mavlink2.MAVLink_message | None:
        ap = self._ap
        if not ap.home_set:
            return None  # ArduPilot says nothing about home until it has one
        home = ap.home
        north, east = ap.frame.to_local(home.lat_deg, home.lon_deg)
        return M.MAVLink_home_position_message(
            round(home.lat_deg * 1e7),
            round(home.lon_deg * 1e7),
            round(home.alt_msl_m * 1000),
            north,
            east,
            -ap.home_up_m,
            [1.0, 0.0, 0.0, 0.0],
            0.0,
            0.0,
            0.0,
            self._boot_us,
        )

    def mission_current(self) -> mavlink2.MAVLink_message:
        ap = self._ap
        return M.MAVLink_mission_current_message(
            ap.runner.current_seq,
            ap.store.nav_total,
            ap.runner.mission_state,
            1 if ap.mode == CopterMode.AUTO else 0,
        )

    def autopilot_version(self) -> mavlink2.MAVLink_message:
        major, minor, patch = FIRMWARE_VERSION
        sw_version = (major << 24) | (minor << 16) | (patch << 8) | M.FIRMWARE_VERSION_TYPE_OFFICIAL
        git_hash = list(b"5c1ab3d9")
        uid = 0x5047_0000_0000_0000 | self._sysid
        return M.MAVLink_autopilot_version_message(
            CAPABILITIES, sw_version, 0, 0, 0, git_hash, [0] * 8, [0] * 8, 0x1209, 0x5740, uid, [0] * 18
        )

    def statustext(self, severity: int, text: str) -> mavlink2.MAVLink_message:
        return M.MAVLink_statustext_message(severity, text.encode("ascii", errors="replace")[:50], 0, 0)
