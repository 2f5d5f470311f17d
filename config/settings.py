"""Typed settings, read from the environment and an optional `.env` file, validated at start."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AnyHttpUrl,
    AnyUrl,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    IPvAnyNetwork,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class ConfigError(Exception):
    """Configuration that stops start-up. The message names the variable and never its value."""


def _split(value: Any) -> Any:
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def _check_dsn(value: SecretStr | None, schemes: tuple[str, ...]) -> SecretStr | None:
    if value is not None:
        url = AnyUrl(value.get_secret_value())
        if url.scheme not in schemes:
            raise ValueError(f"scheme must be one of {', '.join(schemes)}")
    return value


_TOPIC = re.compile(r"^[a-z0-9_-]{1,32}$")

CommaList = Annotated[list[str], NoDecode]
SecretList = Annotated[list[SecretStr], NoDecode]
NetworkList = Annotated[list[IPvAnyNetwork], NoDecode]

# What an upload can be recognised as from its leading bytes (`FILES_ALLOWED_TYPES` picks).
FILE_TYPES = (
    "image/png",
    "image/jpeg",
    "image/gif",
    "image/webp",
    "application/pdf",
    "text/csv",
)

EXEMPT = "exempt"


class RatePolicy(BaseModel):
    """A token bucket per caller: `capacity` requests at once, refilled at `per_second`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    capacity: int = Field(ge=1)
    per_second: float = Field(gt=0)
    cost: int = Field(1, ge=1, description="tokens one request takes")
    on_redis_error: Literal["open", "closed"] = Field(
        "open", description="when Redis is unreachable: serve (open) or refuse with 503 (closed)"
    )
    shadow: bool = Field(False, description="count and log what would be refused, refuse nothing")

    @property
    def window_seconds(self) -> int:
        """How long an empty bucket takes to fill: the policy's window."""
        return max(1, math.ceil(self.capacity / self.per_second))


DEFAULT_RATE_POLICIES = {
    "default": RatePolicy(capacity=120, per_second=20),
    # Sign-up and sign-in: a burst of 10, then 12 a minute per client.
    "auth": RatePolicy(capacity=10, per_second=0.2),
    # Sign-in attempts against one account from anywhere, against credential stuffing.
    "login-account": RatePolicy(capacity=5, per_second=1 / 60),
}


class Settings(BaseSettings):
    """Everything the processes read from their environment.

    Connection URLs are secrets: they are never logged, and `redacted()` is what start-up prints.
    When `DATABASE_URL`, `DATABASE_REPLICA_URLS` and `REDIS_URL` are unset, the embedded services
    started by `backend services start` (state in `STATE_DIR`) are used.
    """

    model_config = SettingsConfigDict(
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
        frozen=True,
    )

    app_env: Literal["dev", "test", "prod"] = "dev"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    workers: int | None = Field(
        None, ge=1, le=256, description="API processes; default: one per core"
    )
    state_dir: Path = Path(".run")

    database_url: SecretStr | None = None
    database_replica_urls: SecretList = Field(default_factory=list)
    redis_url: SecretStr | None = None
    redis_namespace: str = Field("backend", pattern=r"^[A-Za-z0-9_.-]{1,64}$")

    db_pool_size: int = Field(10, ge=1, le=200, description="per actor, primary and each replica")
    db_connect_timeout: float = Field(5.0, gt=0)
    db_command_timeout: float = Field(10.0, gt=0)
    redis_pool_size: int = Field(32, ge=1, le=1024)
    replica_check_interval: float = Field(1.0, gt=0)
    replica_max_lag_seconds: float = Field(30.0, gt=0)

    actor_mailbox_size: int = Field(256, ge=1)
    request_timeout: float = Field(10.0, gt=0)
    retry_after_seconds: int = Field(1, ge=1)
    drain_seconds: float = Field(2.0, ge=0)
    shutdown_timeout: float = Field(20.0, gt=0)
    max_body_bytes: int = Field(1 << 20, ge=1024)

    cors_origins: CommaList = Field(default_factory=list)
    hsts_seconds: int = Field(31_536_000, ge=0)

    rate_limit_enabled: bool = True
    rate_limit_policies: dict[str, RatePolicy] = Field(
        default_factory=lambda: dict(DEFAULT_RATE_POLICIES),
        description="JSON; merged over the defaults, so naming one policy changes only that one",
    )
    rate_limit_routes: dict[str, str] = Field(
        default_factory=dict, description="JSON: route name -> policy name or 'exempt'"
    )
    rate_limit_role_multipliers: dict[str, float] = Field(
        default_factory=lambda: {"staff": 5.0, "admin": 10.0}
    )
    rate_limit_timeout: float = Field(0.25, gt=0, description="seconds before Redis counts as down")
    trusted_proxies: NetworkList = Field(
        default_factory=list, description="peers whose X-Forwarded-For is believed"
    )

    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    access_log: bool = True

    # -- background jobs and live updates (issue 5) --
    job_topics: CommaList = Field(
        default_factory=lambda: ["default", "reports", "orders", "maintenance"],
        description="every topic a job may be sent to; each is its own Redis stream",
    )
    job_modules: CommaList = Field(
        default_factory=list, description="extra modules that register job types"
    )
    job_concurrency: int = Field(16, ge=1, le=10_000, description="jobs at once per worker")
    job_max_attempts: int = Field(5, ge=1, le=100, description="default attempts per job")
    job_backoff_seconds: float = Field(1.0, gt=0, description="first retry delay")
    job_backoff_max_seconds: float = Field(300.0, gt=0)
    job_claim_timeout: float = Field(
        30.0, gt=0, description="a delivery idle this long is taken over by another worker"
    )
    job_heartbeat_interval: float = Field(5.0, gt=0)
    job_reclaim_interval: float = Field(5.0, gt=0, description="seconds between reclaim scans")
    job_poll_interval: float = Field(0.5, gt=0, description="delayed-job and relay poll")
    job_shutdown_timeout: float = Field(
        20.0, gt=0, description="SIGTERM: running jobs get this long, then go back to the queue"
    )
    job_retention_days: int = Field(30, ge=1, description="finished jobs and their events")
    job_maintenance_interval: float = Field(3600.0, gt=0, description="seconds between runs")
    worker_metrics_port: int | None = Field(None, ge=0, le=65535, description="0: any free")
    scheduler_metrics_port: int | None = Field(None, ge=0, le=65535)
    ws_heartbeat_seconds: float = Field(20.0, gt=0)
    ws_auth_timeout: float = Field(10.0, gt=0)
    ws_recheck_seconds: float = Field(
        30.0, gt=0, description="how often open sockets' tokens are checked again"
    )
    ws_send_buffer: int = Field(256, ge=1, description="messages queued per client at most")
    ws_max_connections_per_user: int = Field(8, ge=1)
    ws_max_subscriptions: int = Field(100, ge=1)
    # Observability (issue 7): metrics can be switched off only to measure what they cost;
    # tracing is off unless an exporter is chosen, and then samples this share of new traces.
    metrics_enabled: bool = True
    tracing_exporter: Literal["none", "console", "otlp"] = "none"
    tracing_sample_ratio: float = Field(1.0, ge=0, le=1)
    service_name: str = Field("backend", pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    # The standard OpenTelemetry variable, read here so that a `.env` file can set it too.
    otel_exporter_otlp_endpoint: AnyHttpUrl | None = None

    # -- accounts and tokens (issue 3) --
    jwt_keys: SecretList = Field(
        default_factory=list,
        description="`kid:secret,...`: the first signs, all verify; generated in dev/test if unset",
    )
    jwt_algorithm: Literal["HS256", "HS384", "HS512"] = "HS256"
    jwt_issuer: str = Field("backend", min_length=1)
    jwt_audience: str = Field("backend-api", min_length=1)
    access_token_seconds: int = Field(900, ge=30, le=86_400)
    refresh_token_days: int = Field(30, ge=1, le=365)
    password_time_cost: int = Field(2, ge=1, le=20)
    password_memory_kib: int = Field(19_456, ge=1024, le=4_194_304)
    password_parallelism: int = Field(1, ge=1, le=16)
    password_hash_threads: int = Field(2, ge=1, le=64)
    admin_email: EmailStr | None = None
    admin_password: SecretStr | None = None
    read_your_writes_seconds: float = Field(5.0, ge=0, le=3600)

    # -- catalog cache (issue 3) --
    catalog_cache_seconds: float = Field(300.0, gt=0, description="Redis cache entry lifetime")
    catalog_near_cache_seconds: float = Field(60.0, gt=0, description="in-process entry lifetime")
    catalog_near_cache_size: int = Field(10_000, ge=1, description="in-process entries per kind")
    idempotency_key_hours: int = Field(24, ge=1, le=24 * 30, description="keys kept at least")

    # -- files: uploads and the file store ---------------------------------------------------
    files_backend: Literal["local", "s3"] = "local"
    files_local_dir: Path | None = Field(None, description="default: STATE_DIR/files")
    files_max_bytes: int = Field(25 << 20, ge=1, le=5 << 40)
    files_allowed_types: CommaList = Field(default_factory=lambda: list(FILE_TYPES))
    files_max_uploads: int = Field(16, ge=1, le=4096, description="at once, per process")
    files_upload_timeout: float = Field(900.0, gt=0)
    files_thumbnail_pixels: int = Field(320, ge=16, le=2048)
    files_max_image_pixels: int = Field(40_000_000, ge=1)
    s3_bucket: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    s3_endpoint_url: str | None = None
    s3_region: str = "us-east-1"
    s3_access_key_id: SecretStr | None = None
    s3_secret_access_key: SecretStr | None = None
    s3_addressing_style: Literal["auto", "path", "virtual"] = "auto"
    s3_prefix: str = Field("", pattern=r"^([A-Za-z0-9_.-]+/)*$")
    s3_part_bytes: int = Field(8 << 20, ge=5 << 20, le=5 << 30)
    s3_pool_size: int = Field(32, ge=1, le=1024)

    @field_validator("files_allowed_types")
    @classmethod
    def _known_file_types(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(FILE_TYPES))
        if unknown:
            known = ", ".join(FILE_TYPES)
            raise ValueError(f"cannot recognise {', '.join(unknown)}; known: {known}")
        return value

    @model_validator(mode="after")
    def _s3_settings(self) -> Settings:
        if self.files_backend == "s3" and self.s3_bucket is None:
            raise ValueError("FILES_BACKEND is s3 but S3_BUCKET is not set")
        if (self.s3_access_key_id is None) != (self.s3_secret_access_key is None):
            raise ValueError("set both S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY, or neither")
        return self

    @property
    def files_dir(self) -> Path:
        return self.files_local_dir or self.state_dir / "files"

    @field_validator(
        "database_replica_urls",
        "cors_origins",
        "trusted_proxies",
        "job_topics",
        "job_modules",
        "files_allowed_types",
        mode="before",
    )
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value

    @field_validator("database_url")
    @classmethod
    def _postgres_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_dsn(value, ("postgres", "postgresql"))

    @field_validator("database_replica_urls")
    @classmethod
    def _postgres_urls(cls, value: list[SecretStr]) -> list[SecretStr]:
        for item in value:
            _check_dsn(item, ("postgres", "postgresql"))
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, value: SecretStr | None) -> SecretStr | None:
        return _check_dsn(value, ("redis", "rediss", "unix"))

    @field_validator("job_topics")
    @classmethod
    def _topic_names(cls, value: list[str]) -> list[str]:
        for topic in value:
            if not _TOPIC.match(topic):
                raise ValueError(f"topic names are [a-z0-9_-]{{1,32}}: {topic!r}")
        return value

    @field_validator("rate_limit_policies")
    @classmethod
    def _over_defaults(cls, value: dict[str, RatePolicy]) -> dict[str, RatePolicy]:
        return {**DEFAULT_RATE_POLICIES, **value}

    @field_validator("rate_limit_role_multipliers")
    @classmethod
    def _multipliers(cls, value: dict[str, float]) -> dict[str, float]:
        if any(factor < 1 for factor in value.values()):
            raise ValueError("role multipliers raise limits: each must be >= 1")
        return value

    @model_validator(mode="after")
    def _routes_name_policies(self) -> Settings:
        unknown = {
            name
            for name in self.rate_limit_routes.values()
            if name != EXEMPT and name not in self.rate_limit_policies
        }
        if unknown:
            raise ValueError(f"RATE_LIMIT_ROUTES names unknown policies: {sorted(unknown)}")
        return self

    @model_validator(mode="after")
    def _replicas_need_primary(self) -> Settings:
        if self.database_replica_urls and self.database_url is None:
            raise ValueError("DATABASE_REPLICA_URLS is set but DATABASE_URL is not")
        return self

    @model_validator(mode="after")
    def _heartbeat_within_claim(self) -> Settings:
        # A running job's claim must be renewed before another worker may take it over.
        if self.job_heartbeat_interval * 2 > self.job_claim_timeout:
            raise ValueError("JOB_HEARTBEAT_INTERVAL must be at most half of JOB_CLAIM_TIMEOUT")
        return self

    @field_validator("jwt_keys", mode="before")
    @classmethod
    def _key_list(cls, value: Any) -> Any:
        return _split(value)

    @field_validator("jwt_keys")
    @classmethod
    def _key_entries(cls, value: list[SecretStr]) -> list[SecretStr]:
        kids = [signing_key(item)[0] for item in value]
        if len(set(kids)) != len(kids):
            raise ValueError("each key id may appear once")
        return value

    @model_validator(mode="after")
    def _production_keys(self) -> Settings:
        if self.app_env == "prod" and not self.jwt_keys:
            raise ValueError("JWT_KEYS must be set when APP_ENV=prod (kid:secret,...)")
        return self

    @property
    def signing_keys(self) -> list[tuple[str, bytes]]:
        """`(kid, secret)` pairs from `JWT_KEYS`, the signing key first."""
        return [signing_key(item) for item in self.jwt_keys]

    @property
    def uses_embedded_services(self) -> bool:
        return self.database_url is None or self.redis_url is None

    @property
    def primary_dsn(self) -> str:
        return _required(self.database_url, "DATABASE_URL")

    @property
    def replica_dsns(self) -> list[str]:
        return [url.get_secret_value() for url in self.database_replica_urls]

    @property
    def redis_dsn(self) -> str:
        return _required(self.redis_url, "REDIS_URL")

    def redacted(self) -> dict[str, Any]:
        """The settings as start-up logs them: secrets masked."""
        return self.model_dump(mode="json")


_KID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
MIN_KEY_BYTES = 32


def signing_key(entry: SecretStr) -> tuple[str, bytes]:
    """`kid:secret` -> `(kid, secret bytes)`; errors never quote the secret."""
    kid, sep, secret = entry.get_secret_value().partition(":")
    if not sep or not _KID.match(kid):
        raise ValueError("each key is `kid:secret`, kid of letters, digits, `._-`")
    if len(secret.encode()) < MIN_KEY_BYTES:
        raise ValueError(f"key {kid!r} is shorter than {MIN_KEY_BYTES} bytes")
    return kid, secret.encode()


def _required(value: SecretStr | None, variable: str) -> str:
    if value is None:
        raise ConfigError(
            f"{variable} is not set and no embedded services were found: "
            "run `backend services start` or set it"
        )
    return value.get_secret_value()


def load_settings(**overrides: Any) -> Settings:
    """Read and validate the settings; raise `ConfigError` naming each bad variable.

    The environment wins over the env file, which is `.env` unless `ENV_FILE` names another.
    """
    env_file = os.environ.get("ENV_FILE", ".env")
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as error:
        problems = []
        for item in error.errors(include_input=False, include_url=False):
            variable = str(item["loc"][0]).upper() if item["loc"] else "settings"
            problems.append(f"{variable}: {item['msg']}")
        raise ConfigError("invalid configuration: " + "; ".join(problems)) from None
