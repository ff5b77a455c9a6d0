"""Command-line flags for fault injection, shared by `python -m simulators.drone` and the project CLI."""

from __future__ import annotations

import argparse

from simulators.cli_support import bounded, numbers

from .faults import FaultConfig


def add_fault_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("faults (times in simulated seconds after start)")
    group.add_argument("--packet-loss-pct", "--loss-pct", dest="packet_loss_pct", type=bounded(float, 0.0, 100.0),
                       default=0.0, help="frame loss per direction, %%")
    group.add_argument("--latency-ms", type=bounded(float, 0.0, 10_000.0), default=0.0,
                       help="one-way delay, wall milliseconds")
    group.add_argument("--link-drop", action="append", default=[], type=numbers(2, 2), metavar="START_S,DURATION_S",
                       help="radio outage")
    group.add_argument(
        "--gps-glitch", action="append", default=[], type=numbers(1, 3), metavar="START_S[,DURATION_S[,OFFSET_M]]",
        help="reported position jumps OFFSET_M (default 300 m) for DURATION_S (default 5 s)",
    )  # fmt: skip
    group.add_argument(
        "--low-battery", action="append", default=[], type=numbers(1, 2), metavar="START_S[,PCT]",
        help="battery drops to PCT (default 15 %%), triggering the failsafe",
    )  # fmt: skip


def faults_from_args(args: argparse.Namespace) -> FaultConfig | None:
    """A FaultConfig from parsed flags, or None when no fault was asked for."""
    faults = FaultConfig(packet_loss_pct=args.packet_loss_pct, latency_ms=args.latency_ms)
    for start_s, duration_s in args.link_drop:
        faults.link_drop(start_s, duration_s)
    for values in args.gps_glitch:
        faults.gps_glitch(*values)
    for values in args.low_battery:
        faults.low_battery(*values)
    if faults.packet_loss_pct or faults.latency_ms or faults.timeline():
        return faults
    return None
