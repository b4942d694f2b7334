"""The batch worker: a Pub/Sub pull subscriber that runs jobs recorded in Redis.

`handle_job` is the whole life of one job and knows nothing of Pub/Sub; `Worker` feeds it from
a streaming pull and acks a message only once Redis holds the job's outcome (or once Redis says
another worker is responsible for it). While Redis is unreachable, a worker holds the messages
it has and waits for Redis rather than nack them: an outage costs no delivery attempt.
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
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis

from nimbus.bus import decode_job_message
from nimbus.errors import NimbusError, ServiceUnavailable
from nimbus.jobs import Claim, ClaimRefused, JobStatus
from nimbus.storage import open_result_writer, read_items, result_uri
from vm_worker.chunks import chunks, predict_chunk
from vm_worker.events import JobLog, WorkerMetrics
from vm_worker.reconciler import reconcile, record_dead_letter

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from google.cloud import pubsub_v1
    from google.cloud.storage import Client as StorageClient

    from nimbus.bus import JobBus
    from nimbus.config import Settings
    from nimbus.jobs import JobStore
    from nimbus.registry import LoadedModel, ModelRegistry

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5

# What the redis client raises when the server is gone, restarting or still loading its data.
STORE_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)

# Waits between tries while Redis is unreachable, and before re-opening a pull that ended.
STORE_WAIT_SECONDS = (0.5, 5.0)
RESUBSCRIBE_SECONDS = (1.0, 30.0)


class Outcome(enum.StrEnum):
    """What became of one delivery; every outcome but RETRY is acked."""

    DONE = "done"  # this worker wrote the result
    FAILED = "failed"  # the job can never succeed; FAILURE recorded
    SKIPPED = "skipped"  # unknown, finished, or another worker holds it: nothing to do here
    RETRY = "retry"  # the attempt failed or the model is unavailable: redeliver later


class StoreDown(Exception):
    """Redis went away during an attempt, and the claim could not be given back: once Redis
    answers again, release `claim` (recording `error`, the attempt's own failure, if any)."""

    def __init__(self, claim: Claim, error: dict[str, Any] | None) -> None:
        super().__init__(f"redis unreachable while job {claim.job_id} was held")
        self.claim = claim
        self.error = error


def handle_job(
    job_id: str,
    store: JobStore,
    models: ModelRegistry,
    *,
    owner: str,
    lease_seconds: int,
    chunk_rows: int = 10_000,
    storage: StorageClient | None = None,
    log: JobLog | None = None,
    metrics: WorkerMetrics | None = None,
) -> Outcome:
    """Claim the job, predict its items chunk by chunk with one model version, and record
    the result and SUCCESS in one step. A failed attempt gives the job back and raises.

    A large job's items are streamed from GCS and its predictions streamed back (`storage`).
    Each event is a line of `log` (the job's trace on it) and a move of `metrics`.
    """
    log = log or JobLog(job_id)
    # The model first: if the registry is down, no claim is taken and the redelivery is free
    # to run the job later. This one model does the whole job: a batch never mixes versions.
    try:
        model = models.production()
    except ServiceUnavailable as error:
        log.event(logging.WARNING, "retry", "↻ job %s retry: %s", job_id, error.message)
        return Outcome.RETRY
    claim = store.claim(
        job_id, owner=owner, lease_seconds=lease_seconds, model_version=model.version
    )
    if isinstance(claim, ClaimRefused):
        if claim is ClaimRefused.LEASED:
            # A duplicate: another worker holds a live lease. Acked, not nacked: nacking would
            # spend the delivery attempts of a job that is running fine. Its outcome is the
            # lease holder's; if that worker dies, the reconciler publishes the job again
            # once the lease runs out.
            log.event(logging.INFO, "skipped", "· job %s skipped: leased by another worker", job_id)
            return Outcome.SKIPPED
        log.event(logging.INFO, "skipped", "· job %s skipped: %s", job_id, claim.value)
        return Outcome.SKIPPED
    if metrics is not None:
        metrics.claimed(claim)
    run = _Run(claim, store, model, owner, lease_seconds, chunk_rows, log, metrics)
    try:
        if claim.input_uri is not None:
            if storage is None:
                raise RuntimeError("this worker has no Cloud Storage client for large jobs")
            return _run_from_storage(run, storage)
        return _run_claimed(run)
    except Exception as error:
        # Redis going away is not the job's failure: no last_error for that.
        failure = (
            None
            if isinstance(error, STORE_DOWN)
            else {"code": "attempt_failed", "message": f"{type(error).__name__}: {error}"[:500]}
        )
        try:
            store.release(job_id, owner=owner, epoch=claim.epoch, error=failure)
        except STORE_DOWN:
            raise StoreDown(claim, failure) from error
        raise


@dataclass
class _Run:
    """One attempt at a claimed job, and what it needs."""

    claim: Claim
    store: JobStore
    model: LoadedModel
    owner: str
    lease_seconds: int
    chunk_rows: int
    log: JobLog
    metrics: WorkerMetrics | None
    started: float = field(default_factory=time.perf_counter)

    @property
    def job_id(self) -> str:
        return self.claim.job_id

    def begin(self, what: str) -> None:
        """The claimed (or reprocessing) event: the model is set to work on the job."""
        claim, model = self.claim, self.model
        self.log.event(
            logging.INFO,
            "reprocessing" if claim.reprocess else "claimed",
            "→ job %s %s: %s, attempt %d, %s/%s",
            claim.job_id,
            "reprocessing" if claim.reprocess else "started",
            what,
            claim.attempts,
            model.name,
            model.version,
        )

    def chunk_done(self, done: int, answered: int, rejected: int, total: int | None) -> bool:
        """Record a chunk: renew the lease, show progress; False if the job is no longer ours
        (revoked, or taken over after our lease ran out): stop working on it then."""
        if self.metrics is not None:
            self.metrics.predicted(answered, rejected)
        held = self.store.extend_lease(
            self.job_id,
            owner=self.owner,
            epoch=self.claim.epoch,
            lease_seconds=self.lease_seconds,
            done=done,
        )
        if held:
            self.log.event(
                logging.DEBUG, "progress", "· job %s progress: %d of %s", self.job_id, done, total
            )
            return True
        job = self.store.fetch(self.job_id, with_result=False)
        revoked = job is not None and job.status is JobStatus.REVOKED
        self.log.event(
            logging.WARNING,
            "revoked" if revoked else "lost",
            "■ job %s stopped after %d items: %s",
            self.job_id,
            done,
            "revoked" if revoked else "taken over by another worker",
        )
        if revoked:
            self._finished(JobStatus.REVOKED)
        return False

    def fail_every_item_rejected(self, first_error: str) -> Outcome:
        self.store.fail(
            self.job_id,
            epoch=self.claim.epoch,
            error={
                "code": "all_items_failed",
                "message": f"The model rejected every item; the first: {first_error}",
            },
        )
        self.log.event(
            logging.WARNING, "failed", "! job %s failed: every item rejected", self.job_id
        )
        self._finished(JobStatus.FAILURE)
        return Outcome.FAILED

    def lease_lost(self) -> Outcome:
        # Another worker took over after our lease ran out; its outcome stands.
        self.log.event(
            logging.WARNING, "lost", "job %s: result not written, lease lost", self.job_id
        )
        return Outcome.SKIPPED

    def succeeded(self, items: int, rejected: int, where: str) -> Outcome:
        self.log.event(
            logging.INFO,
            "reprocessed" if self.claim.reprocess else "succeeded",
            "← job %s done: %d items (%d rejected)%s in %.3fs by %s/%s",
            self.job_id,
            items,
            rejected,
            where,
            time.perf_counter() - self.started,
            self.model.name,
            self.model.version,
        )
        self._finished(JobStatus.SUCCESS)
        return Outcome.DONE

    def _finished(self, state: JobStatus) -> None:
        if self.metrics is not None:
            self.metrics.finished(state.value, time.perf_counter() - self.started)


def _run_claimed(run: _Run) -> Outcome:
    claim, model = run.claim, run.model
    job_id, items = claim.job_id, claim.inputs
    if not isinstance(items, list):
        raise TypeError(f"job {job_id} inputs are {type(items).__name__}, not a list of items")
    run.begin(f"{len(items)} items")
    result: list[dict[str, Any]] = []
    item_errors: list[dict[str, Any]] = []
    for offset, chunk in chunks(items, run.chunk_rows):
        done = predict_chunk(model, chunk, offset=offset)
        result.extend(done.answers)
        item_errors.extend(done.errors)
        # The lease grows with every chunk, and progress shows; a revoked job stops here.
        answered = len(done.answers) - len(done.errors)
        if not run.chunk_done(len(result), answered, len(done.errors), len(items)):
            return Outcome.SKIPPED
    model_body = {"name": model.name, "version": model.version}
    if items and len(item_errors) == len(items):
        return run.fail_every_item_rejected(item_errors[0]["message"])
    if not run.store.complete(
        job_id, epoch=claim.epoch, result=result, model=model_body, item_errors=item_errors
    ):
        return run.lease_lost()
    return run.succeeded(len(result), len(item_errors), "")


def _run_from_storage(run: _Run, storage: StorageClient) -> Outcome:
    """A large job: items streamed from input_uri, one JSON line per item to the result object.

    Memory holds one chunk at a time. The result object appears only when the upload is
    finalised, after the last chunk: a stopped or failed attempt leaves none behind.
    """
    claim, model = run.claim, run.model
    job_id = claim.job_id
    assert claim.input_uri is not None and claim.output_uri is not None
    target = result_uri(claim.output_uri, job_id)
    run.begin(f"items from {claim.input_uri}")
    done = 0
    item_errors: list[dict[str, Any]] = []
    writer = open_result_writer(storage, target)
    try:
        for chunk in read_items(storage, claim.input_uri, chunk_rows=run.chunk_rows):
            answers = predict_chunk(model, chunk, offset=done)
            writer.write(
                b"".join(
                    orjson.dumps({"index": done + i, **answer}) + b"\n"
                    for i, answer in enumerate(answers.answers)
                )
            )
            item_errors.extend(answers.errors)
            done += len(chunk)
            answered = len(answers.answers) - len(answers.errors)
            if not run.chunk_done(done, answered, len(answers.errors), None):
                _abandon(writer)
                return Outcome.SKIPPED
    except BaseException:
        _abandon(writer)
        raise
    if done and len(item_errors) == done:
        _abandon(writer)
        return run.fail_every_item_rejected(item_errors[0]["message"])
    writer.close()
    written = run.store.complete(
        job_id,
        epoch=claim.epoch,
        result=[],
        model={"name": model.name, "version": model.version},
        item_errors=item_errors,
        items=done,
        result_uri=target,
    )
    if not written:
        return run.lease_lost()
    return run.succeeded(done, len(item_errors), f" to {target}")


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
        topology: Callable[[], None] | None = None,
        project: str = "",
        metrics: WorkerMetrics | None = None,
        metrics_port: int | None = None,
    ) -> None:
        """`max_messages` jobs run at once (flow control); a claim lasts `lease_seconds` and
        is renewed every `chunk_rows` items; jobs PENDING over `reconcile_after` seconds are
        published again. `topology` re-creates missing topics and subscriptions (after an
        emulator restart) before a pull that ended is opened again. Job log lines name their
        trace in `project`; `metrics` are served on `metrics_port` while the worker runs."""
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
        self.topology = topology
        self.project = project
        self.metrics = metrics or WorkerMetrics()
        self.metrics_port = metrics_port
        self.name = name or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self._stop = threading.Event()
        self._last_heartbeat = -float(HEARTBEAT_SECONDS)
        self._last_reconcile = time.monotonic()

    @classmethod
    def from_settings(cls, settings: Settings) -> Worker:
        import redis
        from google.cloud import pubsub_v1, storage
        from mlflow import MlflowClient

        from nimbus.bus import JobBus, ensure_topology, new_publisher
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
            topology=lambda: ensure_topology(settings),
            project=settings.project,
            metrics_port=settings.worker_metrics_port,
        )

    def on_message(self, message: Any) -> None:
        """Pub/Sub callback: ack once Redis holds the outcome, nack to be redelivered later
        (after the subscription's backoff; the last failed attempt is dead-lettered)."""
        job_id = _job_id_or_ack(message)
        if job_id is None:
            return
        log = JobLog.for_message(job_id, message.attributes or {}, self.project)
        with self.metrics.in_flight.track_inprogress():
            outcome = self._process(job_id, log)
        if outcome is Outcome.RETRY:
            message.nack()
        else:
            message.ack()

    def _process(self, job_id: str, log: JobLog) -> Outcome:
        """`handle_job`, tried again in place while Redis is unreachable: the message stays
        held (the client library extends its ack deadline), so an outage spends no delivery
        attempt and the flow control stops the pull meanwhile."""
        held: StoreDown | None = None
        while True:
            try:
                if held is not None:
                    # Give back the claim the outage left us holding, then go on as usual.
                    self.store.release(
                        job_id, owner=self.name, epoch=held.claim.epoch, error=held.error
                    )
                    if held.error is not None:
                        return Outcome.RETRY  # the attempt had failed on its own
                    held = None
                return handle_job(
                    job_id,
                    self.store,
                    self.models,
                    owner=self.name,
                    lease_seconds=self.lease_seconds,
                    chunk_rows=self.chunk_rows,
                    storage=self.storage,
                    log=log,
                    metrics=self.metrics,
                )
            except StoreDown as down:
                held = down
                if down.error is not None:
                    log.event(
                        logging.WARNING,
                        "retry",
                        "↻ job %s retry after an error: %s",
                        job_id,
                        down.error["message"],
                    )
            except STORE_DOWN:
                pass
            except NimbusError as error:
                log.event(logging.WARNING, "retry", "↻ job %s retry: %s", job_id, error.message)
                return Outcome.RETRY
            except Exception:
                # A model that raises: the job was given back and the redelivery tries again.
                log.exception("retry", "↻ job %s retry after an error", job_id)
                return Outcome.RETRY
            if not self._await_store(job_id, log):
                return Outcome.RETRY  # stopping: the message goes back to Pub/Sub

    def _await_store(self, job_id: str, log: JobLog) -> bool:
        """Wait, with backoff, until Redis answers; False if the worker stops first."""
        log.event(
            logging.WARNING,
            "waiting",
            "redis unreachable: job %s waits for it, message held",
            job_id,
        )
        delay, longest = STORE_WAIT_SECONDS
        while not self._stop.wait(delay):
            try:
                if self.store.connection.ping():
                    return True
            except STORE_DOWN:
                pass
            delay = min(2 * delay, longest)
        return False

    def on_dead_letter(self, message: Any) -> None:
        """Dead-letter callback: the job becomes FAILURE with why, unless a live worker holds
        it; ack once Redis holds that. Redis down: wait for it, the message held."""
        job_id = _job_id_or_ack(message)
        if job_id is None:
            return
        log = JobLog.for_message(job_id, message.attributes or {}, self.project)
        # On the dead-letter subscription the count travels as an attribute.
        count = message.attributes.get("CloudPubSubDeadLetterSourceDeliveryCount")
        attempts = int(count) if count and count.isdigit() else None
        while True:
            try:
                if record_dead_letter(
                    self.store,
                    job_id,
                    delivery_attempts=attempts,
                    live_workers=set(self.store.workers()),
                    log=log,
                ):
                    self.metrics.finished(JobStatus.FAILURE.value)
            except STORE_DOWN:
                if self._await_store(job_id, log):
                    continue
            except Exception:
                logger.exception("dead letter for job %s not recorded", job_id)
            else:
                message.ack()
                return
            message.nack()
            return

    def run(self) -> None:
        """Pull until `stop()` (or SIGTERM through the entry point); finish in-flight jobs first."""
        server = self._serve_metrics()
        # Load the model before the first job arrives; if the registry is down, jobs wait for it.
        try:
            model = self.models.production()
            logger.info("worker %s serving %s/%s", self.name, model.name, model.version)
        except NimbusError as error:
            logger.warning("model not loaded yet: %s", error.message)
        pulls: dict[str, futures.Future[Any] | None] = {
            "jobs": self._pull_jobs(),
            "dead letters": self._pull_dead_letters(),
        }
        opened = dict.fromkeys(pulls, time.monotonic())
        reopen = dict.fromkeys(pulls, 0.0)
        waits = dict.fromkeys(pulls, RESUBSCRIBE_SECONDS[0])
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
                for name, pull in pulls.items():
                    if pull is not None and pull.done():
                        # The stream ended on its own: the subscription vanished (an emulator
                        # restart loses it), or a permanent error. Say why, then open it again.
                        logger.error("pull of %s ended: %r; reopening it", name, pull.exception())
                        if time.monotonic() - opened[name] > RESUBSCRIBE_SECONDS[1]:
                            waits[name] = RESUBSCRIBE_SECONDS[0]  # it had been working
                        pulls[name] = None
                        reopen[name] = time.monotonic() + waits[name]
                        waits[name] = min(2 * waits[name], RESUBSCRIBE_SECONDS[1])
                    elif pull is None and time.monotonic() >= reopen[name]:
                        pulls[name] = self._reopen(name)
                        opened[name] = time.monotonic()
                        if pulls[name] is None:
                            reopen[name] = time.monotonic() + waits[name]
                            waits[name] = min(2 * waits[name], RESUBSCRIBE_SECONDS[1])
        finally:
            live = [pull for pull in pulls.values() if pull is not None]
            for pull in live:
                pull.cancel()
            for pull in live:
                with contextlib.suppress(futures.CancelledError, futures.TimeoutError):
                    pull.result(timeout=60)
            if server is not None:
                server.shutdown()
                server.server_close()
            logger.info("worker %s stopped", self.name)

    def _serve_metrics(self) -> WSGIServer | None:
        """Start /metrics; a port already taken costs the metrics, not the worker."""
        if self.metrics_port is None:
            return None
        try:
            server = self.metrics.serve(self.metrics_port)
        except OSError as error:
            logger.error("metrics not served on port %d: %s", self.metrics_port, error)
            return None
        logger.info("worker %s: metrics on :%d/metrics", self.name, self.metrics_port)
        return server

    def _pull_jobs(self) -> futures.Future[Any]:
        from google.cloud import pubsub_v1

        # A scheduler of its own each time: closing a pull shuts its scheduler down.
        scheduler = pubsub_v1.subscriber.scheduler.ThreadScheduler(
            futures.ThreadPoolExecutor(
                max_workers=self.max_messages, thread_name_prefix="nimbus-job"
            )
        )
        return self.subscriber.subscribe(
            self.subscription_path,
            callback=self.on_message,
            flow_control=pubsub_v1.types.FlowControl(max_messages=self.max_messages),
            scheduler=scheduler,
            await_callbacks_on_shutdown=True,
        )

    def _pull_dead_letters(self) -> futures.Future[Any]:
        from google.cloud import pubsub_v1

        return self.subscriber.subscribe(
            self.dead_letter_subscription_path,
            callback=self.on_dead_letter,
            flow_control=pubsub_v1.types.FlowControl(max_messages=1),
            await_callbacks_on_shutdown=True,
        )

    def _reopen(self, name: str) -> futures.Future[Any] | None:
        """Re-create missing topics and subscriptions, then pull `name` again; None if that
        failed (Pub/Sub still down): the caller tries again later."""
        try:
            if self.topology is not None:
                self.topology()
            pull = self._pull_jobs() if name == "jobs" else self._pull_dead_letters()
        except Exception as exc:
            logger.warning("pull of %s not reopened yet: %s", name, exc)
            return None
        logger.info("pull of %s reopened", name)
        return pull

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
        if current is not None:
            self.metrics.serving(current.name, current.version)
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
