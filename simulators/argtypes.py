"""Argument types for the simulators' command lines: a number outside its range is refused with the range,
before any vehicle starts (a time factor of 5,000 or a loss of 500 % is a typo, not a test)."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import TypeVar

__all__ = ["bounded"]

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
