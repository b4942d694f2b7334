"""The batch worker: a Pub/Sub pull subscriber that runs jobs recorded in Redis.

`handle_job` is the whole life of one job and knows nothing of Pub/Sub; `Worker` feeds it from
a streaming pull and acks a message only once Redis holds the job's outcome.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import threading
import time
import uuid
from concurrent import futures
from typing import TYPE_CHECKING, Any

from nimbus.bus import decode_job_message
from nimbus.errors import NimbusError, ServiceUnavailable, ValidationFailed
from nimbus.jobs import ClaimRefused

if TYPE_CHECKING:
    from google.cloud import pubsub_v1

    from nimbus.config import Settings
    from nimbus.jobs import JobStore
    from nimbus.registry import ModelRegistry

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5


class Outcome(enum.StrEnum):
    """What became of one delivery; every outcome but RETRY is acked."""

    DONE = "done"  # this worker wrote the result
    FAILED = "failed"  # the job can never succeed; FAILURE recorded
    SKIPPED = "skipped"  # unknown or already finished: nothing to do
    RETRY = "retry"  # a dependency is down or another worker holds the job: redeliver later


def handle_job(
    job_id: str,
    store: JobStore,
    models: ModelRegistry,
    *,
    owner: str,
    lease_seconds: int,
) -> Outcome:
    """Claim the job, predict every item in one vectorised call, record result and SUCCESS."""
    # The model first: if the registry is down, no claim is taken and the redelivery is free
    # to run the job later.
    try:
        model = models.production()
    except ServiceUnavailable as error:
        logger.warning("↻ job %s retry: %s", job_id, error.message, extra={"job_id": job_id})
        return Outcome.RETRY
    claim = store.claim(job_id, owner=owner, lease_seconds=lease_seconds)
    if isinstance(claim, ClaimRefused):
        if claim is ClaimRefused.LEASED:
            # Someone holds a live lease. Ack only once it ends: if that worker dies, this
            # delivery is what lets the job run again after its lease expires.
            logger.info("· job %s leased by another worker", job_id, extra={"job_id": job_id})
            return Outcome.RETRY
        logger.info("· job %s skipped: %s", job_id, claim.value, extra={"job_id": job_id})
        return Outcome.SKIPPED
    logger.info(
        "→ job %s started: %d items, attempt %d",
        job_id,
        len(claim.inputs),
        claim.attempts,
        extra={"job_id": job_id},
    )
    started = time.perf_counter()
    try:
        matrix = model.schema.rows_to_matrix(claim.inputs)
    except ValidationFailed as error:
        # The items were valid when submitted, so the production model changed its inputs since:
        # running again cannot help.
        store.fail(job_id, epoch=claim.epoch, error={"code": error.code, "message": error.message})
        logger.warning("! job %s failed: %s", job_id, error.message, extra={"job_id": job_id})
        return Outcome.FAILED
    predictions = model.predict(matrix)
    result = [{"prediction": value} for value in predictions]
    written = store.complete(
        job_id,
        epoch=claim.epoch,
        result=result,
        model={"name": model.name, "version": model.version},
    )
    if not written:
        # Another worker took over after our lease ran out; its outcome stands.
        logger.warning("job %s: result not written, lease lost", job_id, extra={"job_id": job_id})
        return Outcome.SKIPPED
    logger.info(
        "← job %s done: %d items in %.3fs by %s/%s",
        job_id,
        len(result),
        time.perf_counter() - started,
        model.name,
        model.version,
        extra={"job_id": job_id},
    )
    return Outcome.DONE


class Worker:
    """Streams job messages from the jobs subscription into `handle_job`, a few at a time."""

    def __init__(
        self,
        subscriber: pubsub_v1.SubscriberClient,
        store: JobStore,
        models: ModelRegistry,
        *,
        subscription_path: str,
        max_messages: int,
        lease_seconds: int,
        name: str | None = None,
    ) -> None:
        self.subscriber = subscriber
        self.store = store
        self.models = models
        self.subscription_path = subscription_path
        self.max_messages = max_messages
        self.lease_seconds = lease_seconds
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._last_heartbeat = -float(HEARTBEAT_SECONDS)

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        import redis
        from google.cloud import pubsub_v1
        from mlflow import MlflowClient

        from nimbus.jobs import JobStore
        from nimbus.registry import ModelRegistry

        connection = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=5
        )
        registry = ModelRegistry(
            MlflowClient(tracking_uri=settings.tracking_uri),
            settings.model_uri,
            cache_dir=settings.cache_path(),
        )
        return cls(
            pubsub_v1.SubscriberClient(),
            JobStore(connection),
            registry,
            subscription_path=settings.subscription_path,
            max_messages=settings.worker_max_messages,
            lease_seconds=settings.lease_seconds,
        )

    def on_message(self, message: Any) -> None:
        """Pub/Sub callback: ack once Redis holds the outcome, nack to be redelivered later."""
        try:
            job_id = decode_job_message(message.data)
        except ValueError as exc:
            logger.error("dropping message %s: %s", message.message_id, exc)
            message.ack()
            return
        try:
            outcome = handle_job(
                job_id, self.store, self.models, owner=self.name, lease_seconds=self.lease_seconds
            )
        except NimbusError as error:
            logger.warning("↻ job %s retry: %s", job_id, error.message, extra={"job_id": job_id})
            outcome = Outcome.RETRY
        except Exception:
            # Redis down mid-job, a model that raises: the lease lets a later delivery retry.
            logger.exception("↻ job %s retry after an error", job_id, extra={"job_id": job_id})
            outcome = Outcome.RETRY
        if outcome is Outcome.RETRY:
            message.nack()
        else:
            message.ack()

    def run(self) -> None:
        """Pull until `stop()` (or SIGTERM through the entry point); finish in-flight jobs first."""
        from google.cloud import pubsub_v1

        # Load the model before the first job arrives; if the registry is down, jobs wait for it.
        try:
            model = self.models.production()
            logger.info("worker %s serving %s/%s", self.name, model.name, model.version)
        except NimbusError as error:
            logger.warning("model not loaded yet: %s", error.message)
        flow_control = pubsub_v1.types.FlowControl(max_messages=self.max_messages)
        scheduler = pubsub_v1.subscriber.scheduler.ThreadScheduler(
            futures.ThreadPoolExecutor(
                max_workers=self.max_messages, thread_name_prefix="nimbus-job"
            )
        )
        streaming_pull = self.subscriber.subscribe(
            self.subscription_path,
            callback=self.on_message,
            flow_control=flow_control,
            scheduler=scheduler,
            await_callbacks_on_shutdown=True,
        )
        logger.info(
            "worker %s listening on %s (up to %d jobs at once)",
            self.name,
            self.subscription_path,
            self.max_messages,
        )
        try:
            while not self._stop.wait(0.5):
                self._heartbeat()
                if streaming_pull.done():
                    # The stream ended on its own (e.g. the subscription vanished): surface why.
                    streaming_pull.result()
                    return
        finally:
            streaming_pull.cancel()
            with contextlib.suppress(futures.CancelledError, futures.TimeoutError):
                streaming_pull.result(timeout=60)
            logger.info("worker %s stopped", self.name)

    def stop(self) -> None:
        self._stop.set()

    def _heartbeat(self) -> None:
        """Tell Redis, every few seconds, that this worker lives and which model it serves."""
        now = time.monotonic()
        if now - self._last_heartbeat < HEARTBEAT_SECONDS:
            return
        self._last_heartbeat = now
        current = self.models.current()
        model = None if current is None else {"name": current.name, "version": current.version}
        try:
            self.store.record_worker(
                self.name, {"model": model, "at": time.time()}, ttl=3 * HEARTBEAT_SECONDS
            )
        except Exception as exc:  # a heartbeat never stops the worker
            logger.warning("heartbeat not recorded: %s", exc)
