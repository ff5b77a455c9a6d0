"""MAVLink decode benchmark: pymavlink's own parser against the splitter + fast decoders.

pymavlink's single-loop parse rate is the ceiling the gateway's end-to-end pipeline is
judged against (it must reach 0.8 of it), so both are measured in the same run, on the
same bytes: a realistic fleet mix of MAVLink 2 frames, one frame per UDP datagram, in
arrival order. The functions are importable (``build_mix``, ``pymavlink_ceiling``,
``fast_path_rate``, ``run``) for ``patrolgate bench mavlink``.

    python -m gateway.bench.mavlink_decode [--drones 50] [--seconds 10] [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

from pymavlink.dialects.v20 import ardupilotmega as dialect

from drivers.mavlink.fastdecode import decode_fast
from drivers.mavlink.framing import FrameSplitter

__all__ = ["RATES_HZ", "build_mix", "fast_path_rate", "main", "pymavlink_ceiling", "run"]

#: Stream rates of one drone, as an ArduPilot/PX4 telemetry link typically sends them.
RATES_HZ: dict[str, int] = {
    "HEARTBEAT": 1,
    "GLOBAL_POSITION_INT": 10,
    "ATTITUDE": 10,
    "SYS_STATUS": 1,
    "GPS_RAW_INT": 5,
    "VFR_HUD": 4,
    "BATTERY_STATUS": 1,
}


class _Sink:
    """pymavlink wants a file for its encoder; packing does not write to it."""

    def write(self, data: bytes) -> None:
        pass


def _encoders(mav: Any, rng: random.Random, home: tuple[float, float]) -> dict[str, Callable[[float], Any]]:
    """Per-message encoders producing plausible, time-varying values for one drone."""
    lat0, lon0 = home
    phase = rng.uniform(0, 2 * math.pi)
    ri, ru = rng.randint, rng.uniform

    def pos(t: float) -> tuple[int, int]:
        a = phase + t / 60.0
        return int((lat0 + 0.002 * math.sin(a)) * 1e7), int((lon0 + 0.003 * math.cos(a)) * 1e7)

    def gpi(t: float) -> Any:
        lat, lon = pos(t)
        return mav.global_position_int_encode(
            time_boot_ms=int(t * 1000), lat=lat, lon=lon, alt=60000 + ri(0, 500),
            relative_alt=40000 + ri(-300, 300), vx=ri(-800, 800), vy=ri(-800, 800), vz=ri(-50, 50),
            hdg=ri(0, 35999),
        )  # fmt: skip

    def attitude(t: float) -> Any:
        return mav.attitude_encode(
            time_boot_ms=int(t * 1000), roll=ru(-0.3, 0.3), pitch=ru(-0.3, 0.3), yaw=ru(-3.14, 3.14),
            rollspeed=ru(-0.5, 0.5), pitchspeed=ru(-0.5, 0.5), yawspeed=ru(-0.5, 0.5),
        )  # fmt: skip

    def gps(t: float) -> Any:
        lat, lon = pos(t)
        return mav.gps_raw_int_encode(
            time_usec=int(t * 1e6), fix_type=3, lat=lat, lon=lon, alt=60000, eph=ri(60, 200),
            epv=ri(80, 300), vel=ri(0, 1500), cog=ri(0, 35999), satellites_visible=ri(8, 20),
            alt_ellipsoid=108000, h_acc=1200, v_acc=1800, vel_acc=300, hdg_acc=0, yaw=0,
        )  # fmt: skip

    def heartbeat(t: float) -> Any:
        return mav.heartbeat_encode(
            type=2, autopilot=3, base_mode=217, custom_mode=4, system_status=4, mavlink_version=3
        )

    def sys_status(t: float) -> Any:
        return mav.sys_status_encode(
            onboard_control_sensors_present=0x3FFFFF, onboard_control_sensors_enabled=0x3FFFFF,
            onboard_control_sensors_health=0x3FFFFF, load=ri(100, 600), voltage_battery=ri(22000, 25200),
            current_battery=ri(500, 3000), battery_remaining=ri(20, 100), drop_rate_comm=0,
            errors_comm=0, errors_count1=0, errors_count2=0, errors_count3=0, errors_count4=0,
        )  # fmt: skip

    def vfr_hud(t: float) -> Any:
        return mav.vfr_hud_encode(
            airspeed=ru(0, 15), groundspeed=ru(0, 15), heading=ri(0, 359), throttle=ri(0, 100),
            alt=ru(30, 120), climb=ru(-2, 2),
        )  # fmt: skip

    def battery(t: float) -> Any:
        return mav.battery_status_encode(
            id=0, battery_function=1, type=3, temperature=ri(1500, 4500),
            voltages=[ri(3500, 4200)] * 6 + [65535] * 4, current_battery=ri(100, 3000),
            current_consumed=ri(0, 5000), energy_consumed=-1, battery_remaining=ri(20, 100),
        )  # fmt: skip

    return {
        "HEARTBEAT": heartbeat,
        "GLOBAL_POSITION_INT": gpi,
        "ATTITUDE": attitude,
        "SYS_STATUS": sys_status,
        "GPS_RAW_INT": gps,
        "VFR_HUD": vfr_hud,
        "BATTERY_STATUS": battery,
    }


def build_mix(drones: int = 50, seconds: float = 10.0, seed: int = 1) -> list[bytes]:
    """MAVLink 2 frames of a fleet, one per datagram, in arrival (time) order.

    Each drone sends :data:`RATES_HZ` with its own phase, sequence numbers and system id.
    """
    rng = random.Random(seed)
    events: list[tuple[float, int, str]] = []
    for sysid in range(1, drones + 1):
        offset = rng.random()
        for name, hz in RATES_HZ.items():
            for k in range(int(seconds * hz)):
                events.append((offset + k / hz, sysid, name))
    events.sort()
    links = {}
    for sysid in range(1, drones + 1):
        mav = dialect.MAVLink(_Sink(), srcSystem=sysid, srcComponent=1)
        home = (31.2 + rng.uniform(-0.1, 0.1), 121.4 + rng.uniform(-0.1, 0.1))
        links[sysid] = (mav, _encoders(mav, rng, home))
    out = []
    for t, sysid, name in events:
        mav, enc = links[sysid]
        out.append(enc[name](t).pack(mav))
        mav.seq = (mav.seq + 1) % 256
    return out


def _best(repeat: int, once: Callable[[], tuple[int, float]], expected: int) -> float:
    """Best frames/s over ``repeat`` runs; refuses a run that lost frames."""
    best = 0.0
    for _ in range(repeat):
        count, seconds = once()
        if count != expected:
            raise RuntimeError(f"decoded {count} frames, expected {expected}")
        best = max(best, count / seconds)
    return best


def pymavlink_ceiling(datagrams: Sequence[bytes], repeat: int = 3) -> float:
    """pymavlink's parse rate in frames/s: the best of ``parse_char`` and ``parse_buffer`` per datagram.

    ``parse_char`` returns at most one message per call, which is honest here because every
    datagram holds one frame (the frame count is checked).
    """

    def with_parse_char() -> tuple[int, float]:
        parse = dialect.MAVLink(None).parse_char
        count = 0
        start = time.perf_counter()
        for datagram in datagrams:
            if parse(datagram) is not None:
                count += 1
        return count, time.perf_counter() - start

    def with_parse_buffer() -> tuple[int, float]:
        parse = dialect.MAVLink(None).parse_buffer
        count = 0
        start = time.perf_counter()
        for datagram in datagrams:
            msgs = parse(datagram)
            if msgs:
                count += len(msgs)
        return count, time.perf_counter() - start

    expected = len(datagrams)
    return max(_best(repeat, with_parse_char, expected), _best(repeat, with_parse_buffer, expected))


def fast_path_rate(datagrams: Sequence[bytes], repeat: int = 3) -> float:
    """Frames/s of ``FrameSplitter.feed`` per datagram plus ``decode_fast`` of every frame."""

    def once() -> tuple[int, float]:
        feed = FrameSplitter().feed
        count = 0
        start = time.perf_counter()
        for datagram in datagrams:
            for frame in feed(datagram, True):
                decode_fast(frame.msgid, frame.payload)
                count += 1
        return count, time.perf_counter() - start

    return _best(repeat, once, len(datagrams))


def run(drones: int = 50, seconds: float = 10.0, repeat: int = 5) -> dict[str, float | int]:
    """Build the mix and measure both paths in this process; returns the figures."""
    datagrams = build_mix(drones, seconds)
    ceiling = fast = 0.0
    for _ in range(repeat):  # interleaved, so a noisy moment does not favour one side
        ceiling = max(ceiling, pymavlink_ceiling(datagrams, 1))
        fast = max(fast, fast_path_rate(datagrams, 1))
    return {
        "drones": drones,
        "seconds": seconds,
        "frames": len(datagrams),
        "bytes": sum(map(len, datagrams)),
        "pymavlink_fps": round(ceiling),
        "fast_fps": round(fast),
        "ratio": round(fast / ceiling, 2),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--drones", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=10.0, help="simulated seconds of traffic")
    parser.add_argument("--repeat", type=int, default=5, help="runs per path; the best counts")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args(argv)
    result = run(args.drones, args.seconds, args.repeat)
    if args.json:
        print(json.dumps(result))
    else:
        print(f"mix: {result['frames']} MAVLink 2 frames ({result['bytes']} bytes) from {args.drones} drones")
        print(f"pymavlink parse:          {result['pymavlink_fps']:>10,} frames/s")
        print(f"splitter + decode_fast:   {result['fast_fps']:>10,} frames/s")
        print(f"ratio:                    {result['ratio']:>10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
