"""The drone fleet's command line: one definition of its options for ``patrolgate sim drones`` and
``python -m simulators.drone`` (the CLI of the project hands its arguments here, so the two cannot drift).

Stops cleanly on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Sequence

from simulators.cli_support import bounded, numbers, run_until_signalled

from .fault_cli import add_fault_arguments, faults_from_args
from .fleet import run_drone_fleet

__all__ = ["build_parser", "main"]


_SYSID = bounded(int, 1, 250)  # MAVLink system ids


def _signing_key(text: str) -> bytes:
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != 32:
        raise argparse.ArgumentTypeError("expected 64 hex digits (a 32-byte MAVLink 2 signing key)")
    return key


def build_parser(prog: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description="Simulated ArduCopter-like drones speaking "
                                     "MAVLink 2 over UDP or TCP.")
    parser.add_argument("--count", type=_SYSID, default=5, help="number of drones (default 5)")
    parser.add_argument("--to", default="udpout:127.0.0.1:14550",
                        help="the gateway's MAVLink endpoint: udpout:|udpin:|tcp:HOST:PORT")
    parser.add_argument("--first-sysid", type=_SYSID, default=1)
    parser.add_argument("--time-factor", type=bounded(float, 0.1, 100.0), default=1.0,
                        help="simulated seconds per wall second (0.1-100)")
    parser.add_argument("--home", type=numbers(2, 2), metavar="LAT,LON", help="the first drone's home, degrees WGS84")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--signing-key-hex", type=_signing_key, dest="signing_key", metavar="HEX",
                        help="64 hex digits: sign everything, accept only signed")
    parser.add_argument("--rate-cap-hz", type=bounded(float, 0.1, 1000.0),
                        help="max wall-clock rate of any one stream")
    add_fault_arguments(parser)
    return parser


def main(argv: Sequence[str] | None = None, prog: str = "python -m simulators.drone") -> None:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    if args.count + args.first_sysid - 1 > 250:
        parser.error("--first-sysid + --count - 1 must be at most 250 (MAVLink system ids)")
    if args.home is not None and not (-90 <= args.home[0] <= 90 and -180 <= args.home[1] <= 180):
        parser.error("--home: latitude must be in [-90, 90] and longitude in [-180, 180]")

    async def simulate(stop: asyncio.Event) -> None:
        await run_drone_fleet(
            args.count,
            args.to,
            first_sysid=args.first_sysid,
            time_factor=args.time_factor,
            home=tuple(args.home) if args.home else None,  # type: ignore[arg-type]
            faults=faults_from_args(args),
            stop=stop,
            seed=args.seed,
            signing_key=args.signing_key,
            stream_rate_cap_hz=args.rate_cap_hz,
        )

    run_until_signalled(parser, args.to, simulate)
