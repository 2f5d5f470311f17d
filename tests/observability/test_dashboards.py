"""Every metric a dashboard or an alert rule reads is one the service exports, and every query
parses. Data-driven: a dashboard JSON or a rule file added under deploy/ is checked as is."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from aiohttp.test_utils import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.observability.promql import (
    PROMETHEUS_OWN,
    Query,
    dashboard_files,
    dashboard_queries,
    for_promtool,
    metric_names,
    rule_files,
    rule_queries,
)

# Metrics the alert rules are written against that another issue is still to export (the
# contract in README.md, "Metric names other parts must use"). Remove a line when its issue
# lands: from then on the metric must be exported like any other.
PENDING: dict[str, str] = {}

# What a scrape of a family of each type can hold.
_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


@pytest.fixture
async def exported(client: TestClient) -> set[str]:
    """Every series name the service's `/metrics` declares. The `python_*` families are left
    out: prometheus-client adds them only when there is a single process."""
    text = await (await client.get("/metrics")).text()
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        if not family.name.startswith("python_")
        for suffix in _SUFFIXES.get(family.type, ("",))
    }


def unknown(queries: list[Query], known: set[str]) -> list[str]:
    return [
        f"{query.where}: {name}"
        for query in queries
        for name in sorted(metric_names(query.expr))
        if name not in known and name not in PROMETHEUS_OWN
    ]


@pytest.mark.parametrize("dashboard", dashboard_files(), ids=lambda path: path.name)
async def test_every_metric_a_dashboard_queries_is_exported(
    dashboard: Path, exported: set[str]
) -> None:
    queries = dashboard_queries(dashboard)
    assert queries, f"{dashboard.name} has no queries"
    assert unknown(queries, exported) == []


@pytest.mark.parametrize("rules", rule_files(), ids=lambda path: path.name)
async def test_every_metric_an_alert_reads_is_exported_or_promised(
    rules: Path, exported: set[str]
) -> None:
    assert unknown(rule_queries(rules), exported | set(PENDING)) == []


@pytest.mark.parametrize("dashboard", dashboard_files(), ids=lambda path: path.name)
def test_every_dashboard_query_parses(dashboard: Path, promtool: str, tmp_path: Path) -> None:
    """promtool parses each query as the expression of a recording rule."""
    queries = dashboard_queries(dashboard)
    rules = [
        {"record": f"dashboard:query_{i}", "expr": for_promtool(query.expr)}
        for i, query in enumerate(queries)
        if not query.expr.startswith("label_values(")
    ]
    path = tmp_path / "queries.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": dashboard.stem, "rules": rules}]}))
    result = subprocess.run(
        [promtool, "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dashboards_are_well_formed() -> None:
    uids = []
    for path in dashboard_files():
        board = json.loads(path.read_text())
        uids.append(board["uid"])
        assert board["title"].startswith("Backend / ")
        panels = [p for p in board["panels"] if p["type"] != "row"]
        assert len({p["id"] for p in board["panels"]}) == len(board["panels"])
        for panel in panels:
            assert panel["datasource"]["uid"] == "${datasource}", (path.name, panel["title"])
            assert panel["targets"], (path.name, panel["title"])
    assert len(set(uids)) == len(uids)


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ('sum by (route) (rate(http_requests_total{job=~"$job"}[$__rate_interval]))',
         {"http_requests_total"}),
        ("histogram_quantile(0.99, sum by (le, actor) (rate(actor_message_duration_seconds_bucket"
         '{outcome!="x"}[5m])))', {"actor_message_duration_seconds_bucket"}),
        ('sum(a_total{s=~"5.."}) / on (job) group_left (x) sum(b) > bool 0.5 unless c offset 5m',
         {"a_total", "b", "c"}),
        ("time() - max without (pid) (process_start_time_seconds)", {"process_start_time_seconds"}),
        ('up{job="by (x) sum"} == 0', {"up"}),
        ("label_values(backend_processes, job)", {"backend_processes"}),
    ],
)  # fmt: skip
def test_metric_names_are_read_from_promql(query: str, names: set[str]) -> None:
    assert metric_names(query) == names
