"""What the tests need of PromQL and of the repository's dashboards and rules: the metric names
a query reads, and every query a dashboard or rule file holds."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.processes import ROOT

DASHBOARDS = ROOT / "deploy" / "grafana" / "dashboards"
RULES = ROOT / "deploy" / "prometheus" / "rules"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "tests"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RUNBOOK = ROOT / "docs" / "runbook.md"

# Series Prometheus makes itself for every target.
PROMETHEUS_OWN = frozenset(
    {"up", "scrape_duration_seconds", "scrape_samples_scraped", "scrape_series_added", "ALERTS"}
)

_KEYWORDS = frozenset(
    {
        "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
        "bool", "offset", "inf", "nan", "atan2",
    }
)  # fmt: skip
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_GRAFANA_VARIABLE = re.compile(r"\$\{?(\w+)\}?")

# What Grafana's built-in variables stand for when a query is checked outside Grafana.
GRAFANA_INTERVALS = {"__rate_interval": "5m", "__interval": "1m", "__range": "1h"}


def metric_names(query: str) -> set[str]:
    """The metric names a PromQL query (or a Grafana `label_values(metric, label)`) reads."""
    text = _GRAFANA_VARIABLE.sub("1", _STRINGS.sub('""', query))
    text = re.sub(r"\{[^}]*\}", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)
    text = _GROUPING.sub("", text)
    if text.lstrip().startswith("label_values("):
        inner = text.strip()[len("label_values(") : -1]
        return {inner.split(",")[0].strip()} if "," in inner else set()
    return {name for name in _IDENTIFIER.findall(text) if name.lower() not in _KEYWORDS}


def for_promtool(query: str) -> str:
    """A dashboard query with Grafana's variables replaced, so promtool can parse it."""
    return _GRAFANA_VARIABLE.sub(lambda m: GRAFANA_INTERVALS.get(m[1], "x"), query)


@dataclass(frozen=True)
class Query:
    where: str  # "api.json: Requests by route" or "backend.yml: BackendReplicaDown"
    expr: str
    grafana: bool = False


def dashboard_files() -> list[Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def rule_files() -> list[Path]:
    return sorted(RULES.glob("*.yml"))


def dashboard_queries(path: Path) -> list[Query]:
    board = json.loads(path.read_text())
    found = [
        Query(f"{path.name}: {panel.get('title', '?')}", target["expr"], grafana=True)
        for panel in _panels(board.get("panels", []))
        for target in panel.get("targets", [])
        if target.get("expr")
    ]
    for variable in board.get("templating", {}).get("list", []):
        if variable.get("type") == "query":
            query = variable["query"]
            text = query.get("query", "") if isinstance(query, dict) else query
            found.append(Query(f"{path.name}: ${variable['name']}", text, grafana=True))
    return found


def _panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def alert_rules(path: Path) -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]]


def rule_queries(path: Path) -> list[Query]:
    return [
        Query(f"{path.name}: {rule.get('alert') or rule.get('record')}", rule["expr"])
        for rule in alert_rules(path)
    ]
