"""The job bus: Pub/Sub carries job ids from batch_submit to the worker."""

from __future__ import annotations

import logging
from concurrent import futures
from typing import TYPE_CHECKING, Any

import orjson

from nimbus.errors import ServiceUnavailable

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

    from nimbus.config import Settings

logger = logging.getLogger(__name__)

# Long enough for a large chunked job between lease extensions by the client library; the
# worker's own lease in Redis is what decides who owns a job.
ACK_DEADLINE_SECONDS = 60


class JobBus:
    """Publishes one message per job on the jobs topic."""

    def __init__(
        self, publisher: pubsub_v1.PublisherClient, topic_path: str, *, timeout: float
    ) -> None:
        self.publisher = publisher
        self.topic_path = topic_path
        self.timeout = timeout

    def publish_job(self, job_id: str, **attributes: str) -> str:
        """Publish `job_id` and wait until Pub/Sub holds it; the message id, or a 503 error."""
        data = orjson.dumps({"job_id": job_id})
        future = self.publisher.publish(self.topic_path, data, job_id=job_id, **attributes)
        try:
            return str(future.result(timeout=self.timeout))
        except futures.TimeoutError:
            # The publish may still go through later: the worker's claim decides what runs.
            future.cancel()
            reason = f"no answer within {self.timeout:g}s"
        except Exception as exc:
            reason = f"{type(exc).__name__}: {exc}"
        logger.warning("publish of job %s to %s failed: %s", job_id, self.topic_path, reason)
        raise ServiceUnavailable(
            f"The job queue (Pub/Sub) did not accept job {job_id} ({reason}); "
            "the job was not queued: submit it again.",
            code="queue_unavailable",
        )

    def is_reachable(self) -> bool:
        """True when the topic exists and answers: what batch_submit's readiness reports."""
        try:
            self.publisher.get_topic(request={"topic": self.topic_path}, timeout=2.0)
        except Exception as exc:
            logger.info("pubsub topic %s not reachable: %s", self.topic_path, exc)
            return False
        return True


def decode_job_message(data: bytes) -> str:
    """The job id a message carries; ValueError for a message that is not a Nimbus job."""
    try:
        job_id = orjson.loads(data)["job_id"]
    except (orjson.JSONDecodeError, KeyError, TypeError):
        raise ValueError("message body is not {'job_id': ...}") from None
    if not isinstance(job_id, str) or not job_id:
        raise ValueError("message job_id is not a non-empty string")
    return job_id


def new_publisher() -> pubsub_v1.PublisherClient:
    """A publisher that sends each job at once: a submit waits for its own publish anyway."""
    from google.cloud import pubsub_v1

    batch = pubsub_v1.types.BatchSettings(max_messages=100, max_latency=0.002)
    return pubsub_v1.PublisherClient(batch_settings=batch)


RETAIN_ACKED_SECONDS = 7 * 24 * 3600  # how far back a replay (seek) can reach


def worker_subscription(settings: Settings) -> dict[str, Any]:
    """The worker's pull subscription, as the code relies on it: retries back off, the last
    failed attempt goes to the dead-letter topic, acked messages stay for replays."""
    return {
        "name": settings.subscription_path,
        "topic": settings.topic_path,
        "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
        "retain_acked_messages": True,
        "message_retention_duration": _duration(RETAIN_ACKED_SECONDS),
        "retry_policy": {
            "minimum_backoff": _duration(settings.retry_min_backoff),
            "maximum_backoff": _duration(settings.retry_max_backoff),
        },
        "dead_letter_policy": {
            "dead_letter_topic": settings.dead_letter_topic_path,
            "max_delivery_attempts": settings.max_delivery_attempts,
        },
    }


def ensure_topology(settings: Settings) -> None:
    """Create the topics and subscriptions the code expects when missing (idempotent)."""
    from google.api_core.exceptions import AlreadyExists
    from google.cloud import pubsub_v1

    publisher = pubsub_v1.PublisherClient()
    subscriber = pubsub_v1.SubscriberClient()
    subscriptions = [
        {
            "name": settings.dead_letter_subscription_path,
            "topic": settings.dead_letter_topic_path,
            "ack_deadline_seconds": ACK_DEADLINE_SECONDS,
        },
        worker_subscription(settings),
    ]
    try:
        for topic in (settings.topic_path, settings.dead_letter_topic_path):
            try:
                publisher.create_topic(request={"name": topic})
                logger.info("created topic %s", topic)
            except AlreadyExists:
                pass
        for subscription in subscriptions:
            try:
                subscriber.create_subscription(request=subscription)
                logger.info("created subscription %s", subscription["name"])
            except AlreadyExists:
                pass
    finally:
        subscriber.close()
        publisher.transport.close()


def _duration(seconds: float) -> dict[str, int]:
    whole = int(seconds)
    return {"seconds": whole, "nanos": round((seconds - whole) * 1e9)}
