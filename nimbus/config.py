"""One settings object: the only place that reads the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from nimbus.errors import ConfigError


def _int(env: Mapping[str, str], name: str, default: int, minimum: int = 0) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(
            f"The environment variable {name} must be an integer, got {raw!r}."
        ) from None
    if value < minimum:
        raise ConfigError(
            f"The environment variable {name} must be at least {minimum}, got {value}."
        )
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(
            f"The environment variable {name} must be a number, got {raw!r}."
        ) from None
    if value <= 0:
        raise ConfigError(f"The environment variable {name} must be positive, got {value}.")
    return value


@dataclass(frozen=True)
class Settings:
    """Everything Nimbus reads from the environment, with the defaults of the local stack.

    Each field's metadata names its environment variable and says what it is for; the README's
    configuration table is this class.
    """

    redis_url: str = field(
        default="redis://127.0.0.1:6379/0",
        metadata={"env": "NIMBUS_REDIS_URL", "doc": "Redis holding job state (Memorystore)."},
    )
    project: str = field(
        default="nimbus-local",
        metadata={"env": "GOOGLE_CLOUD_PROJECT", "doc": "Google Cloud project of the topics."},
    )
    jobs_topic: str = field(
        default="nimbus-jobs",
        metadata={"env": "NIMBUS_JOBS_TOPIC", "doc": "Pub/Sub topic batch jobs are published to."},
    )
    jobs_subscription: str = field(
        default="nimbus-jobs-worker",
        metadata={
            "env": "NIMBUS_JOBS_SUBSCRIPTION",
            "doc": "Pull subscription the worker consumes.",
        },
    )
    model_uri: str = field(
        default="models:/iris@production",
        metadata={"env": "NIMBUS_MODEL_URI", "doc": "The registry URI served; never per request."},
    )
    tracking_uri: str = field(
        default="http://127.0.0.1:5000",
        metadata={"env": "MLFLOW_TRACKING_URI", "doc": "MLflow tracking server and registry."},
    )
    model_cache_dir: str = field(
        default="",
        metadata={
            "env": "NIMBUS_MODEL_CACHE_DIR",
            "doc": "Local artifact cache; empty means a temporary folder per process.",
        },
    )
    model_refresh_seconds: float = field(
        default=2.0,
        metadata={
            "env": "NIMBUS_MODEL_REFRESH_SECONDS",
            "doc": "Seconds between checks of the model alias in each process; a promoted "
            "version is served within this plus its load time.",
        },
    )
    max_batch_items: int = field(
        default=100_000,
        metadata={"env": "NIMBUS_MAX_BATCH_ITEMS", "doc": "Items accepted in one inline batch."},
    )
    max_predict_rows: int = field(
        default=1000,
        metadata={
            "env": "NIMBUS_MAX_PREDICT_ROWS",
            "doc": "Rows accepted in one synchronous predict request (413 beyond).",
        },
    )
    max_body_bytes: int = field(
        default=10 * 1024 * 1024,
        metadata={"env": "NIMBUS_MAX_BODY_BYTES", "doc": "Largest request body accepted (413)."},
    )
    max_json_depth: int = field(
        default=32,
        metadata={
            "env": "NIMBUS_MAX_JSON_DEPTH",
            "doc": "Deepest nesting of arrays and objects accepted in a request body (400).",
        },
    )
    api_keys: str = field(
        default="",
        metadata={
            "env": "NIMBUS_API_KEYS",
            "doc": "Comma-separated `name:sha256hex` entries (`nimbus keys new NAME` prints "
            "one); empty means no API keys: every endpoint is open. Local stack; unset in the "
            "cloud, where Cloud Run IAM admits only the gateway.",
        },
    )
    rate_limit: int = field(
        default=0,
        metadata={
            "env": "NIMBUS_RATE_LIMIT",
            "doc": "Requests per minute per API key (per client address without keys), "
            "counted in Redis; 0 turns the limit off.",
            "minimum": 0,
        },
    )
    publish_timeout: float = field(
        default=10.0,
        metadata={
            "env": "NIMBUS_PUBLISH_TIMEOUT",
            "doc": "Seconds batch_submit waits for Pub/Sub to accept a job before a 503.",
        },
    )
    lease_seconds: int = field(
        default=60,
        metadata={
            "env": "NIMBUS_LEASE_SECONDS",
            "doc": "How long a worker's claim on a job lasts before another may take it.",
        },
    )
    worker_metrics_port: int = field(
        default=9464,
        metadata={
            "env": "NIMBUS_WORKER_METRICS_PORT",
            "doc": "Port of the worker's Prometheus `/metrics` (`nimbus up` picks a free one "
            "per worker).",
        },
    )
    worker_max_messages: int = field(
        default=4,
        metadata={
            "env": "NIMBUS_WORKER_MAX_MESSAGES",
            "doc": "Flow control: jobs one worker holds at once.",
        },
    )
    mlflow_backend_uri: str = field(
        default="",
        metadata={
            "env": "NIMBUS_MLFLOW_BACKEND_URI",
            "doc": "MLflow server's metadata store; empty means SQLite under NIMBUS_HOME. "
            "A postgresql:// URI (Cloud SQL) works unchanged.",
        },
    )
    artifact_root: str = field(
        default="gs://nimbus-models/mlflow",
        metadata={
            "env": "NIMBUS_ARTIFACT_ROOT",
            "doc": "Where the MLflow server puts model artifacts (a GCS bucket).",
        },
    )
    dead_letter_topic: str = field(
        default="nimbus-jobs-dead",
        metadata={
            "env": "NIMBUS_DEAD_LETTER_TOPIC",
            "doc": "Where Pub/Sub moves a job after its last failed delivery attempt.",
        },
    )
    dead_letter_subscription: str = field(
        default="nimbus-jobs-dead-worker",
        metadata={
            "env": "NIMBUS_DEAD_LETTER_SUBSCRIPTION",
            "doc": "The worker's subscription to the dead-letter topic; it records FAILURE.",
        },
    )
    max_delivery_attempts: int = field(
        default=5,
        metadata={
            "env": "NIMBUS_MAX_DELIVERY_ATTEMPTS",
            "doc": "Delivery attempts before a job is dead-lettered (Pub/Sub allows 5-100).",
        },
    )
    retry_min_backoff: float = field(
        default=10.0,
        metadata={
            "env": "NIMBUS_RETRY_MIN_BACKOFF",
            "doc": "Seconds before a failed job is delivered again (doubles up to the max).",
        },
    )
    retry_max_backoff: float = field(
        default=600.0,
        metadata={"env": "NIMBUS_RETRY_MAX_BACKOFF", "doc": "Longest wait between attempts."},
    )
    chunk_rows: int = field(
        default=10_000,
        metadata={
            "env": "NIMBUS_CHUNK_ROWS",
            "doc": "Items the worker predicts per call; progress and cancel act per chunk.",
        },
    )
    reconcile_after: float = field(
        default=120.0,
        metadata={
            "env": "NIMBUS_RECONCILE_AFTER",
            "doc": "Seconds a job may stay PENDING before the reconciler publishes it again.",
        },
    )
    finished_ttl: int = field(
        default=7 * 24 * 3600,
        metadata={
            "env": "NIMBUS_FINISHED_TTL",
            "doc": "Seconds a finished job's record is kept (only finished jobs expire).",
        },
    )
    result_page_items: int = field(
        default=10_000,
        metadata={
            "env": "NIMBUS_RESULT_PAGE_ITEMS",
            "doc": "Result items per GET /v1/batch/<id> page (`?offset=&limit=`).",
        },
    )
    url: str = field(
        default="",
        metadata={
            "env": "NIMBUS_URL",
            "doc": "API base URL the `nimbus` CLI talks to; empty means the local gateway.",
        },
    )
    api_key: str = field(
        default="",
        metadata={"env": "NIMBUS_API_KEY", "doc": "API key the `nimbus` CLI sends, if any."},
    )
    log_level: str = field(
        default="INFO",
        metadata={"env": "NIMBUS_LOG_LEVEL", "doc": "DEBUG, INFO, WARNING or ERROR."},
    )
    port: int = field(
        default=8080,
        metadata={"env": "NIMBUS_PORT", "doc": "Local gateway port (`nimbus up`)."},
    )
    predict_port: int = field(
        default=8081,
        metadata={
            "env": "NIMBUS_PREDICT_PORT",
            "doc": "Local predict function port (`nimbus up`).",
        },
    )
    batch_submit_port: int = field(
        default=8082,
        metadata={
            "env": "NIMBUS_BATCH_SUBMIT_PORT",
            "doc": "Local batch_submit function port (`nimbus up`).",
        },
    )
    batch_status_port: int = field(
        default=8083,
        metadata={
            "env": "NIMBUS_BATCH_STATUS_PORT",
            "doc": "Local batch_status function port (`nimbus up`).",
        },
    )
    mlflow_port: int = field(
        default=5000,
        metadata={"env": "NIMBUS_MLFLOW_PORT", "doc": "Local MLflow server port (`nimbus up`)."},
    )
    redis_port: int = field(
        default=6379,
        metadata={"env": "NIMBUS_REDIS_PORT", "doc": "Local redis-server port (`nimbus up`)."},
    )
    pubsub_port: int = field(
        default=8085,
        metadata={"env": "NIMBUS_PUBSUB_PORT", "doc": "Local Pub/Sub emulator port (`nimbus up`)."},
    )
    gcs_port: int = field(
        default=4443,
        metadata={"env": "NIMBUS_GCS_PORT", "doc": "Local GCS emulator port (`nimbus up`)."},
    )
    workers: int = field(
        default=1,
        metadata={"env": "NIMBUS_WORKERS", "doc": "Local worker processes (`nimbus up`)."},
    )
    home: str = field(
        default=".nimbus",
        metadata={"env": "NIMBUS_HOME", "doc": "Local state, logs and data (`nimbus up`)."},
    )
    pubsub_emulator_host: str = field(
        default="",
        metadata={
            "env": "PUBSUB_EMULATOR_HOST",
            "doc": "host:port of the Pub/Sub emulator; unset in the cloud.",
        },
    )
    storage_emulator_host: str = field(
        default="",
        metadata={
            "env": "STORAGE_EMULATOR_HOST",
            "doc": "URL of the GCS emulator; unset in the cloud.",
        },
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read every setting from `env` (default: the process environment)."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for spec in fields(cls):
            name = spec.metadata["env"]
            if isinstance(spec.default, bool):
                raise TypeError("no boolean settings yet")
            if isinstance(spec.default, int):
                minimum = spec.metadata.get("minimum", 1)
                values[spec.name] = _int(env, name, spec.default, minimum=minimum)
            elif isinstance(spec.default, float):
                values[spec.name] = _float(env, name, spec.default)
            else:
                values[spec.name] = env.get(name) or spec.default
        settings = cls(**values)  # type: ignore[arg-type]
        if settings.log_level.upper() not in {"DEBUG", "INFO", "WARNING", "ERROR"}:
            raise ConfigError(
                f"NIMBUS_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR, got {settings.log_level!r}."
            )
        from nimbus.auth import ApiKeys

        ApiKeys.parse(settings.api_keys)  # a malformed entry fails here, at start
        return settings

    @property
    def topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.jobs_topic}"

    @property
    def subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.jobs_subscription}"

    @property
    def api_url(self) -> str:
        return self.url or f"http://127.0.0.1:{self.port}"

    @property
    def dead_letter_topic_path(self) -> str:
        return f"projects/{self.project}/topics/{self.dead_letter_topic}"

    @property
    def dead_letter_subscription_path(self) -> str:
        return f"projects/{self.project}/subscriptions/{self.dead_letter_subscription}"

    @property
    def model_name(self) -> str:
        """The registered model's name, from `models:/<name>@alias` or `models:/<name>/<v>`."""
        rest = self.model_uri.removeprefix("models:/")
        return rest.split("@", 1)[0].split("/", 1)[0]

    @property
    def backend_store_uri(self) -> str:
        if self.mlflow_backend_uri:
            return self.mlflow_backend_uri
        return f"sqlite:///{Path(self.home).resolve() / 'mlflow' / 'mlflow.db'}"

    def cache_path(self) -> Path | None:
        return Path(self.model_cache_dir) if self.model_cache_dir else None


def documented_variables() -> list[tuple[str, str, str]]:
    """(variable, default, meaning) for every setting: the README's configuration table."""
    return [
        (spec.metadata["env"], str(spec.default), spec.metadata["doc"]) for spec in fields(Settings)
    ]
