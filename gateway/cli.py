"""`patrolgate` command line. click, because nested command groups (db, sim, bench) with typed options and
generated --help are what it does well, and it is already a dependency of uvicorn."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

import click

from gateway.config import ConfigError, GatewaySettings, load_settings

__all__ = ["main"]


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _settings(ctx: click.Context, **overrides: Any) -> GatewaySettings:
    try:
        return load_settings(ctx.obj.get("config"), **overrides)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None


def _print(figures: dict[str, Any], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(figures, default=str))
        return
    for key, value in figures.items():
        click.echo(f"{key:>28}: {value}")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-c", "--config", type=click.Path(dir_okay=False, path_type=Path), envvar="PATROLGATE_CONFIG",
              help="TOML configuration file (env PATROLGATE_CONFIG). PATROLGATE_* variables override it.")
@click.option("--log-level", default="INFO", show_default=True,
              type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"], case_sensitive=False))
@click.version_option(package_name="patrolgate")
@click.pass_context
def main(ctx: click.Context, config: Path | None, log_level: str) -> None:
    """patrolgate: telemetry gateway for city patrol fleets (MAVLink drones, MQTT patrol cars)."""
    ctx.ensure_object(dict)
    ctx.obj["config"] = config
    _setup_logging(log_level)


@main.command()
@click.option("--embedded-broker/--no-embedded-broker", default=None,
              help="Start a throwaway mosquitto when no MQTT broker is configured "
                   "(default: on when no database is configured either).")
@click.pass_context
def run(ctx: click.Context, embedded_broker: bool | None) -> None:
    """Run the gateway and its API until SIGTERM/SIGINT (then flush everything and stop).

    With no database configured it starts a throwaway embedded PostgreSQL, and an embedded MQTT broker,
    so a fresh machine can try it at once.
    """
    from gateway.service import Gateway

    settings = _settings(ctx)
    if embedded_broker is None:
        embedded_broker = settings.database.dsn is None
    asyncio.run(Gateway(settings, embedded_broker=embedded_broker).run_until_signalled())


@main.group()
def db() -> None:
    """Database schema and storage."""


@db.command("upgrade")
@click.pass_context
def db_upgrade(ctx: click.Context) -> None:
    """Apply pending schema migrations (idempotent; refuses a database newer than this code)."""
    from gateway.service import storage_settings
    from telemetry import storage

    settings = _settings(ctx)
    if not settings.database.dsn:
        raise click.ClickException("database.dsn is not set (PATROLGATE_DATABASE__DSN or [database] dsn)")
    try:
        applied = storage.upgrade(settings.database.dsn, storage_settings(settings))
    except storage.SchemaTooNewError as exc:
        raise click.ClickException(str(exc)) from None
    info = storage.storage_info(settings.database.dsn)
    click.echo(f"schema version {info['schema_version']} ({info['backend']}); applied: {applied or 'none'}")


@db.command("info")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def db_info(ctx: click.Context, as_json: bool) -> None:
    """Which backend (timescaledb or postgresql), schema version, sizes and row counts."""
    from telemetry import storage

    settings = _settings(ctx)
    if not settings.database.dsn:
        raise click.ClickException("database.dsn is not set (PATROLGATE_DATABASE__DSN or [database] dsn)")
    _print(storage.storage_info(settings.database.dsn), as_json)


@main.group()
def sim() -> None:
    """Simulated fleets that speak the real protocols (no hardware needed)."""


_PASS_THROUGH = {"ignore_unknown_options": True, "allow_interspersed_args": False, "help_option_names": []}


@sim.command("drones", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_drones(args: tuple[str, ...]) -> None:
    """Simulated ArduCopter-like drones speaking MAVLink 2.

    ``--help`` lists every option. The simulator parses its own options (simulators/drone/cli.py), the same
    for ``python -m simulators.drone``.
    """
    from simulators.drone.cli import main as run_simulator

    run_simulator(list(args), prog="patrolgate sim drones")


@sim.command("cars", context_settings=_PASS_THROUGH, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def sim_cars(args: tuple[str, ...]) -> None:
    """Simulated patrol cars speaking the MQTT contract, with faults on demand.

    ``--help`` lists every option. The simulator parses its own options (simulators/patrol_car/cli.py), the
    same for ``python -m simulators.patrol_car``.
    """
    from simulators.patrol_car.cli import main as run_simulator

    run_simulator(list(args), prog="patrolgate sim cars")


class _until_interrupted:
    """Ctrl-C ends a foreground run quietly."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: type[BaseException] | None, *rest: object) -> bool:
        return exc_type is KeyboardInterrupt


@main.command()
@click.argument("tlog", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--vehicle", "vehicle_ids", multiple=True, metavar="SYSID=ID",
              help="Name a system id's vehicle, e.g. 1=drone-7 (default drone-<sysid>).")
@click.pass_context
def replay(ctx: click.Context, tlog: Path, vehicle_ids: tuple[str, ...]) -> None:
    """Ingest a recorded MAVLink telemetry log (.tlog) with its recorded timestamps."""
    from gateway.replay import replay_tlog

    settings = _settings(ctx)
    names: dict[int, str] = {}
    for item in vehicle_ids:
        sysid, _, name = item.partition("=")
        if not sysid.isdigit() or not name:
            raise click.BadParameter(f"expected SYSID=ID, got {item!r}", param_hint="--vehicle")
        names[int(sysid)] = name
    figures = asyncio.run(replay_tlog(settings, tlog, names))
    _print(figures, False)


@main.group()
def bench() -> None:
    """Benchmarks: each prints the figure and, from the same run, its ceiling and the ratio."""


@bench.command("ingest")
@click.option("--rows", default=1_000_000, show_default=True, type=click.IntRange(1000))
@click.option("--batch-rows", default=50_000, show_default=True, type=click.IntRange(100))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def bench_ingest(ctx: click.Context, rows: int, batch_rows: int, as_json: bool) -> None:
    """Writer rows/s into PostgreSQL vs `psql \\copy` (binary) of the same rows."""
    from gateway.bench.ingest import run_ingest_bench

    settings = _settings(ctx)
    figures = run_ingest_bench(rows, dsn=settings.database.dsn, batch_rows=batch_rows)
    _print(figures, as_json)


@bench.command("mavlink")
@click.option("--frames", default=300_000, show_default=True, type=click.IntRange(1000))
@click.option("--drones", default=50, show_default=True, type=click.IntRange(1, 250))
@click.option("--runs", default=3, show_default=True, type=click.IntRange(1, 20),
              help="End-to-end runs; the best is compared with the best ceiling measurement.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def bench_mavlink(ctx: click.Context, frames: int, drones: int, runs: int, as_json: bool) -> None:
    """End-to-end MAVLink frames/s (UDP -> normalized -> committed) vs pymavlink's bare parse rate."""
    from gateway.bench.mavlink import run_mavlink_bench

    settings = _settings(ctx)
    _print(run_mavlink_bench(frames, drones=drones, dsn=settings.database.dsn, runs=runs), as_json)


@bench.command("mqtt")
@click.option("--cars", default=1000, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--messages", default=None, type=click.IntRange(100),
              help="Messages to publish [default: 100,000 single-sample messages, or 500,000 samples' worth of "
                   "batched ones].")
@click.option("--batch", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="Samples per message (50 for the batched-payload target).")
@click.option("--gateways", default=1, show_default=True, type=click.IntRange(1, 16),
              help="Gateway processes sharing one subscription ($share/bench/...), like several instances.")
@click.option("--ingest-workers", default=None, type=click.IntRange(0, 64),
              help="Ingest worker processes per gateway ([mqtt] ingest_workers) [default: the configured "
                   "number].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def bench_mqtt(ctx: click.Context, cars: int, messages: int | None, batch: int, gateways: int,
               ingest_workers: int | None, as_json: bool) -> None:
    """End-to-end MQTT samples/s and messages/s vs a bare paho subscriber's receive rate."""
    from gateway.bench.mqtt import run_mqtt_bench

    settings = _settings(ctx)
    workers = settings.mqtt.ingest_workers if ingest_workers is None else ingest_workers
    _print(run_mqtt_bench(cars=cars, messages=messages, batch=batch, gateways=gateways, ingest_workers=workers,
                          dsn=settings.database.dsn), as_json)


@main.command()
@click.option("--drones", default=5, show_default=True, type=click.IntRange(0, 100))
@click.option("--cars", default=13, show_default=True, type=click.IntRange(0, 1000))
@click.option("--seconds", default=0.0, show_default=True, help="Stop after this long (0 = until Ctrl-C).")
@click.pass_context
def demo(ctx: click.Context, drones: int, cars: int, seconds: float) -> None:
    """The gateway with a simulated fleet (drones over MAVLink, cars over MQTT) and embedded services."""
    from gateway.demo import run_demo

    settings = _settings(ctx)
    with _until_interrupted():
        asyncio.run(run_demo(settings, drones=drones, cars=cars, seconds=seconds))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
