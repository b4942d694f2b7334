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

import orjson

from nimbus.bus import decode_job_message
from nimbus.errors import NimbusError, ServiceUnavailable
from nimbus.jobs import Claim, ClaimRefused
from nimbus.storage import open_result_writer, read_items, result_uri
from vm_worker.chunks import chunks, predict_chunk
from vm_worker.reconciler import reconcile, record_dead_letter

if TYPE_CHECKING:
    from google.cloud import pubsub_v1
    from google.cloud.storage import Client as StorageClient

    from nimbus.bus import JobBus
    from nimbus.config import Settings
    from nimbus.jobs import JobStore
    from nimbus.registry import LoadedModel, ModelRegistry

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
    chunk_rows: int = 10_000,
    storage: StorageClient | None = None,
) -> Outcome:
    """Claim the job, predict its items chunk by chunk with one model version, and record
    the result and SUCCESS in one step. A failed attempt gives the job back and raises.

    A large job's items are streamed from GCS and its predictions streamed back (`storage`).
    """
    # The model first: if the registry is down, no claim is taken and the redelivery is free
    # to run the job later. This one model does the whole job: a batch never mixes versions.
    try:
        model = models.production()
    except ServiceUnavailable as error:
        logger.warning("↻ job %s retry: %s", job_id, error.message, extra={"job_id": job_id})
        return Outcome.RETRY
    claim = store.claim(
        job_id, owner=owner, lease_seconds=lease_seconds, model_version=model.version
    )
    if isinstance(claim, ClaimRefused):
        if claim is ClaimRefused.LEASED:
            # Someone holds a live lease. Ack only once it ends: if that worker dies, this
            # delivery is what lets the job run again after its lease expires.
            logger.info("· job %s leased by another worker", job_id, extra={"job_id": job_id})
            return Outcome.RETRY
        logger.info("· job %s skipped: %s", job_id, claim.value, extra={"job_id": job_id})
        return Outcome.SKIPPED
    try:
        if claim.input_uri is not None:
            if storage is None:
                raise RuntimeError("this worker has no Cloud Storage client for large jobs")
            return _run_from_storage(claim, store, model, owner, lease_seconds, chunk_rows, storage)
        return _run_claimed(claim, store, model, owner, lease_seconds, chunk_rows)
    except Exception as error:
        store.release(
            job_id,
            owner=owner,
            epoch=claim.epoch,
            error={"code": "attempt_failed", "message": f"{type(error).__name__}: {error}"[:500]},
        )
        raise


def _run_claimed(
    claim: Claim,
    store: JobStore,
    model: LoadedModel,
    owner: str,
    lease_seconds: int,
    chunk_rows: int,
) -> Outcome:
    job_id, items = claim.job_id, claim.inputs
    if not isinstance(items, list):
        raise TypeError(f"job {job_id} inputs are {type(items).__name__}, not a list of items")
    logger.info(
        "→ job %s %s: %d items, attempt %d, %s/%s",
        job_id,
        "reprocessing" if claim.reprocess else "started",
        len(items),
        claim.attempts,
        model.name,
        model.version,
        extra={"job_id": job_id},
    )
    started = time.perf_counter()
    result: list[dict[str, Any]] = []
    item_errors: list[dict[str, Any]] = []
    for offset, chunk in chunks(items, chunk_rows):
        done = predict_chunk(model, chunk, offset=offset)
        result.extend(done.answers)
        item_errors.extend(done.errors)
        # The lease grows with every chunk, and progress shows; a revoked job stops here.
        if not store.extend_lease(
            job_id, owner=owner, epoch=claim.epoch, lease_seconds=lease_seconds, done=len(result)
        ):
            logger.warning(
                "■ job %s stopped after %d items: revoked or taken over",
                job_id,
                len(result),
                extra={"job_id": job_id},
            )
            return Outcome.SKIPPED
    model_body = {"name": model.name, "version": model.version}
    if items and len(item_errors) == len(items):
        store.fail(
            job_id,
            epoch=claim.epoch,
            error={
                "code": "all_items_failed",
                "message": f"The model rejected every item; the first: {item_errors[0]['message']}",
            },
        )
        logger.warning("! job %s failed: every item rejected", job_id, extra={"job_id": job_id})
        return Outcome.FAILED
    if not store.complete(
        job_id, epoch=claim.epoch, result=result, model=model_body, item_errors=item_errors
    ):
        # Another worker took over after our lease ran out; its outcome stands.
        logger.warning("job %s: result not written, lease lost", job_id, extra={"job_id": job_id})
        return Outcome.SKIPPED
    logger.info(
        "← job %s done: %d items (%d rejected) in %.3fs by %s/%s",
        job_id,
        len(result),
        len(item_errors),
        time.perf_counter() - started,
        model.name,
        model.version,
        extra={"job_id": job_id},
    )
    return Outcome.DONE


def _run_from_storage(
    claim: Claim,
    store: JobStore,
    model: LoadedModel,
    owner: str,
    lease_seconds: int,
    chunk_rows: int,
    storage: StorageClient,
) -> Outcome:
    """A large job: items streamed from input_uri, one JSON line per item to the result object.

    Memory holds one chunk at a time. The result object appears only when the upload is
    finalised, after the last chunk: a stopped or failed attempt leaves none behind.
    """
    job_id = claim.job_id
    assert claim.input_uri is not None and claim.output_uri is not None
    target = result_uri(claim.output_uri, job_id)
    logger.info(
        "→ job %s %s: items from %s, attempt %d, %s/%s",
        job_id,
        "reprocessing" if claim.reprocess else "started",
        claim.input_uri,
        claim.attempts,
        model.name,
        model.version,
        extra={"job_id": job_id},
    )
    started = time.perf_counter()
    done = 0
    item_errors: list[dict[str, Any]] = []
    writer = open_result_writer(storage, target)
    try:
        for chunk in read_items(storage, claim.input_uri, chunk_rows=chunk_rows):
            answers = predict_chunk(model, chunk, offset=done)
            writer.write(
                b"".join(
                    orjson.dumps({"index": done + i, **answer}) + b"\n"
                    for i, answer in enumerate(answers.answers)
                )
            )
            item_errors.extend(answers.errors)
            done += len(chunk)
            if not store.extend_lease(
                job_id, owner=owner, epoch=claim.epoch, lease_seconds=lease_seconds, done=done
            ):
                logger.warning(
                    "■ job %s stopped after %d items: revoked or taken over",
                    job_id,
                    done,
                    extra={"job_id": job_id},
                )
                return Outcome.SKIPPED
    except BaseException:
        _abandon(writer)
        raise
    if done and len(item_errors) == done:
        _abandon(writer)
        store.fail(
            job_id,
            epoch=claim.epoch,
            error={
                "code": "all_items_failed",
                "message": f"The model rejected every item; the first: {item_errors[0]['message']}",
            },
        )
        return Outcome.FAILED
    writer.close()
    written = store.complete(
        job_id,
        epoch=claim.epoch,
        result=[],
        model={"name": model.name, "version": model.version},
        item_errors=item_errors,
        items=done,
        result_uri=target,
    )
    if not written:
        logger.warning("job %s: result not written, lease lost", job_id, extra={"job_id": job_id})
        return Outcome.SKIPPED
    logger.info(
        "← job %s done: %d items (%d rejected) to %s in %.3fs",
        job_id,
        done,
        len(item_errors),
        target,
        time.perf_counter() - started,
        extra={"job_id": job_id},
    )
    return Outcome.DONE


def _abandon(writer: Any) -> None:
    """Cancel an unfinished upload: the result object must not appear half written."""
    with contextlib.suppress(Exception):
        writer.terminate()


class Worker:
    """Streams job messages into `handle_job`, a few at a time; also records dead-lettered
    jobs as FAILURE and, one worker at a time, republishes jobs whose message was lost."""

    def __init__(
        self,
        subscriber: pubsub_v1.SubscriberClient,
        store: JobStore,
        models: ModelRegistry,
        bus: JobBus,
        *,
        subscription_path: str,
        dead_letter_subscription_path: str,
        max_messages: int,
        lease_seconds: int,
        chunk_rows: int,
        reconcile_after: float,
        storage: StorageClient | None = None,
        name: str | None = None,
    ) -> None:
        """`max_messages` jobs run at once (flow control); a claim lasts `lease_seconds` and
        is renewed every `chunk_rows` items; jobs PENDING over `reconcile_after` seconds are
        published again."""
        self.subscriber = subscriber
        self.store = store
        self.models = models
        self.bus = bus
        self.subscription_path = subscription_path
        self.dead_letter_subscription_path = dead_letter_subscription_path
        self.max_messages = max_messages
        self.lease_seconds = lease_seconds
        self.chunk_rows = chunk_rows
        self.reconcile_after = reconcile_after
        self.storage = storage
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._last_heartbeat = -float(HEARTBEAT_SECONDS)
        self._last_reconcile = time.monotonic()

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        import redis
        from google.cloud import pubsub_v1, storage
        from mlflow import MlflowClient

        from nimbus.bus import JobBus, new_publisher
        from nimbus.jobs import JobStore
        from nimbus.registry import ModelRegistry

        connection = redis.Redis.from_url(
            settings.redis_url, socket_timeout=10, socket_connect_timeout=5
        )
        registry = ModelRegistry(
            MlflowClient(tracking_uri=settings.tracking_uri),
            settings.model_uri,
            cache_dir=settings.cache_path(),
            refresh_seconds=settings.model_refresh_seconds,
        )
        store = JobStore(connection, finished_ttl=settings.finished_ttl)
        policy = store.eviction_policy()
        if policy not in (None, "noeviction"):
            logger.warning(
                "redis maxmemory-policy is %s: Redis may evict unfinished jobs; set noeviction",
                policy,
            )
        return cls(
            pubsub_v1.SubscriberClient(),
            store,
            registry,
            JobBus(new_publisher(), settings.topic_path, timeout=settings.publish_timeout),
            subscription_path=settings.subscription_path,
            dead_letter_subscription_path=settings.dead_letter_subscription_path,
            max_messages=settings.worker_max_messages,
            lease_seconds=settings.lease_seconds,
            chunk_rows=settings.chunk_rows,
            reconcile_after=settings.reconcile_after,
            storage=storage.Client(),
        )

    def on_message(self, message: Any) -> None:
        """Pub/Sub callback: ack once Redis holds the outcome, nack to be redelivered later
        (after the subscription's backoff; the last failed attempt is dead-lettered)."""
        job_id = _job_id_or_ack(message)
        if job_id is None:
            return
        try:
            outcome = handle_job(
                job_id,
                self.store,
                self.models,
                owner=self.name,
                lease_seconds=self.lease_seconds,
                chunk_rows=self.chunk_rows,
                storage=self.storage,
            )
        except NimbusError as error:
            logger.warning("↻ job %s retry: %s", job_id, error.message, extra={"job_id": job_id})
            outcome = Outcome.RETRY
        except Exception:
            # A model that raises, Redis down mid-job: the job was given back (or its lease
            # runs out) and the redelivery tries again.
            logger.exception("↻ job %s retry after an error", job_id, extra={"job_id": job_id})
            outcome = Outcome.RETRY
        if outcome is Outcome.RETRY:
            message.nack()
        else:
            message.ack()

    def on_dead_letter(self, message: Any) -> None:
        """Dead-letter callback: the job becomes FAILURE with why; ack once Redis holds it."""
        job_id = _job_id_or_ack(message)
        if job_id is None:
            return
        try:
            # On the dead-letter subscription the count travels as an attribute.
            count = message.attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")
            attempts = int(count) if count and count.isdigit() else None
            record_dead_letter(self.store, job_id, delivery_attempts=attempts)
        except Exception:
            logger.exception("dead letter for job %s not recorded", job_id)
            message.nack()
            return
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
        scheduler = pubsub_v1.subscriber.scheduler.ThreadScheduler(
            futures.ThreadPoolExecutor(
                max_workers=self.max_messages, thread_name_prefix="nimbus-job"
            )
        )
        pulls = [
            self.subscriber.subscribe(
                self.subscription_path,
                callback=self.on_message,
                flow_control=pubsub_v1.types.FlowControl(max_messages=self.max_messages),
                scheduler=scheduler,
                await_callbacks_on_shutdown=True,
            ),
            self.subscriber.subscribe(
                self.dead_letter_subscription_path,
                callback=self.on_dead_letter,
                flow_control=pubsub_v1.types.FlowControl(max_messages=1),
                await_callbacks_on_shutdown=True,
            ),
        ]
        logger.info(
            "worker %s listening on %s (up to %d jobs at once)",
            self.name,
            self.subscription_path,
            self.max_messages,
        )
        try:
            while not self._stop.wait(0.5):
                self._heartbeat()
                self._reconcile()
                for pull in pulls:
                    if pull.done():
                        # The stream ended on its own (e.g. the subscription vanished): say why.
                        pull.result()
                        return
        finally:
            for pull in pulls:
                pull.cancel()
            for pull in pulls:
                with contextlib.suppress(futures.CancelledError, futures.TimeoutError):
                    pull.result(timeout=60)
            logger.info("worker %s stopped", self.name)

    def _reconcile(self) -> None:
        """Every quarter of `reconcile_after`, one worker of all (a Redis lock) reconciles."""
        interval = max(1.0, self.reconcile_after / 4)
        now = time.monotonic()
        if now - self._last_reconcile < interval:
            return
        self._last_reconcile = now
        try:
            lock = f"{self.store.prefix}reconciler"
            if self.store.connection.set(lock, self.name, nx=True, ex=max(1, int(interval))):
                reconcile(self.store, self.bus, older_than=self.reconcile_after)
        except Exception as exc:  # the reconciler never stops the worker
            logger.warning("reconcile skipped: %s", exc)

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


def _job_id_or_ack(message: Any) -> str | None:
    """The job id a message carries; a message that is not a job is logged and acked away."""
    try:
        return decode_job_message(message.data)
    except ValueError as exc:
        logger.error("dropping message %s: %s", message.message_id, exc)
        message.ack()
        return None
