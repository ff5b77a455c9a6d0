"""GUIDED-mode control messages: SET_POSITION_TARGET_GLOBAL_INT / _LOCAL_NED and legacy guided items.

ArduCopter only obeys these in GUIDED; elsewhere they are ignored (the autopilot's guided_* calls refuse).
Local frames are relative to the EKF origin, which here is the drone's spawn point on the ground.
"""

from __future__ import annotations

import math

from pymavlink.dialects.v20 import ardupilotmega as mavlink2

from .autopilot import Autopilot
from .mission_store import AMSL_FRAMES, MissionItem
from .modes import CopterMode

M = mavlink2
POSITION_IGNORED = (
    M.POSITION_TARGET_TYPEMASK_X_IGNORE | M.POSITION_TARGET_TYPEMASK_Y_IGNORE | M.POSITION_TARGET_TYPEMASK_Z_IGNORE
)
VELOCITY_IGNORED = (
    M.POSITION_TARGET_TYPEMASK_VX_IGNORE | M.POSITION_TARGET_TYPEMASK_VY_IGNORE | M.POSITION_TARGET_TYPEMASK_VZ_IGNORE
)


def position_target_global(ap: Autopilot, msg: mavlink2.MAVLink_message) -> None:
    """Go to a lat/lon/alt, or (position ignored) fly a NED velocity in m/s."""
    mask = msg.type_mask
    if not mask & POSITION_IGNORED:
        north, east = ap.frame.to_local(msg.lat_int / 1e7, msg.lon_int / 1e7)
        ap.guided_goto(north, east, ap.up_from_alt(msg.alt, msg.coordinate_frame in AMSL_FRAMES))
    elif not mask & VELOCITY_IGNORED:
        ap.guided_velocity(msg.vx, msg.vy, -msg.vz)
    if not mask & M.POSITION_TARGET_TYPEMASK_YAW_IGNORE:
        ap.set_yaw(math.degrees(msg.yaw))


def position_target_local(ap: Autopilot, msg: mavlink2.MAVLink_message) -> None:
    """LOCAL_NED / LOCAL_OFFSET_NED positions; LOCAL_NED or BODY_NED velocities."""
    mask = msg.type_mask
    v = ap.vehicle
    frame = msg.coordinate_frame
    if not mask & POSITION_IGNORED:
        if frame == M.MAV_FRAME_LOCAL_NED:
            ap.guided_goto(msg.x, msg.y, -msg.z)
        elif frame == M.MAV_FRAME_LOCAL_OFFSET_NED:
            ap.guided_goto(v.north_m + msg.x, v.east_m + msg.y, v.up_m - msg.z)
    elif not mask & VELOCITY_IGNORED:
        vel_north, vel_east = msg.vx, msg.vy
        if frame in (M.MAV_FRAME_BODY_NED, M.MAV_FRAME_BODY_OFFSET_NED):
            c, s = math.cos(v.yaw_rad), math.sin(v.yaw_rad)
            vel_north, vel_east = msg.vx * c - msg.vy * s, msg.vx * s + msg.vy * c
        ap.guided_velocity(vel_north, vel_east, -msg.vz)


def guided_item(ap: Autopilot, item: MissionItem) -> bool:
    """MISSION_ITEM(_INT) with current=2 (go there) or current=3 (change altitude only)."""
    if item.current == 3:
        if ap.mode != CopterMode.GUIDED:
            return False
        v = ap.vehicle
        return ap.guided_goto(v.north_m, v.east_m, ap.up_from_alt(item.z, item.frame in AMSL_FRAMES))
    north, east, up = ap.item_target(item)
    return ap.guided_goto(north, east, up)
