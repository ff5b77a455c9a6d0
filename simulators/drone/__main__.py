"""Standalone runner: python -m simulators.drone --count 5 --to udpout:127.0.0.1:14550"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal

from .fault_cli import add_fault_arguments, faults_from_args
from .fleet import run_drone_fleet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m simulators.drone", description=__doc__)
    parser.add_argument("--count", type=int, default=1, help="number of drones")
    parser.add_argument("--to", default="udpout:127.0.0.1:14550", help="udpout:|udpin:|tcp:HOST:PORT")
    parser.add_argument("--first-sysid", type=int, default=1)
    parser.add_argument("--time-factor", type=float, default=1.0, help="simulated seconds per wall second")
    parser.add_argument("--home", help="LAT,LON of the first drone (degrees)")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--signing-key-hex", help="64 hex digits: sign everything, accept only signed")
    parser.add_argument("--rate-cap-hz", type=float, help="max wall-clock rate of any one stream")
    add_fault_arguments(parser)
    args = parser.parse_args(argv)
    home = tuple(float(x) for x in args.home.split(",")) if args.home else None
    key = bytes.fromhex(args.signing_key_hex) if args.signing_key_hex else None

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await run_drone_fleet(
            args.count,
            args.to,
            first_sysid=args.first_sysid,
            time_factor=args.time_factor,
            home=home,  # type: ignore[arg-type]
            faults=faults_from_args(args),
            stop=stop,
            seed=args.seed,
            signing_key=key,
            stream_rate_cap_hz=args.rate_cap_hz,
        )

    asyncio.run(run())


if __name__ == "__main__":
    main()
