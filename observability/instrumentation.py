"""Metrics and tracing for one process, as the configuration says.

Every kind of process calls `instrumented` once around its whole life, before it builds
anything that records metrics or spans: the API server (`server.runner.run_server`) and the
Taskiq worker and scheduler (with their own `service`, e.g. `"backend-worker"`). Processes
without the API's `/metrics` also expose their own port with `observability.exporter`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from config import Settings
from observability import metrics, tracing


@contextmanager
def instrumented(settings: Settings, service: str | None = None) -> Iterator[None]:
    """Switch metrics and tracing on or off for this process; flush spans when the block ends.

    `service` names the process kind in traces (default `SERVICE_NAME`).
    """
    metrics.configure(enabled=settings.metrics_enabled)
    tracing.configure(
        settings.tracing_exporter,
        sample_ratio=settings.tracing_sample_ratio,
        service_name=service or settings.service_name,
        endpoint=(
            str(settings.otel_exporter_otlp_endpoint)
            if settings.otel_exporter_otlp_endpoint
            else None
        ),
    )
    try:
        yield
    finally:
        tracing.shutdown()
