"""Configuration: typed, validated at start, one clear message naming the variable, no secrets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from config import ConfigError, load_settings
from tests.processes import ROOT


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    for name in ("DATABASE_URL", "DATABASE_REPLICA_URLS", "REDIS_URL", "PORT", "WORKERS"):
        monkeypatch.delenv(name, raising=False)
    env_file = tmp_path / ".env"
    env_file.write_text("")
    monkeypatch.setenv("ENV_FILE", str(env_file))
    return env_file


def test_defaults_need_no_configuration() -> None:
    settings = load_settings()
    assert settings.port == 8080
    assert settings.database_url is None
    assert settings.uses_embedded_services


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("WORKERS", "0"),
        ("LOG_LEVEL", "LOUD"),
        ("REQUEST_TIMEOUT", "-1"),
        ("REDIS_NAMESPACE", "has spaces"),
        ("TRACING_EXPORTER", "jaeger"),
        ("TRACING_SAMPLE_RATIO", "1.5"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
        ("METRICS_ENABLED", "maybe"),
    ],
)
def test_bad_value_names_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigError, match=variable):
        load_settings()


def test_bad_url_is_refused_without_echoing_the_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "mysql://app:hunter2@db:3306/app")
    with pytest.raises(ConfigError, match="DATABASE_URL") as caught:
        load_settings()
    assert "hunter2" not in str(caught.value)


def test_replicas_without_a_primary_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://app:pw@replica/app")
    with pytest.raises(ConfigError, match="DATABASE_REPLICA_URLS"):
        load_settings()


def test_env_file_is_read_and_the_environment_wins(
    monkeypatch: pytest.MonkeyPatch, clean_env: Path
) -> None:
    clean_env.write_text("PORT=9001\nCORS_ORIGINS=https://a.test, https://b.test\n")
    assert load_settings().port == 9001
    assert load_settings().cors_origins == ["https://a.test", "https://b.test"]
    monkeypatch.setenv("PORT", "9002")
    assert load_settings().port == 9002


def test_secrets_are_masked_when_settings_are_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://app:hunter2@db/app")
    monkeypatch.setenv("DATABASE_REPLICA_URLS", "postgresql://app:hunter3@replica/app")
    monkeypatch.setenv("REDIS_URL", "redis://:hunter4@redis:6379/0")
    settings = load_settings()
    shown = repr(settings) + str(settings.redacted())
    assert not any(secret in shown for secret in ("hunter2", "hunter3", "hunter4"))
    assert settings.primary_dsn == "postgresql://app:hunter2@db/app"


def test_cli_stops_with_one_clear_message(clean_env: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "server.cli", "serve"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={"ENV_FILE": str(clean_env), "PORT": "eighty", "PATH": "/usr/bin:/bin"},
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("backend: invalid configuration: PORT:")
    assert "Traceback" not in result.stderr
