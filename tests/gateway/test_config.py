from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import CliRunner

from gateway.cli import main
from gateway.config import ConfigError, load_settings, parse_duration


def test_defaults_load_without_a_file(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(__import__("os").environ):
        if key.startswith("PATROLGATE_"):
            monkeypatch.delenv(key)
    s = load_settings()
    assert s.writer.flush_interval == timedelta(milliseconds=200)
    assert s.storage.chunk_interval == timedelta(days=1)
    assert s.mqtt.prefix == "patrolgate/v1"


def test_toml_then_environment_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "pg.toml"
    cfg.write_text('[writer]\nbatch_rows = 2000\nflush_interval = "150ms"\n[storage]\nretention = "30d"\n'
                   '[mavlink]\nendpoints = ["udpin:0.0.0.0:14550"]\n')
    monkeypatch.setenv("PATROLGATE_WRITER__BATCH_ROWS", "3000")
    s = load_settings(cfg)
    assert s.writer.batch_rows == 3000
    assert s.writer.flush_interval == timedelta(milliseconds=150)
    assert s.storage.retention == timedelta(days=30)
    assert s.mavlink.endpoints == ["udpin:0.0.0.0:14550"]


@pytest.mark.parametrize(
    ("toml", "key", "hint"),
    [
        ('[storage]\nretention = "soon"\n', "storage.retention", "duration"),
        ("[writer]\nbatch_rows = 0\n", "writer.batch_rows", "greater than or equal to 1"),
        ('[mavlink]\nendpoints = ["http://x"]\n', "mavlink.endpoints", "udpin:0.0.0.0:14550"),
        ('[mqtt]\nbroker = "localhost:1883"\n', "mqtt.broker", "pattern"),
        ('[mqtt]\nbrokr = "mqtt://x"\n', "mqtt.brokr", "unknown key"),
        ('[database]\ndsn = "nonsense"\n', "database.dsn", "PostgreSQL URL"),
        ('[[mavlink.vehicles]]\nsysid = 300\nid = "drone-1"\n', "mavlink.vehicles.0.sysid", "less than or equal"),
    ],
)
def test_wrong_values_name_the_key_and_the_expected_form(tmp_path: Path, toml: str, key: str, hint: str) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(toml)
    with pytest.raises(ConfigError) as info:
        load_settings(cfg)
    assert f"  {key}:" in str(info.value)
    assert hint in str(info.value)


def test_environment_errors_name_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATROLGATE_WRITER__QUEUE_MAX_ROWS", "lots")
    with pytest.raises(ConfigError, match=r"writer\.queue_max_rows"):
        load_settings()


def test_cli_reports_config_errors_and_exits_nonzero(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[storage]\nbackend = "oracle"\n')
    result = CliRunner().invoke(main, ["-c", str(cfg), "db", "info"])
    assert result.exit_code != 0
    assert "storage.backend" in result.output


@pytest.mark.parametrize(("text", "seconds"), [("200ms", 0.2), ("30s", 30), ("15m", 900), ("12h", 43200),
                                               ("7d", 604800), ("1 day", 86400), (2.5, 2.5)])
def test_parse_duration(text: object, seconds: float) -> None:
    assert parse_duration(text).total_seconds() == pytest.approx(seconds)


def test_cli_help_lists_every_subcommand() -> None:
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    for name in ("run", "db", "sim", "demo", "bench", "replay"):
        assert f"  {name} " in result.output


def test_every_setting_is_documented_and_the_sample_file_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    from gateway.config import GatewaySettings

    root = Path(__file__).resolve().parents[2]
    doc = (root / "docs" / "configuration.md").read_text()
    for section, field in GatewaySettings.model_fields.items():
        sub = getattr(field.annotation, "model_fields", None)
        if sub is None:
            assert f"`{section}`" in doc, section
            continue
        assert f"## [{section}]" in doc, section
        for key in sub:
            assert f"`{key}`" in doc, f"{section}.{key} is not in docs/configuration.md"
    for key in list(__import__("os").environ):
        if key.startswith("PATROLGATE_"):
            monkeypatch.delenv(key)
    s = load_settings(root / "patrolgate.example.toml")
    assert s.mavlink.vehicles[0].require_signing and s.mqtt.shared_group == "patrolgate"
