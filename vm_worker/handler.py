"""One job, start to end: `handle_job` claims it, runs the model on its items chunk by chunk
and records the outcome in Redis. It knows nothing of Pub/Sub (`vm_worker.worker` feeds it).
"""

from __future__ import annotations

import contextlib
import enum
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson
import redis

from nimbus.errors import ServiceUnavailable
from nimbus.jobs import Claim, ClaimRefused, JobStatus
from nimbus.storage import open_result_writer, read_items, result_uri
from vm_worker.chunks import chunks, predict_chunk
from vm_worker.events import JobLog, WorkerMetrics

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

    from nimbus.jobs import JobStore
    from nimbus.registry import LoadedModel, ModelRegistry

# What the redis client raises when the server is gone, restarting or still loading its data.
STORE_DOWN = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


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
