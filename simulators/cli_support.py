"""What the simulators' command lines share: argument types that refuse a value with its reason before any
vehicle starts (a time factor of 5,000 or a loss of 500 % is a typo, not a test), and the run that stops
cleanly on Ctrl-C or SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["bounded", "numbers", "run_until_signalled"]

N = TypeVar("N", int, float)


def bounded(kind: Callable[[str], N], low: float, high: float) -> Callable[[str], N]:
    """An argparse ``type``: ``kind(text)`` within [low, high]."""

    def parse(text: str) -> N:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value:g} is outside [{low:g}, {high:g}]")
        return value

    return parse


def numbers(least: int, most: int) -> Callable[[str], list[float]]:
    """An argparse ``type``: ``least`` to ``most`` comma-separated numbers, such as ``60,15``."""

    def parse(text: str) -> list[float]:
        try:
            values = [float(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected numbers separated by commas, got {text!r}") from None
        if not least <= len(values) <= most:
            count = str(least) if least == most else f"{least} to {most}"
            raise argparse.ArgumentTypeError(f"expected {count} numbers separated by commas, got {text!r}")
        return values

    return parse


def run_until_signalled(parser: argparse.ArgumentParser, peer: str,
                        simulate: Callable[[asyncio.Event], Coroutine[Any, Any, Any]]) -> None:
    """Run ``simulate(stop)`` until SIGINT or SIGTERM sets ``stop``. A Ctrl-C before the loop runs ends quietly
    (exit 130); a ``peer`` that cannot be reached is one line and exit 1, not a traceback."""

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, stop.set)
        await simulate(stop)

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        parser.exit(130)
    except OSError as exc:
        parser.exit(1, f"{parser.prog}: cannot reach {peer}: {exc}\n")
