"""Observability: JSON logs (secrets redacted), Prometheus metrics, OpenTelemetry traces."""
