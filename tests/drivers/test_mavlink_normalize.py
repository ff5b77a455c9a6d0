"""Captured ArduCopter frames (drivers/mavlink/testdata) through splitter, fast decoder and normalizer."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from pathlib import Path

import pytest
from pymavlink.dialects.v10 import ardupilotmega as mavlink1

from drivers.mavlink.fastdecode import decode_fast
from drivers.mavlink.framing import FrameSplitter
from drivers.mavlink.normalize import DroneState

TESTDATA = Path(__file__).resolve().parents[2] / "drivers" / "mavlink" / "testdata" / "arducopter_frames.hex"
NOW = datetime(2015, 7, 5, 0, 30, tzinfo=UTC)


def _frames() -> dict[str, bytes]:
    out = {}
    for line in TESTDATA.read_text().splitlines():
        if line and not line.startswith("#"):
            name, hexs = line.split()
            out[name] = bytes.fromhex(hexs)
    return out


@pytest.mark.parametrize("name", ["HEARTBEAT", "SYS_STATUS", "GPS_RAW_INT", "ATTITUDE", "GLOBAL_POSITION_INT",
                                  "VFR_HUD"])
def test_captured_frame_decodes_like_pymavlink(name: str) -> None:
    raw = _frames()[name]
    [frame] = FrameSplitter().feed(raw, final=True)
    ours = decode_fast(frame.msgid, frame.payload)
    ref = mavlink1.MAVLink(None).parse_char(raw)
    assert ref is not None and ref.get_type() == name
    for field in ref.get_fieldnames():
        assert getattr(ours, field) == getattr(ref, field), field


def test_normalized_sample_units_from_captured_frames() -> None:
    frames = _frames()
    state = DroneState("drone-1", 1, "mavlink:test")
    decode = {name: decode_fast(FrameSplitter().feed(raw, True)[0].msgid, FrameSplitter().feed(raw, True)[0].payload)
              for name, raw in frames.items()}
    state.heartbeat(decode["HEARTBEAT"], NOW)
    state.sys_status(decode["SYS_STATUS"])
    state.attitude(decode["ATTITUDE"])
    state.vfr_hud(decode["VFR_HUD"])
    state.gps_raw_int(decode["GPS_RAW_INT"], NOW)
    gpi = decode["GLOBAL_POSITION_INT"]
    s = state.global_position_int(gpi, NOW)
    assert s.lat_deg == gpi.lat / 1e7 and s.lon_deg == gpi.lon / 1e7  # degE7 -> degrees
    assert s.alt_msl_m == gpi.alt / 1000 and s.alt_rel_m == gpi.relative_alt / 1000  # mm -> m
    assert s.ground_speed_mps == pytest.approx(math.hypot(gpi.vx, gpi.vy) / 100)  # cm/s -> m/s
    assert s.roll_deg == pytest.approx(math.degrees(decode["ATTITUDE"].roll))  # rad -> deg
    assert s.battery_v == decode["SYS_STATUS"].voltage_battery / 1000  # mV -> V
    assert s.mode == "STABILIZE" and s.armed is False
    assert -36.0 < s.lat_deg < -35.0 and 149.0 < s.lon_deg < 150.0  # the flight was near Canberra
