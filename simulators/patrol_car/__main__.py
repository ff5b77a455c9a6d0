"""``python -m simulators.patrol_car --count 50 --broker mqtt://127.0.0.1:1883``: the car fleet without the
patrolgate CLI, handy when the gateway runs elsewhere. Stops cleanly on Ctrl-C (cars publish ``offline``)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal

from simulators.patrol_car.faults import CarFaults
from simulators.patrol_car.fleet import CarFleet


async def _main(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    faults = CarFaults(disconnect_prob=args.disconnect_prob, duplicate_prob=args.duplicate_prob,
                       malformed_prob=args.malformed_prob, clock_skew_s=args.clock_skew)
    fleet = CarFleet(args.count, args.broker, prefix=args.prefix, first_index=args.first_index,
                     rate_hz=args.rate, batch=args.batch, time_factor=args.time_factor, username=args.username,
                     password=args.password, faults=faults, seed=args.seed, qos=args.qos,
                     event_prob=args.event_prob, shared_connection=args.shared > 0,
                     connections=max(1, args.shared))
    async with fleet:
        task = asyncio.create_task(fleet.run(stop))
        while not task.done():
            await asyncio.wait({task}, timeout=10.0)
            logging.info("%s", fleet.stats)
        await task
    logging.info("stopped: %s", fleet.stats)


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m simulators.patrol_car", description=__doc__)
    p.add_argument("--count", type=int, default=10)
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883")
    p.add_argument("--prefix", default="patrolgate/v1")
    p.add_argument("--first-index", type=int, default=1)
    p.add_argument("--rate", type=float, default=1.0, help="telemetry samples per simulated second")
    p.add_argument("--batch", type=int, default=1, help="samples per published array (1 = plain objects)")
    p.add_argument("--time-factor", type=float, default=1.0)
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--seed", type=int)
    p.add_argument("--qos", type=int, default=1, choices=(0, 1))
    p.add_argument("--event-prob", type=float, default=0.0)
    p.add_argument("--shared", type=int, default=0, metavar="N", help="publish through N shared connections")
    p.add_argument("--disconnect-prob", type=float, default=0.0)
    p.add_argument("--duplicate-prob", type=float, default=0.0)
    p.add_argument("--malformed-prob", type=float, default=0.0)
    p.add_argument("--clock-skew", type=float, default=0.0, help="seconds added to every ts")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    asyncio.run(_main(args))


if __name__ == "__main__":
    main()
