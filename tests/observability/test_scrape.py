"""A real Prometheus (Debian's package) scrapes the multi-process API and a process that
serves only metrics, on loopback, loads the alert rules, and answers queries on what it saw."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import eventually
from tests.observability.conftest import Group, stop
from tests.observability.promql import rule_files
from tests.processes import free_port


@pytest.fixture
async def prometheus_url(
    prometheus: str, api_group: Group, metrics_process: str, tmp_path: Path
) -> AsyncIterator[str]:
    targets = {"backend-api": f"127.0.0.1:{api_group.port}", "backend-worker": metrics_process}
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in rule_files()],
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [target]}]}
            for job, target in targets.items()
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    with (tmp_path / "prometheus.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            prometheus,
            f"--config.file={tmp_path / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=log,
            stderr=log,
        )
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await stop(process)


async def query(base: str, promql: str) -> list[dict[str, Any]]:
    """The instant vector `promql` evaluates to now (empty while Prometheus is starting)."""
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(f"{base}/api/v1/query", params={"query": promql}) as response,
        ):
            if response.status != 200:
                return []
            return (await response.json())["data"]["result"]
    except aiohttp.ClientConnectionError:
        return []


async def value(base: str, promql: str) -> float | None:
    result = await query(base, promql)
    return float(result[0]["value"][1]) if result else None


async def test_prometheus_scrapes_the_api_and_a_worker(
    prometheus_url: str, api_group: Group
) -> None:
    await api_group.hit_livez(25)

    async def both_targets_up() -> bool:
        found = await query(prometheus_url, "up == 1")
        return {series["metric"]["job"] for series in found} == {"backend-api", "backend-worker"}

    async def counted(promql: str, expected: float) -> bool:
        return await value(prometheus_url, promql) == expected

    await eventually(both_targets_up, timeout=30)
    livez = 'sum(http_requests_total{job="backend-api", route="/livez"})'
    await eventually(lambda: counted(livez, api_group.livez_served), timeout=15)
    assert await value(prometheus_url, 'sum(backend_processes{job="backend-api"})') == 2
    assert await value(prometheus_url, 'backend_processes{job="backend-worker"}') == 1
    memory = await value(prometheus_url, 'process_resident_memory_bytes{job="backend-worker"}')
    assert memory is not None
    assert memory > 10_000_000
    assert await value(prometheus_url, 'min(db_replica_up{job="backend-api"})') == 1


async def test_prometheus_loads_and_evaluates_the_alert_rules(prometheus_url: str) -> None:
    async def rules() -> list[dict[str, Any]]:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{prometheus_url}/api/v1/rules") as response,
            ):
                if response.status != 200:  # 503 while Prometheus starts
                    return []
                groups = (await response.json())["data"]["groups"]
        except aiohttp.ClientConnectionError:
            return []
        return [rule for group in groups for rule in group["rules"]]

    async def all_evaluated() -> bool:
        found = await rules()
        return bool(found) and all(rule["health"] == "ok" for rule in found)

    await eventually(all_evaluated, timeout=30)
    names = {rule["name"] for rule in await rules()}
    assert {"BackendTargetDown", "BackendHighErrorRatio", "BackendReplicaDown"} <= names
    firing = await query(
        prometheus_url, 'ALERTS{alertstate="firing", alertname="BackendTargetDown"}'
    )
    assert firing == []
