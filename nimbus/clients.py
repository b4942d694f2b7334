"""The clients a process needs, each built on first use and kept for the process's life.

Cloud Run reuses a function instance across requests, so connections and the loaded model
live in global scope; building them lazily keeps cold starts to what the first request needs.
"""

from __future__ import annotations

from functools import cached_property
from typing import TYPE_CHECKING

from nimbus.config import Settings

if TYPE_CHECKING:
    import redis
    from google.cloud.storage import Client as StorageClient

    from nimbus.bus import JobBus
    from nimbus.gate import Gate
    from nimbus.jobs import JobStore
    from nimbus.registry import ModelRegistry


class Clients:
    """Lazily built, cached clients for one process; pass `settings` to point elsewhere."""

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()

    @cached_property
    def redis(self) -> redis.Redis:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # Short timeouts and one retry: a request that cannot reach Redis answers 503 quickly.
        return redis.Redis.from_url(
            self.settings.redis_url,
            socket_timeout=5,
            socket_connect_timeout=2,
            health_check_interval=30,
            retry=Retry(NoBackoff(), retries=1),
        )

    @cached_property
    def gate(self) -> Gate:
        """Body size, API keys and rate limit for every request of this process."""
        from nimbus.auth import ApiKeys
        from nimbus.gate import Gate
        from nimbus.ratelimit import RateLimiter

        limiter = None
        if self.settings.rate_limit:
            import redis

            # A connection of its own with tight timeouts: when Redis is unreachable the limiter
            # gives up within half a second and lets requests through.
            connection = redis.Redis.from_url(
                self.settings.redis_url, socket_timeout=0.5, socket_connect_timeout=0.5
            )
            limiter = RateLimiter(connection, per_minute=self.settings.rate_limit)
        return Gate(
            project=self.settings.project,
            max_body_bytes=self.settings.max_body_bytes,
            keys=ApiKeys.parse(self.settings.api_keys),
            limiter=limiter,
        )

    @cached_property
    def job_store(self) -> JobStore:
        from nimbus.jobs import JobStore

        return JobStore(self.redis, finished_ttl=self.settings.finished_ttl)

    @cached_property
    def job_bus(self) -> JobBus:
        from nimbus.bus import JobBus, new_publisher

        return JobBus(
            new_publisher(), self.settings.topic_path, timeout=self.settings.publish_timeout
        )

    @cached_property
    def storage(self) -> StorageClient:
        from google.cloud import storage

        return storage.Client()

    @cached_property
    def model_registry(self) -> ModelRegistry:
        from nimbus.registry import ModelRegistry, RegistryClient, RestRegistryClient

        # An MLflow server is asked over plain HTTP: importing MLflow would add seconds to
        # every cold start for one small GET per check. Anything else needs MLflow's client.
        client: RegistryClient
        if self.settings.tracking_uri.startswith(("http://", "https://")):
            client = RestRegistryClient(self.settings.tracking_uri)
        else:
            from mlflow import MlflowClient

            client = MlflowClient(tracking_uri=self.settings.tracking_uri)
        return ModelRegistry(
            client,
            self.settings.model_uri,
            cache_dir=self.settings.cache_path(),
            refresh_seconds=self.settings.model_refresh_seconds,
            # MLflow, skops and scikit-learn stay out of a serving process: a child loads a
            # version through them and leaves its fast form in the cache.
            serving=True,
        )
