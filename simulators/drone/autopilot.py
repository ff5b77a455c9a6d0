"""Flight controller logic: arming, flight modes, guided commands, land detection, auto-disarm.

This is the part that decides *what* the vehicle should do (the Vehicle class decides how it moves). The
rules mirror ArduCopter where a gateway or ground station can observe them: which modes need a position,
which modes are armable, that takeoff only works in GUIDED-like modes on the ground, that LAND and RTL
disarm on touchdown and that an idle armed copter disarms itself after DISARM_DELAY.
"""

from __future__ import annotations

from typing import Protocol

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .battery import BatteryPack, flight_power_w
from .failsafe import FailsafeMonitor
from .geo import GeoPoint, LocalFrame
from .gps import GpsModel
from .mission_runner import MissionRunner
from .mission_store import AMSL_FRAMES, MissionItem, MissionStore
from .modes import NOT_ARMABLE_MODES, POSITION_MODES, SUPPORTED_MODES, CopterMode, mode_name
from .nav import GotoTask, HoldTask, LandTask, NavLimits, NavTask, RtlTask, TakeoffTask, VelocityTask
from .params import ParamStore
from .vehicle import Setpoint, Vehicle

INFO = mavlink2.MAV_SEVERITY_INFO
FORCE_MAGIC = 21196  # COMPONENT_ARM_DISARM param2 that skips checks
LAND_DETECT_S = 1.0
BRAKE_ACCEL_MPS2 = 8.0
TAKEOFF_MODES = frozenset({CopterMode.GUIDED, CopterMode.LOITER, CopterMode.ALT_HOLD, CopterMode.POSHOLD})
_IDLE = Setpoint(idle=True)


class Notifier(Protocol):
    """Events the autopilot reports over MAVLink."""

    def text(self, severity: int, text: str) -> None: ...
    def item_reached(self, seq: int) -> None: ...
    def current_changed(self) -> None: ...
    def home_changed(self) -> None: ...


class Autopilot:
    """One vehicle's flight controller. Heights ("up") are metres above the flat ground at the origin."""

    def __init__(
        self,
        *,
        frame: LocalFrame,
        ground_alt_msl_m: float,
        params: ParamStore,
        battery: BatteryPack,
        gps: GpsModel,
        store: MissionStore,
        notifier: Notifier,
        hover_power_w: float,
        yaw_deg: float = 0.0,
    ) -> None:
        self.frame = frame
        self.ground_alt_msl_m = ground_alt_msl_m
        self.params = params
        self.battery = battery
        self.gps = gps
        self.store = store
        self.notifier = notifier
        self.hover_power_w = hover_power_w
        self.vehicle = Vehicle(yaw_deg)
        self.mode = CopterMode.STABILIZE
        self.armed = False
        self.land_complete = True
        self.home = GeoPoint(frame.origin_lat_deg, frame.origin_lon_deg, ground_alt_msl_m)
        self.home_set = False
        self.had_position = False
        self.now_s = 0.0
        self.runner = MissionRunner(store, self)
        self.failsafe = FailsafeMonitor(self)
        self._task: NavTask = HoldTask(0.0, 0.0, 0.0)
        self._auto_hold: HoldTask | None = None
        self._ground_s = 0.0
        self._idle_armed_s = 0.0
        self._limits: NavLimits | None = None
        self._speed_override_mps: float | None = None
        self._climb_override_mps: float | None = None
        self._descent_override_mps: float | None = None

    # ----------------------------------------------------------------- derived state

    def limits(self) -> NavLimits:
        """Navigation limits from parameters (cached until a parameter or speed override changes)."""
        if self._limits is None:
            p = self.params
            wp_speed = self._speed_override_mps or p["WPNAV_SPEED"] / 100.0
            descent = self._descent_override_mps or p["WPNAV_SPEED_DN"] / 100.0
            self._limits = NavLimits(
                wp_speed_mps=max(0.2, wp_speed),
                climb_mps=max(0.1, self._climb_override_mps or p["WPNAV_SPEED_UP"] / 100.0),
                descent_mps=max(0.1, descent),
                accel_mps2=max(0.5, p["WPNAV_ACCEL"] / 100.0),
                wp_radius_m=max(0.5, p["WPNAV_RADIUS"] / 100.0),
                land_speed_mps=max(0.1, p["LAND_SPEED"] / 100.0),
                land_speed_high_mps=max(0.1, p["LAND_SPEED_HIGH"] / 100.0 or descent),
                land_alt_low_m=max(0.0, p["LAND_ALT_LOW"] / 100.0),
                rtl_alt_m=max(0.0, p["RTL_ALT"] / 100.0),
                rtl_alt_final_m=max(0.0, p["RTL_ALT_FINAL"] / 100.0),
                rtl_loiter_s=max(0.0, p["RTL_LOIT_TIME"] / 1000.0),
                rtl_speed_mps=max(0.2, p["RTL_SPEED"] / 100.0 or wp_speed),
                yaw_rate_dps=max(5.0, p["ATC_SLEW_YAW"] / 100.0),
                face_travel=p["WP_YAW_BEHAVIOR"] != 0,
            )
        return self._limits

    def params_changed(self) -> None:
        self._limits = None

    @property
    def home_up_m(self) -> float:
        return self.home.alt_msl_m - self.ground_alt_msl_m

    @property
    def active_task(self) -> NavTask | None:
        if self.mode == CopterMode.AUTO and self.runner.task is not None:
            return self.runner.task
        return self._task

    @property
    def taking_off(self) -> bool:
        task = self.active_task
        return self.armed and task is not None and task.taking_off

    @property
    def landing(self) -> bool:
        task = self.active_task
        return self.armed and not self.land_complete and task is not None and task.landing

    def estimated_local(self) -> tuple[float, float, float]:
        """(north, east, up) as the EKF reports it: the true state plus the GPS error."""
        err_n, err_e, err_up = self.gps.offset_m()
        v = self.vehicle
        return v.north_m + err_n, v.east_m + err_e, v.up_m + err_up * 0.3

    def estimated_position(self) -> GeoPoint:
        north, east, up = self.estimated_local()
        lat, lon = self.frame.to_global(north, east)
        return GeoPoint(lat, lon, self.ground_alt_msl_m + up)

    def item_target(self, item: MissionItem) -> tuple[float, float, float]:
        """Local (north, east, up) of a mission item; lat/lon 0,0 and alt 0 mean "where I am"."""
        v = self.vehicle
        if item.x == 0 and item.y == 0:
            north, east = v.north_m, v.east_m
        else:
            north, east = self.frame.to_local(item.lat_deg, item.lon_deg)
        if item.z == 0 and item.command != mavlink2.MAV_CMD_NAV_TAKEOFF:
            up = v.up_m
        elif item.frame in AMSL_FRAMES:
            up = item.z - self.ground_alt_msl_m
        else:
            up = item.z + self.home_up_m
        return north, east, max(0.0, up)

    def up_from_alt(self, alt_m: float, amsl: bool) -> float:
        return max(0.0, alt_m - self.ground_alt_msl_m if amsl else alt_m + self.home_up_m)

    # ----------------------------------------------------------------- arming

    def arm(self, force: bool = False) -> tuple[bool, str | None]:
        if self.armed:
            return True, None
        if self.mode in NOT_ARMABLE_MODES and not force:
            return False, "Arm: Mode not armable"
        failure = None if force else self.prearm_failure()
        if failure is not None:
            return False, failure
        self.armed = True
        self.land_complete = True
        self._ground_s = 0.0
        self._idle_armed_s = 0.0
        if self.gps.has_3d_fix:
            self.set_home(self.estimated_position())
        self._task = HoldTask.here(self.vehicle)
        self.notifier.text(INFO, "Arming motors")
        return True, None

    def prearm_failure(self) -> str | None:
        """The first failing pre-arm check, as the STATUSTEXT ArduCopter would send, or None."""
        if self.params["ARMING_CHECK"] == 0:
            return None
        if not self.gps.has_3d_fix:
            return "PreArm: Need 3D Fix"
        if self.gps.glitch is not None:
            return "PreArm: GPS glitching"
        if self.failsafe.battery_low or self.battery.remaining_mah < self.params["BATT_LOW_MAH"]:
            return "PreArm: Battery 1 low capacity"
        return None

    def disarm(self, force: bool = False, reason: str = "Disarming motors") -> tuple[bool, str | None]:
        if not self.armed:
            return True, None
        if not self.land_complete and not force:
            return False, "Disarm: not landed"
        self.armed = False
        self._idle_armed_s = 0.0
        self.notifier.text(INFO, reason)
        return True, None

    # ----------------------------------------------------------------- modes

    def set_mode(self, mode: int) -> tuple[bool, str | None]:
        if mode not in SUPPORTED_MODES:
            return False, f"Mode change to {mode_name(mode)} failed: unsupported"
        mode = CopterMode(mode)
        name = mode.name
        if mode in POSITION_MODES and not self.gps.has_3d_fix:
            return False, f"Mode change to {name} failed: requires position"
        if mode == CopterMode.AUTO:
            if self.store.nav_total == 0:
                return False, "Mode change to AUTO failed: mission empty"
            if self.armed and self.land_complete and not self._mission_starts_with_takeoff():
                return False, "Auto: Missing Takeoff Cmd"
        if mode == self.mode:
            return True, None
        if self.mode == CopterMode.AUTO:
            self.runner.stop()
        self.mode = mode
        self._speed_override_mps = self._climb_override_mps = self._descent_override_mps = None
        self._limits = None
        self._auto_hold = None
        v = self.vehicle
        if mode == CopterMode.BRAKE:
            self._task = HoldTask.here(v, BRAKE_ACCEL_MPS2)
        elif mode == CopterMode.RTL:
            self._task = self.new_rtl_task()
        elif mode == CopterMode.LAND:
            self._task = LandTask()
        else:
            self._task = HoldTask.here(v)
            if mode == CopterMode.AUTO and self.armed and not self.land_complete:
                self.runner.start(self.now_s)
        return True, None

    def _mission_starts_with_takeoff(self) -> bool:
        seq = max(1, self.runner.current_seq)
        item = self.store.flyable(seq)
        while item is not None and not item.is_nav:
            seq += 1
            item = self.store.flyable(seq)
        return item is not None and item.command == mavlink2.MAV_CMD_NAV_TAKEOFF

    def new_rtl_task(self) -> RtlTask:
        home_n, home_e = self.frame.to_local(self.home.lat_deg, self.home.lon_deg)
        return RtlTask(self.vehicle, self.limits(), home_n, home_e, self.home_up_m)

    # ----------------------------------------------------------------- guided and mission commands

    def takeoff(self, alt_rel_m: float) -> tuple[bool, str | None]:
        if self.mode not in TAKEOFF_MODES:
            return False, f"Takeoff: not supported in {self.mode.name}"
        if not self.armed:
            return False, "Takeoff: not armed"
        if not self.land_complete:
            return False, "Takeoff: already flying"
        target_up = self.home_up_m + alt_rel_m
        if target_up <= self.vehicle.up_m + 0.5:
            return False, "Takeoff: altitude too low"
        v = self.vehicle
        self._task = TakeoffTask(v.north_m, v.east_m, target_up)
        return True, None

    def guided_goto(self, north_m: float, east_m: float, up_m: float | None, speed_mps: float | None = None) -> bool:
        if self.mode != CopterMode.GUIDED or not self.armed:
            return False
        if self.land_complete and not self.taking_off:
            return True  # ArduCopter accepts the target but will not leave the ground for it
        task = GotoTask(north_m, east_m, self.vehicle.up_m if up_m is None else up_m, speed_mps)
        self._task = task
        return True

    def guided_velocity(self, vel_north_mps: float, vel_east_mps: float, climb_mps: float) -> bool:
        if self.mode != CopterMode.GUIDED or not self.armed or self.land_complete:
            return False
        self._task = VelocityTask(vel_north_mps, vel_east_mps, climb_mps, self.now_s)
        return True

    def set_yaw(self, yaw_deg: float) -> bool:
        task = self._task if self.mode != CopterMode.AUTO else self.runner.task
        if task is None or not hasattr(task, "yaw_deg"):
            return False
        task.yaw_deg = yaw_deg % 360.0  # type: ignore[attr-defined]
        return True

    def change_speed(self, speed_type: int, speed_mps: float) -> None:
        """DO_CHANGE_SPEED: 0/1 horizontal, 2 climb, 3 descent; -2 restores the parameter default."""
        value = None if speed_mps == -2 else speed_mps
        if value is not None and value <= 0:
            return
        if speed_type in (0, 1):
            self._speed_override_mps = value
        elif speed_type == 2:
            self._climb_override_mps = value
        elif speed_type == 3:
            self._descent_override_mps = value
        self._limits = None

    def start_mission(self, first_seq: int = 0) -> tuple[bool, str | None]:
        if self.store.nav_total == 0:
            return False, "Mission: empty"
        if not self.armed:
            return False, "Mission: arm first"
        if self.mode != CopterMode.AUTO:
            ok, reason = self.set_mode(CopterMode.AUTO)
            if not ok:
                return False, reason
        self._auto_hold = None
        self.runner.start(self.now_s, first_seq)
        return True, None

    def pause(self, pause: bool) -> bool:
        """DO_PAUSE_CONTINUE: brake and hold in AUTO/GUIDED; continue resumes the mission."""
        if self.mode == CopterMode.AUTO and self.runner.running:
            self.runner.paused = pause
            if pause:
                self._auto_hold = HoldTask.here(self.vehicle, BRAKE_ACCEL_MPS2)
            return True
        if self.mode == CopterMode.GUIDED and pause:
            self._task = HoldTask.here(self.vehicle, BRAKE_ACCEL_MPS2)
            return True
        return False

    def set_current(self, seq: int) -> bool:
        return self.runner.set_current(seq, self.now_s)

    def set_home(self, home: GeoPoint) -> None:
        self.home = home
        self.home_set = True
        self.notifier.home_changed()

    # ----------------------------------------------------------------- AutoContext for the mission runner

    def text(self, severity: int, text: str) -> None:
        self.notifier.text(severity, text)

    def item_reached(self, seq: int) -> None:
        self.notifier.item_reached(seq)

    def current_changed(self) -> None:
        self.notifier.current_changed()

    # ----------------------------------------------------------------- simulation step

    def step(self, dt_s: float, now_s: float) -> None:
        """Advance the flight controller and the airframe by dt_s simulated seconds."""
        self.now_s = now_s
        self.gps.step(dt_s, now_s)
        if self.gps.has_3d_fix:
            self.had_position = True
            if not self.home_set:
                self.set_home(self.estimated_position())
        self.failsafe.check(dt_s, now_s)
        lim = self.limits()
        sp = self._setpoint(lim, now_s)
        v = self.vehicle
        v.step(dt_s, sp, self.armed, lim.yaw_rate_dps)
        self._detect_landing(dt_s, now_s)
        power_w = flight_power_w(
            self.hover_power_w,
            self.armed,
            not self.land_complete,
            v.thrust_ratio,
            v.vel_up_mps,
            v.ground_speed_mps,
            v.mass_kg,
        )
        self.battery.step(dt_s, power_w)

    def _setpoint(self, lim: NavLimits, now_s: float) -> Setpoint:
        if not self.armed:
            return _IDLE
        sp: Setpoint | None = None
        if self.mode == CopterMode.AUTO:
            sp = self.runner.step(now_s)
            if sp is None:
                if self._auto_hold is None:
                    self._auto_hold = HoldTask.here(self.vehicle)
                sp = self._auto_hold.setpoint(self.vehicle, lim, now_s)
            else:
                self._auto_hold = None
        else:
            sp = self._task.setpoint(self.vehicle, lim, now_s)
        if self.land_complete and not self.taking_off:
            return _IDLE
        return sp

    def _detect_landing(self, dt_s: float, now_s: float) -> None:
        if not self.armed:
            self._ground_s = 0.0
            self.land_complete = True
            return
        v = self.vehicle
        if v.on_ground and not self.taking_off:
            self._ground_s += dt_s
            if not self.land_complete and self._ground_s >= LAND_DETECT_S:
                self.land_complete = True
                self._on_touchdown(now_s)
        else:
            self._ground_s = 0.0
            if not v.on_ground:
                self.land_complete = False
        if self.armed and self.land_complete and self.mode in (CopterMode.LAND, CopterMode.RTL):
            self.disarm(reason="Disarming motors")  # LAND/RTL on the ground: nothing left to do
        if self.armed and self.land_complete:
            self._idle_armed_s += dt_s
            delay_s = self.params["DISARM_DELAY"]
            if delay_s > 0 and self._idle_armed_s >= delay_s:
                self.disarm(reason="Auto disarm")
        else:
            self._idle_armed_s = 0.0

    def _on_touchdown(self, now_s: float) -> None:
        """LAND, RTL and mission landings disarm on touchdown, as ArduCopter's land-complete does."""
        task = self.active_task
        landing_task = task is not None and isinstance(task, (LandTask, RtlTask))
        if self.mode in (CopterMode.LAND, CopterMode.RTL) or landing_task:
            if task is not None and landing_task:
                task.done = True
                if self.mode == CopterMode.AUTO:
                    self.runner.step(now_s)
            self.disarm(reason="Disarming motors")
