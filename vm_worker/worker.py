"""The batch worker: a Pub/Sub pull subscriber that runs jobs recorded in Redis.

`handle_job` (`vm_worker.handler`) is the whole life of one job and knows nothing of Pub/Sub;
`Worker` feeds it from a streaming pull and acks a message only once Redis holds the job's
outcome (or once Redis says another worker is responsible for it). While Redis is unreachable,
a worker holds the messages it has and waits for Redis rather than nack them: an outage costs
no delivery attempt.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent import futures
from typing import TYPE_CHECKING, Any

import redis

from nimbus.bus import decode_job_message
from nimbus.errors import NimbusError
from nimbus.jobs import JobStatus
from vm_worker.events import JobLog, WorkerMetrics
from vm_worker.handler import STORE_DOWN, Outcome, StoreDown, handle_job
from vm_worker.reconciler import reconcile, record_dead_letter

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from google.cloud import pubsub_v1
    from google.cloud.storage import Client as StorageClient

    from nimbus.bus import JobBus
    from nimbus.config import Settings
    from nimbus.jobs import JobStore
    from nimbus.registry import ModelRegistry

logger = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 5


# Waits between tries while Redis is unreachable, and before re-opening a pull that ended.
STORE_WAIT_SECONDS = (0.5, 5.0)
RESUBSCRIBE_SECONDS = (1.0, 10.0)


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
        if self.topology is not None:
            # Locally an emulator restart loses every topic and subscription; in the cloud
            # deploy/pubsub.sh made them and this account may not create any: say so, pull.
            try:
                self.topology()
            except Exception as exc:
                logger.warning("topics and subscriptions not checked: %s", exc)
        try:
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
