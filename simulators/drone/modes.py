"""ArduCopter flight modes, by their custom_mode numbers (as carried in HEARTBEAT.custom_mode)."""

from __future__ import annotations

from enum import IntEnum


class CopterMode(IntEnum):
    STABILIZE = 0
    ACRO = 1
    ALT_HOLD = 2
    AUTO = 3
    GUIDED = 4
    LOITER = 5
    RTL = 6
    CIRCLE = 7
    LAND = 9
    POSHOLD = 16
    BRAKE = 17
    SMART_RTL = 21


SUPPORTED_MODES = frozenset(
    {
        CopterMode.STABILIZE,
        CopterMode.ALT_HOLD,
        CopterMode.AUTO,
        CopterMode.GUIDED,
        CopterMode.LOITER,
        CopterMode.RTL,
        CopterMode.LAND,
        CopterMode.POSHOLD,
        CopterMode.BRAKE,
    }
)

# Modes that need a position estimate (ArduCopter: "requires position").
POSITION_MODES = frozenset(
    {
        CopterMode.AUTO,
        CopterMode.GUIDED,
        CopterMode.LOITER,
        CopterMode.RTL,
        CopterMode.POSHOLD,
        CopterMode.BRAKE,
    }
)

# Modes ArduCopter refuses to arm in.
NOT_ARMABLE_MODES = frozenset({CopterMode.AUTO, CopterMode.RTL, CopterMode.LAND, CopterMode.BRAKE})


def mode_name(mode: int) -> str:
    try:
        return CopterMode(mode).name
    except ValueError:
        return f"MODE{mode}"
