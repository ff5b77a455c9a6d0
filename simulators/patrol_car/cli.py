"""The car fleet's command line: one definition of its options for ``patrolgate sim cars`` and
``python -m simulators.patrol_car`` (the CLI of the project hands its arguments here, so the two cannot drift).

Stops cleanly on Ctrl-C or SIGTERM: every car disconnects after publishing ``offline``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections.abc import Sequence

from simulators.cli_support import bounded, run_until_signalled
from simulators.patrol_car.faults import MALFORMED_KINDS, CarFaults
from simulators.patrol_car.fleet import run_car_fleet

__all__ = ["build_parser", "main"]

#: Seconds between two lines of fleet statistics in the log.
STATS_EVERY_S = 10.0


_PROBABILITY = bounded(float, 0.0, 1.0)


def _malformed_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(part.strip() for part in text.split(",") if part.strip())
    unknown = set(kinds) - set(MALFORMED_KINDS)
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(f"expected a comma-separated subset of {', '.join(MALFORMED_KINDS)}")
    return kinds


def build_parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=prog, description="Simulated patrol cars driving a street grid and "
                                "speaking patrolgate's MQTT contract (docs/mqtt.md).")
    p.add_argument("--count", type=bounded(int, 1, 10_000), default=10, help="number of cars (default 10)")
    p.add_argument("--broker", default="mqtt://127.0.0.1:1883", help="mqtt://host:port or mqtts://host:port")
    p.add_argument("--prefix", default="patrolgate/v1", help="topic prefix (default patrolgate/v1)")
    p.add_argument("--first-index", type=bounded(int, 1, 1_000_000), default=1,
                   help="number of the first car: car-0001 by default")
    p.add_argument("--rate-hz", "--rate", dest="rate_hz", type=bounded(float, 0.01, 50.0), default=1.0,
                   help="telemetry samples per simulated second per car (default 1)")
    p.add_argument("--batch", type=bounded(int, 1, 1000), default=1,
                   help="samples per published message; a JSON array when > 1 (default 1)")
    p.add_argument("--time-factor", type=bounded(float, 0.1, 100.0), default=1.0,
                   help="simulated seconds per wall second (default 1)")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--seed", type=int, help="random seed: the same seed drives the same routes")
    p.add_argument("--qos", type=int, default=1, choices=(0, 1), help="telemetry QoS (default 1)")
    p.add_argument("--event-prob", type=_PROBABILITY, default=0.0,
                   help="chance per sample of an event (SOS, door, camera alarm)")
    p.add_argument("--shared", type=bounded(int, 0, 64), default=0, metavar="N",
                   help="publish through N shared connections instead of one per car (big fleets)")
    faults = p.add_argument_group("faults (see simulators/patrol_car/faults.py)")
    faults.add_argument("--disconnect-prob", type=_PROBABILITY, default=0.0,
                        help="chance per sample that the car's connection is cut (the broker sends its last will)")
    faults.add_argument("--disconnect-for", dest="disconnect_for_s", type=bounded(float, 0.0, 3600.0),
                        default=5.0, metavar="SECONDS", help="wall seconds a cut car stays away (default 5)")
    faults.add_argument("--no-burst", dest="burst_on_reconnect", action="store_false",
                        help="drop the samples taken while away instead of sending them in a burst on reconnect")
    faults.add_argument("--burst-batch", type=bounded(int, 0, 1000), default=0,
                        help="samples per message of the reconnect burst (0: as --batch)")
    faults.add_argument("--clock-skew", dest="clock_skew_s", type=float, default=0.0, metavar="SECONDS",
                        help="seconds added to every ts")
    faults.add_argument("--clock-skew-spread", dest="clock_skew_spread_s", type=bounded(float, 0.0, 86_400.0),
                        default=0.0, metavar="SECONDS", help="plus a per-car offset in +-SECONDS")
    faults.add_argument("--duplicate-prob", type=_PROBABILITY, default=0.0,
                        help="chance that a telemetry message is published twice")
    faults.add_argument("--malformed-prob", type=_PROBABILITY, default=0.0,
                        help="chance of an extra bad payload next to a good one")
    faults.add_argument("--malformed-kinds", type=_malformed_kinds, default=MALFORMED_KINDS,
                        metavar="KIND,...", help=f"which bad payloads: {', '.join(MALFORMED_KINDS)} (default all)")
    return p


async def _run(args: argparse.Namespace, stop: asyncio.Event) -> None:
    faults = CarFaults(disconnect_prob=args.disconnect_prob, disconnect_for_s=args.disconnect_for_s,
                       burst_on_reconnect=args.burst_on_reconnect, burst_batch=args.burst_batch,
                       clock_skew_s=args.clock_skew_s, clock_skew_spread_s=args.clock_skew_spread_s,
                       duplicate_prob=args.duplicate_prob, malformed_prob=args.malformed_prob,
                       malformed_kinds=args.malformed_kinds)
    await run_car_fleet(args.count, args.broker, prefix=args.prefix, first_index=args.first_index,
                        rate_hz=args.rate_hz, batch=args.batch, time_factor=args.time_factor,
                        username=args.username, password=args.password, faults=faults, stop=stop, seed=args.seed,
                        qos=args.qos, event_prob=args.event_prob, shared_connection=args.shared > 0,
                        connections=max(1, args.shared), stats_every_s=STATS_EVERY_S)


def main(argv: Sequence[str] | None = None, prog: str = "python -m simulators.patrol_car") -> None:
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    run_until_signalled(parser, args.broker, lambda stop: _run(args, stop))
