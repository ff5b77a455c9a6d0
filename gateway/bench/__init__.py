"""Benchmarks behind `patrolgate bench ...`: each measures its figure and, in the same run, its ceiling."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from gateway.embedded import EmbeddedPostgres

__all__ = ["database"]


@contextlib.contextmanager
def database(dsn: str | None) -> Iterator[str]:
    """The configured database, or a throwaway embedded PostgreSQL when none is configured."""
    if dsn:
        yield dsn
        return
    with EmbeddedPostgres() as pg:
        yield pg.dsn
