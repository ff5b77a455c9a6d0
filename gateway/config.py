"""Gateway configuration: a TOML file plus ``PATROLGATE_*`` environment variables, validated before anything runs.

pydantic-settings does the layering (environment over file over defaults; nested keys with ``__``, e.g.
``PATROLGATE_DATABASE__DSN``) and the type checks, so a wrong value stops start-up with ``ConfigError`` naming
the key and the expected form instead of failing later inside a driver. Durations accept ``"200ms"``, ``"30s"``,
``"15m"``, ``"12h"``, ``"7d"``, ``"1 day"`` or a number of seconds.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

__all__ = [
    "ApiConfig",
    "ConfigError",
    "DatabaseConfig",
    "Duration",
    "GatewaySettings",
    "MavlinkConfig",
    "MavlinkVehicleConfig",
    "MqttConfig",
    "StorageConfig",
    "ValidationConfig",
    "WriterConfig",
    "load_settings",
    "parse_duration",
]

_DURATION_RE = re.compile(
    r"^\s*(?P<n>\d+(?:\.\d+)?)\s*(?P<u>ms|msec|s|sec|secs|seconds?|m|min|mins|minutes?|h|hours?|d|days?|w|weeks?)?\s*$"
)
_UNIT_S = {"ms": 0.001, "msec": 0.001, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1, "m": 60,
           "min": 60, "mins": 60, "minute": 60, "minutes": 60, "h": 3600, "hour": 3600, "hours": 3600,
           "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800}


def parse_duration(value: Any) -> Any:
    """'200ms', '30s', '7d', '1 day', 12.5 (seconds) -> timedelta; None and timedelta pass through."""
    if value is None or isinstance(value, timedelta):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value.lower())
        if m:
            return timedelta(seconds=float(m.group("n")) * _UNIT_S[m.group("u") or "s"])
        if value.strip().lower() in {"none", "off", "never", ""}:
            return None
    raise ValueError(f"expected a duration like '200ms', '30s', '15m', '12h', '7d' or seconds, got {value!r}")


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]
OptionalDuration = Annotated[timedelta | None, BeforeValidator(parse_duration)]


class ConfigError(ValueError):
    """A configuration value is wrong; the message names every offending key and what was expected."""


class _Section(BaseModel):
    model_config = {"extra": "forbid"}


class DatabaseConfig(_Section):
    #: libpq connection string or URL; empty = start a throwaway embedded PostgreSQL (demo/dev only).
    dsn: str | None = None

    @field_validator("dsn")
    @classmethod
    def _dsn_form(cls, v: str | None) -> str | None:
        if v is None or not v.strip():
            return None
        if not (v.startswith(("postgresql://", "postgres://")) or "=" in v):
            raise ValueError("expected a PostgreSQL URL (postgresql://user@host:5432/db) or 'key=value' DSN")
        return v


class StorageConfig(_Section):
    backend: Literal["auto", "timescaledb", "postgresql"] = "auto"
    #: TimescaleDB chunk interval (plain PostgreSQL always uses daily partitions).
    chunk_interval: Duration = timedelta(days=1)
    #: TimescaleDB: compress chunks older than this; none = never.
    compress_after: OptionalDuration = timedelta(days=7)
    #: Drop telemetry older than this (both backends); none = keep forever.
    retention: OptionalDuration = None
    #: Plain PostgreSQL: daily partitions created this many days ahead.
    partitions_ahead_days: int = Field(3, ge=1, le=60)
    maintenance_interval: Duration = timedelta(hours=1)


class WriterConfig(_Section):
    #: Flush when this many rows are queued ...
    batch_rows: int = Field(50_000, ge=1, le=1_000_000)
    #: ... or when the oldest queued row is this old.
    flush_interval: Duration = timedelta(milliseconds=200)
    #: Producers (drivers) block when this many rows are queued: bounded memory, backpressure.
    queue_max_rows: int = Field(100_000, ge=1)
    #: Where batches go while the database is down; fsynced, replayed in order.
    spool_dir: Path = Path("var/spool")
    spool_max_bytes: int = Field(2 << 30, ge=1 << 20)


class ValidationConfig(_Section):
    max_speed_drone_mps: float = Field(60.0, gt=0)
    max_speed_car_mps: float = Field(70.0, gt=0)
    #: Reject samples whose timestamp is further than this in the future.
    max_future: Duration = timedelta(minutes=5)
    #: Position jumps shorter than this (metres) are GPS noise, never an impossible speed.
    jump_noise_m: float = Field(50.0, ge=0)


_MAVLINK_URL_RE = re.compile(r"^(udpin|udpout|udp|tcp|tcpin|serial):.+$")


def _check_mavlink_url(url: str) -> str:
    if not _MAVLINK_URL_RE.match(url):
        raise ValueError(
            f"expected a MAVLink endpoint like udpin:0.0.0.0:14550, udpout:host:port, tcp:host:port, "
            f"tcpin:0.0.0.0:5760 or serial:/dev/ttyUSB0:57600, got {url!r}"
        )
    return url


class MavlinkVehicleConfig(_Section):
    sysid: int = Field(ge=1, le=255)
    id: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    name: str | None = None
    #: MAVLink 2 signing secret: 64 hex characters (32 bytes).
    signing_key: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    #: Drop unsigned or wrongly signed frames from this drone.
    require_signing: bool = False


class MavlinkConfig(_Section):
    #: Where drones (or a MAVLink router) reach us; 14550 is the ground-station port autopilots send to.
    endpoints: list[str] = Field(default_factory=lambda: ["udpin:0.0.0.0:14550"])
    #: Ground stations to relay to, both ways (like mavlink-router), e.g. udpout:127.0.0.1:14551.
    forward: list[str] = Field(default_factory=list)
    vehicles: list[MavlinkVehicleConfig] = Field(default_factory=list)
    #: Unknown system ids become vehicles `drone-<sysid>`; off = only configured sysids are accepted.
    auto_register: bool = True
    heartbeat_timeout: Duration = timedelta(seconds=5)
    #: Our own MAVLink identity (a ground station).
    gcs_sysid: int = Field(255, ge=1, le=255)
    gcs_compid: int = Field(190, ge=0, le=255)
    #: Requested message rates in Hz, per message name, sent when a drone appears.
    message_rates_hz: dict[str, float] = Field(
        default_factory=lambda: {
            "GLOBAL_POSITION_INT": 5.0, "ATTITUDE": 5.0, "SYS_STATUS": 1.0, "GPS_RAW_INT": 2.0, "VFR_HUD": 2.0,
            "BATTERY_STATUS": 1.0, "EXTENDED_SYS_STATE": 1.0, "HOME_POSITION": 0.2,
        }
    )
    command_timeout: Duration = timedelta(seconds=3)
    command_retries: int = Field(3, ge=0, le=10)

    @field_validator("endpoints", "forward")
    @classmethod
    def _urls(cls, urls: list[str]) -> list[str]:
        return [_check_mavlink_url(u) for u in urls]


class MqttConfig(_Section):
    #: mqtt://host:1883 or mqtts://host:8883; empty = MQTT off (or an embedded broker under `patrolgate run`
    #: with no database configured either).
    broker: str | None = Field(None, pattern=r"^mqtts?://[^/:]+(:\d+)?/?$")
    prefix: str = Field("patrolgate/v1", pattern=r"^[^#+]+$")
    client_id: str = "patrolgate-gateway"
    username: str | None = None
    password: str | None = None
    protocol: Literal["auto", "5", "3.1.1"] = "auto"
    tls_ca_file: Path | None = None
    tls_insecure: bool = False
    keepalive_s: int = Field(30, ge=5, le=3600)
    #: Broker keeps our subscriptions and queued QoS 1 messages this long while we are away.
    session_expiry: Duration = timedelta(days=1)
    #: `$share/<group>/...` subscriptions so several gateways split the load; empty = plain subscriptions.
    shared_group: str | None = Field(None, pattern=r"^[A-Za-z0-9_-]+$")
    #: Unacknowledged QoS 1 messages in flight; stays far below MQTT's 65,535 packet ids.
    max_inflight: int = Field(1000, ge=1, le=60_000)
    #: Accept any vehicle id; off = only `allowed_vehicles`.
    open_registration: bool = True
    allowed_vehicles: list[str] = Field(default_factory=list)
    #: A vehicle with no telemetry for this long is reported offline.
    silence_timeout: Duration = timedelta(seconds=30)
    command_timeout: Duration = timedelta(seconds=10)
    #: Worker processes that decode, validate and store telemetry (each vehicle always in the same one);
    #: 0 = all in the gateway process. More than one core's worth of MQTT ingest needs them (docs/mqtt.md).
    ingest_workers: int = Field(0, ge=0, le=64)


class ApiConfig(_Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)


class GatewaySettings(BaseSettings):
    """Everything `patrolgate run` needs. See docs/configuration.md and the sample patrolgate.toml."""

    model_config = SettingsConfigDict(env_prefix="PATROLGATE_", env_nested_delimiter="__", extra="forbid")

    database: DatabaseConfig = Field(default_factory=DatabaseConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    writer: WriterConfig = Field(default_factory=WriterConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)
    mavlink: MavlinkConfig = Field(default_factory=MavlinkConfig)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    api: ApiConfig = Field(default_factory=ApiConfig)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    _toml_file: Path | None = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if _TOML_FILE[0] is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=_TOML_FILE[0]))
        return tuple(sources)


_TOML_FILE: list[Path | None] = [None]


def _format_errors(exc: ValidationError, origin: str) -> str:
    lines = [f"invalid configuration ({origin}):"]
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key (check the spelling against docs/configuration.md)"
        got = err.get("input")
        shown = f" (got {got!r})" if got is not None and not isinstance(got, dict) and "got" not in msg else ""
        lines.append(f"  {key}: {msg}{shown}")
    return "\n".join(lines)


def load_settings(path: Path | str | None = None, **overrides: Any) -> GatewaySettings:
    """Read the TOML file (if any), then the environment; raise ConfigError naming every bad key."""
    toml_path = Path(path) if path else None
    if toml_path is not None and not toml_path.is_file():
        raise ConfigError(f"configuration file {toml_path} does not exist")
    _TOML_FILE[0] = toml_path
    try:
        return GatewaySettings(**overrides)
    except ValidationError as exc:
        origin = f"{toml_path} and PATROLGATE_* environment" if toml_path else "PATROLGATE_* environment"
        raise ConfigError(_format_errors(exc, origin)) from None
    except ValueError as exc:  # TOML syntax errors
        raise ConfigError(f"cannot read configuration {toml_path}: {exc}") from None
    finally:
        _TOML_FILE[0] = None
