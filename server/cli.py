"""The `backend` command.

backend up                      services (when no URLs are set), migrations, API, worker, scheduler
backend serve [--workers N]     the API server (one process per core by default)
backend migrate                 apply pending migrations
backend worker [--topics a,b]   a worker running the jobs of those topics (default: all)
backend scheduler               periodic jobs (safe to run more than one)
backend seed                    the first admin and the demo catalog (idempotent)
backend services start|stop|status
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Callable
from urllib.parse import urlsplit, urlunsplit

import uvloop
from pydantic import SecretStr

from config import ConfigError, Settings, load_settings
from observability.instrumentation import instrumented
from observability.logging import configure_logging
from server.runner import serve, serve_everything
from server.seed import seed
from storage.embedded import EmbeddedServices, ServicesError
from storage.migrations import MigrationError, migrate

log = logging.getLogger("backend.cli")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {
        key: value
        for key in ("host", "port", "workers")
        if (value := getattr(args, key, None)) is not None
    }
    try:
        settings = load_settings(**overrides)
        configure_logging(settings.log_level)
        return args.command(settings, args)
    except (ConfigError, ServicesError, MigrationError) as error:
        print(f"backend: {error}", file=sys.stderr)
        return 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="backend", description=__doc__.split("\n")[0])
    commands = parser.add_subparsers(required=True, metavar="command")

    def command(
        name: str, run: Callable[[Settings, argparse.Namespace], int], help: str, **kwargs: object
    ) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, **kwargs)
        sub.set_defaults(command=run)
        return sub

    for name, run, text in (
        ("up", cmd_up, "start everything for local use, in the foreground"),
        ("serve", cmd_serve, "run the API server"),
    ):
        sub = command(name, run, text)
        sub.add_argument("--workers", type=int, help="processes (default: one per core)")
        sub.add_argument("--host")
        sub.add_argument("--port", type=int)
    command("migrate", cmd_migrate, "apply pending database migrations")
    worker = command("worker", cmd_worker, "run background jobs of some topics")
    worker.add_argument("--topics", help="comma-separated topics (default: every JOB_TOPICS)")
    worker.add_argument("--metrics-port", type=int, help="serve this process's metrics here")
    scheduler = command("scheduler", cmd_scheduler, "enqueue periodic jobs")
    scheduler.add_argument("--metrics-port", type=int, help="serve this process's metrics here")
    command("seed", cmd_seed, "create the first admin and the demo catalog")
    services = command("services", cmd_services, "manage the embedded PostgreSQL and Redis")
    services.add_argument("action", choices=("start", "stop", "status"))
    return parser


# -- commands --------------------------------------------------------------------------------


def cmd_up(settings: Settings, args: argparse.Namespace) -> int:
    embedded = EmbeddedServices(settings.state_dir)
    needed = embedded_needs(settings)
    before = {s.name for s in embedded.status() if s.running}
    if needed:
        embedded.start(needed)
    started_here = tuple(name for name in needed if name not in before)
    try:
        settings = resolve(settings)
        _migrate(settings)
        _seed(settings)
        print(f"API on http://{settings.host}:{settings.port}  (Ctrl-C stops everything)")
        return serve_everything(settings, workers(settings))
    finally:
        if started_here:
            embedded.stop(started_here)


def cmd_serve(settings: Settings, args: argparse.Namespace) -> int:
    return serve(resolve(settings), workers(settings))


def cmd_migrate(settings: Settings, args: argparse.Namespace) -> int:
    _migrate(resolve(settings))
    return 0


def cmd_worker(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.worker import run_worker

    topics = _split(args.topics) if args.topics else settings.job_topics
    port = args.metrics_port if args.metrics_port is not None else settings.worker_metrics_port
    with instrumented(settings, service="backend-worker"):
        return uvloop.run(run_worker(resolve(settings), topics, port))


def cmd_scheduler(settings: Settings, args: argparse.Namespace) -> int:
    from scheduler.periodic import run_scheduler

    port = args.metrics_port if args.metrics_port is not None else settings.scheduler_metrics_port
    with instrumented(settings, service="backend-scheduler"):
        return uvloop.run(run_scheduler(resolve(settings), port))


def cmd_seed(settings: Settings, args: argparse.Namespace) -> int:
    _seed(resolve(settings))
    return 0


def cmd_services(settings: Settings, args: argparse.Namespace) -> int:
    embedded = EmbeddedServices(settings.state_dir)
    if args.action == "start":
        needed = embedded_needs(settings)
        if not needed:
            print("DATABASE_URL and REDIS_URL are set: no embedded service is needed")
            return 0
        urls = embedded.start(needed)
        print(f"primary  {redact(urls.database_url)}")
        print(f"replica  {redact(urls.replica_urls[0])}")
        print(f"redis    {redact(urls.redis_url)}")
    elif args.action == "stop":
        embedded.stop()
    for status in embedded.status():
        state = f"running (pid {status.pid})" if status.running else "stopped"
        print(f"{status.name:8} {state:22} port {status.port or '-'}")
    return 0


# -- helpers ---------------------------------------------------------------------------------


def embedded_needs(settings: Settings) -> tuple[str, ...]:
    """The embedded services that stand in for URLs the settings leave unset."""
    needs: tuple[str, ...] = ()
    if settings.database_url is None:
        needs += ("primary", "replica")
    if settings.redis_url is None:
        needs += ("redis",)
    return needs


def resolve(settings: Settings) -> Settings:
    """Fill the unset URLs from the embedded services, which must be running."""
    needed = embedded_needs(settings)
    if not needed:
        return settings
    embedded = EmbeddedServices(settings.state_dir)
    urls = embedded.urls()
    down = [s.name for s in embedded.status() if s.name in needed and not s.running]
    if urls is None or down:
        raise ConfigError(
            "DATABASE_URL / REDIS_URL are not set and the embedded services are not running "
            f"({', '.join(down or needed)}): run `backend services start` or set the URLs"
        )
    update: dict[str, object] = {}
    if settings.database_url is None:
        update["database_url"] = SecretStr(urls.database_url)
        update["database_replica_urls"] = [SecretStr(url) for url in urls.replica_urls]
    if settings.redis_url is None:
        update["redis_url"] = SecretStr(urls.redis_url)
    return settings.model_copy(update=update)


def workers(settings: Settings) -> int:
    return settings.workers or os.cpu_count() or 1


def _split(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def redact(url: str) -> str:
    """The URL with its password masked, for printing."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urlunsplit(parts._replace(netloc=netloc))


def _migrate(settings: Settings) -> None:
    applied = asyncio.run(migrate(settings.primary_dsn))
    names = ", ".join(m.filename for m in applied) or "none pending"
    print(f"migrations applied: {names}")


def _seed(settings: Settings) -> None:
    for line in asyncio.run(seed(settings)):
        print(f"seed: {line}")


if __name__ == "__main__":
    sys.exit(main())
