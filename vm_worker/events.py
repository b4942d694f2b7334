"""What a worker tells about its jobs: a JSON log line per job event, and Prometheus metrics.

Every job event is one log line (Cloud Logging's JSON, `nimbus.logs`) with `job_id`, `event`
and, when the job's message carried a trace context, `logging.googleapis.com/trace`, so the
lines of one job show up under the trace of the request that submitted it:

    claimed  reprocessing  progress (DEBUG)  succeeded  reprocessed  failed  revoked
    lost (its lease ran out and another worker took it)  retry  skipped  dead_lettered

`WorkerMetrics` counts the same events for Prometheus (`GET /metrics` on the worker's port).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from nimbus.tracing import TRACEPARENT_ATTRIBUTE, parse_traceparent, trace_field

if TYPE_CHECKING:
    from wsgiref.simple_server import WSGIServer

    from nimbus.jobs import Claim

JOB_LOGGER = logging.getLogger("vm_worker.worker")

# Seconds: a job of a few items takes milliseconds, a large one many minutes.
DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class JobLog:
    """Log lines about one job: each carries the job id, the event and the job's trace."""

    def __init__(
        self,
        job_id: str,
        trace: Mapping[str, str] | None = None,
        logger: logging.Logger = JOB_LOGGER,
    ) -> None:
        self.job_id = job_id
        self.trace = dict(trace or {})
        self.logger = logger

    @classmethod
    def for_message(cls, job_id: str, attributes: Mapping[str, str], project: str) -> JobLog:
        """The log of the job a Pub/Sub message carries, traced if the message says how."""
        trace_id = parse_traceparent(attributes.get(TRACEPARENT_ATTRIBUTE))
        return cls(job_id, trace_field(project, trace_id))

    def event(self, level: int, event: str, message: str, *args: Any) -> None:
        self.logger.log(level, message, *args, extra=self.fields(event))

    def exception(self, event: str, message: str, *args: Any) -> None:
        """An event with the traceback of the exception being handled."""
        self.logger.exception(message, *args, extra=self.fields(event))

    def fields(self, event: str) -> dict[str, Any]:
        return {"job_id": self.job_id, "event": event, **self.trace}


class WorkerMetrics:
    """The worker's Prometheus metrics, in a registry of its own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.jobs = Counter(
            "nimbus_worker_jobs",
            "Jobs this worker brought to a final state (a reprocessed job counts again).",
            ["state"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "nimbus_worker_job_duration_seconds",
            "From a job's claim to its final state, for jobs this worker finished.",
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.queue_lag = Histogram(
            "nimbus_worker_queue_lag_seconds",
            "From a job's creation to its first claim (Redis's clock).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.items = Counter(
            "nimbus_worker_items_predicted",
            "Items the model answered.",
            registry=self.registry,
        )
        self.items_rejected = Counter(
            "nimbus_worker_items_rejected",
            "Items the model rejected (each fails alone, with its error in the result).",
            registry=self.registry,
        )
        self.model = Gauge(
            "nimbus_worker_model_info",
            "The model version this worker serves: 1 for that name and version.",
            ["name", "version"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "nimbus_worker_jobs_in_flight",
            "Job messages this worker holds now (running, or waiting for Redis).",
            registry=self.registry,
        )
        self._serving: tuple[str, str] | None = None

    def finished(self, state: str, seconds: float | None = None) -> None:
        """A job reached `state` (SUCCESS, FAILURE or REVOKED) here, `seconds` after its claim."""
        self.jobs.labels(state=state).inc()
        if seconds is not None:
            self.duration.observe(seconds)

    def claimed(self, claim: Claim) -> None:
        """A job claimed: its first claim ends its time in the queue."""
        if claim.attempts == 1 and not claim.reprocess and claim.created_at and claim.claimed_at:
            self.queue_lag.observe(max(0.0, claim.claimed_at - claim.created_at))

    def predicted(self, answered: int, rejected: int) -> None:
        self.items.inc(answered)
        self.items_rejected.inc(rejected)

    def serving(self, name: str, version: str) -> None:
        """The production model is now this one: the gauge shows it alone."""
        if self._serving == (name, version):
            return
        if self._serving is not None:
            self.model.remove(*self._serving)
        self.model.labels(name=name, version=version).set(1)
        self._serving = (name, version)

    def serve(self, port: int, host: str = "0.0.0.0") -> WSGIServer:
        """Answer GET /metrics on `port` from a daemon thread; shut the server down to stop."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
