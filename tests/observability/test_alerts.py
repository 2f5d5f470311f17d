"""The alert rules: promtool accepts them and their unit tests pass; each alert has a severity,
a summary, a runbook section, and a test of its own."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

from tests.observability.promql import (
    PROMETHEUS_CONFIG,
    RULE_TESTS,
    RUNBOOK,
    alert_rules,
    rule_files,
)


def run(*argv: str) -> str:
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_promtool_accepts_the_rules_and_the_config(promtool: str) -> None:
    files = [str(path) for path in rule_files()]
    assert files
    assert "SUCCESS" in run(promtool, "check", "rules", *files)
    assert "SUCCESS" in run(promtool, "check", "config", str(PROMETHEUS_CONFIG))


def test_promtool_unit_tests_pass(promtool: str) -> None:
    tests = [str(path) for path in sorted(RULE_TESTS.glob("*.yml"))]
    assert tests
    assert "SUCCESS" in run(promtool, "test", "rules", *tests)


@pytest.mark.parametrize("rules", rule_files(), ids=lambda path: path.name)
def test_every_alert_is_documented_and_tested(rules: Path) -> None:
    runbook = RUNBOOK.read_text()
    headings = {line[3:].strip().lower() for line in runbook.splitlines() if line.startswith("## ")}
    tested = {
        case["alertname"]
        for path in RULE_TESTS.glob("*.yml")
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    for rule in alert_rules(rules):
        name = rule["alert"]
        assert rule["labels"]["severity"] in ("critical", "warning"), name
        assert rule["annotations"]["summary"], name
        assert rule["annotations"]["runbook"] == f"docs/runbook.md#{name.lower()}", name
        assert name.lower() in headings, f"{name} has no section in docs/runbook.md"
        assert name in tested, f"{name} has no promtool test in which it fires"
