"""The job store as a state machine: Hypothesis drives random sequences of create, claim,
extend, release, complete, fail, cancel and reprocessing claims by several workers against a
real redis-server, and checks every record against a model after each step.

Time is the one thing the model moves by hand: `lease_runs_out` sets a job's lease deadline in
the past, as if the holder had stalled that long, so takeovers need no sleeping.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import redis
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from nimbus.jobs import Claim, ClaimRefused, JobStatus, JobStore

OWNERS = ("worker-a", "worker-b", "worker-c")
VERSIONS = ("1", "2")
TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}
ITEMS = [{"x": 1.0}, {"x": 2.0}]
MAX_JOBS = 3
LIVE_LEASE = 3600.0  # seconds: never lapses during a run unless `lease_runs_out` says so

owners = st.sampled_from(OWNERS)
# Who calls extend or release: mostly the job's holder, sometimes another worker.
callers = st.sampled_from(("holder",) * 5 + OWNERS)
# The epoch a caller presents, relative to the job's current one: stale, current or ahead.
epoch_offsets = st.sampled_from((-1, 0, 0, 0, 0, 1))


@dataclass
class ModelJob:
    """What the store should hold for one job."""

    status: str = "PENDING"
    epoch: int = 0
    attempts: int = 0
    owner: str | None = None
    leased: bool = False  # a lease deadline is recorded
    lease_live: bool = False  # ... and it has not run out
    reprocessing: bool = False
    result: list[dict[str, Any]] | None = None
    result_version: str | None = None
    error: dict[str, Any] | None = None
    revision: int = 0
    finished: bool = False  # finished_at is set
    history: list[str] = field(default_factory=list)

    def held_by(self, owner: str, epoch: int) -> bool:
        """What the scripts call `held`: this owner and epoch, STARTED or re-running."""
        return (
            self.owner == owner
            and self.epoch == epoch
            and (self.status == "STARTED" or (self.status == "SUCCESS" and self.reprocessing))
        )

    def finishable_with(self, epoch: int) -> bool:
        """complete/fail with an epoch succeed only for the current claim of a running job."""
        return self.epoch == epoch and (self.status == "STARTED" or self.reprocessing)


class JobStoreMachine(RuleBasedStateMachine):
    """Random moves on a few jobs; the model says what each move must do."""

    jobs = Bundle("jobs")

    def __init__(self, connection: redis.Redis) -> None:
        super().__init__()
        self.connection = connection
        self.store = JobStore(connection, finished_ttl=3600)
        self.model: dict[str, ModelJob] = {}
        self.finished_at: dict[str, bytes] = {}

    @initialize()
    def empty_database(self) -> None:
        self.connection.flushdb()

    # -- moves --------------------------------------------------------------------------------

    # A few jobs, so each one lives through long sequences of moves.
    @precondition(lambda self: len(self.model) < MAX_JOBS)
    @rule(target=jobs)
    def create(self) -> str:
        job = self.store.create(ITEMS)
        self.model[job.id] = ModelJob()
        return job.id

    @rule(job_id=jobs, owner=owners, served=st.sampled_from((None, *VERSIONS)))
    def claim(self, job_id: str, owner: str, served: str | None) -> None:
        job = self.model[job_id]
        before = self._record(job_id)
        outcome = self.store.claim(
            job_id, owner=owner, lease_seconds=LIVE_LEASE, model_version=served
        )
        expected = self._expected_claim(job, served)
        if expected is not None:
            assert outcome is expected, (outcome, expected, job)
            assert self._record(job_id) == before, "a refused claim changed the record"
            return
        assert isinstance(outcome, Claim), (outcome, job)
        assert outcome.epoch == job.epoch + 1 and outcome.attempts == job.attempts + 1
        assert outcome.inputs == ITEMS
        assert outcome.reprocess == (job.status == "SUCCESS")
        job.epoch, job.attempts, job.owner = outcome.epoch, outcome.attempts, owner
        job.leased = job.lease_live = True
        if job.status == "SUCCESS":
            job.reprocessing = True
        else:
            job.status = "STARTED"
        job.history.append(f"claim by {owner} serving {served}")

    @rule(job_id=jobs, caller=callers, offset=epoch_offsets)
    def extend(self, job_id: str, caller: str, offset: int) -> None:
        job = self.model[job_id]
        owner = (job.owner or OWNERS[0]) if caller == "holder" else caller
        epoch = job.epoch + offset
        before = self._record(job_id)
        extended = self.store.extend_lease(
            job_id, owner=owner, epoch=epoch, lease_seconds=LIVE_LEASE, done=1
        )
        assert extended == job.held_by(owner, epoch), (extended, owner, epoch, job)
        if not extended:
            assert self._record(job_id) == before, "a refused extend changed the record"
            return
        job.leased = job.lease_live = True
        job.history.append(f"extend by {owner}")

    @rule(job_id=jobs, caller=callers, offset=epoch_offsets)
    def release(self, job_id: str, caller: str, offset: int) -> None:
        job = self.model[job_id]
        owner = (job.owner or OWNERS[0]) if caller == "holder" else caller
        epoch = job.epoch + offset
        before = self._record(job_id)
        released = self.store.release(
            job_id, owner=owner, epoch=epoch, error={"code": "attempt_failed", "message": "boom"}
        )
        assert released == job.held_by(owner, epoch), (released, owner, epoch, job)
        if not released:
            assert self._record(job_id) == before, "a refused release changed the record"
            return
        job.leased = job.lease_live = False
        if job.reprocessing:
            job.reprocessing = False  # the re-run gave up; the old result stands
        else:
            job.status = "PENDING"
        job.history.append(f"release by {owner}")

    @rule(job_id=jobs, offset=epoch_offsets, version=st.sampled_from(VERSIONS))
    def complete(self, job_id: str, offset: int, version: str) -> None:
        job = self.model[job_id]
        epoch = job.epoch + offset
        result = [{"prediction": epoch, "version": version}]
        before = self._record(job_id)
        completed = self.store.complete(
            job_id, epoch=epoch, result=result, model={"name": "m", "version": version}
        )
        assert completed == job.finishable_with(epoch), (completed, epoch, job)
        if not completed:
            assert self._record(job_id) == before, "a stale complete changed the record"
            return
        if job.reprocessing:
            job.revision += 1
        job.status, job.result, job.result_version = "SUCCESS", result, version
        self._finish(job)
        job.history.append(f"complete with epoch {epoch}")

    # epoch=None is how reconcilers and dead letters fail a job: one call in six.
    @rule(job_id=jobs, offset=st.sampled_from((None, -1, 0, 0, 0, 1)))
    def fail(self, job_id: str, offset: int | None) -> None:
        job = self.model[job_id]
        epoch = None if offset is None else job.epoch + offset
        error = {"code": "boom", "message": f"epoch {epoch}"}
        before = self._record(job_id)
        failed = self.store.fail(job_id, epoch=epoch, error=error)
        if epoch is None:
            allowed = job.status in {"PENDING", "STARTED"}
        else:
            allowed = job.finishable_with(epoch)
        assert failed == allowed, (failed, epoch, job)
        if not failed:
            assert self._record(job_id) == before, "a refused fail changed the record"
            return
        if not (job.reprocessing and epoch is not None):
            job.status, job.error = "FAILURE", error
        # A failed re-run keeps the result the job had.
        self._finish(job)
        job.history.append(f"fail with epoch {epoch}")

    # Cancelling ends a job's story: one call in four, so runs reach the later moves.
    @rule(job_id=jobs, really=st.sampled_from((True, False, False, False)))
    def cancel(self, job_id: str, really: bool) -> None:
        if not really:
            return
        job = self.model[job_id]
        before = self._record(job_id)
        status = self.store.cancel(job_id)
        if job.status in {"PENDING", "STARTED"}:
            assert status is JobStatus.REVOKED
            job.status = "REVOKED"
            self._finish(job)
            job.history.append("cancel")
        else:
            assert status == JobStatus(job.status)
            assert self._record(job_id) == before, "cancelling a finished job changed it"

    @rule(job_id=jobs)
    def lease_runs_out(self, job_id: str) -> None:
        """Time passes for the job's holder, if it has one: its lease deadline is now past."""
        job = self.model[job_id]
        if not job.lease_live:
            return
        self.connection.hset(self.store.key_for(job_id), "lease_expires_at", "1.000000")
        job.lease_live = False
        job.history.append("lease ran out")

    # -- what must always hold ----------------------------------------------------------------

    @invariant()
    def every_record_matches_the_model(self) -> None:
        for job_id, job in self.model.items():
            stored = self.store.fetch(job_id)
            assert stored is not None, job_id
            where = f"job {job_id} after {job.history}"
            assert stored.status.value == job.status, where
            assert (stored.epoch, stored.attempts) == (job.epoch, job.attempts), where
            assert stored.reprocessing == job.reprocessing, where
            assert stored.revision == job.revision, where
            assert (stored.lease_expires_at is not None) == job.leased, where
            assert stored.error == (job.error if job.status == "FAILURE" else None), where
            assert (stored.finished_at is not None) == job.finished, where

    @invariant()
    def a_result_exists_exactly_when_the_job_succeeded(self) -> None:
        for job_id, job in self.model.items():
            stored = self.store.fetch(job_id)
            assert stored is not None
            if job.status == "SUCCESS":
                assert stored.result == job.result, job.history
                assert stored.model == {"name": "m", "version": job.result_version}
            else:
                assert stored.result is None, job.history

    @invariant()
    def only_finished_jobs_expire(self) -> None:
        for job_id, job in self.model.items():
            ttl = self.connection.ttl(self.store.key_for(job_id))
            if job.status in TERMINAL and not job.reprocessing:
                assert 0 < ttl <= 3600, (ttl, job.history)
            else:
                assert ttl == -1, (ttl, job.history)  # a running job never expires

    @invariant()
    def finished_at_never_moves(self) -> None:
        for job_id in self.model:
            finished_at = self.connection.hget(self.store.key_for(job_id), "finished_at")
            if finished_at is None:
                continue
            assert self.finished_at.setdefault(job_id, finished_at) == finished_at

    @invariant()
    def the_pending_index_holds_exactly_the_unclaimed_pending_jobs(self) -> None:
        indexed = {
            member.decode() for member in self.connection.zrange(self.store.pending_key, 0, -1)
        }
        unclaimed = {
            job_id
            for job_id, job in self.model.items()
            if job.status == "PENDING" and job.attempts == 0
        }
        assert indexed == unclaimed

    # -- helpers ------------------------------------------------------------------------------

    def _expected_claim(self, job: ModelJob, served: str | None) -> ClaimRefused | None:
        """Why the claim must be refused, or None if it must succeed."""
        if job.status == "PENDING":
            return None
        if job.status == "STARTED":
            return ClaimRefused.LEASED if job.lease_live else None
        if job.status == "SUCCESS":
            if served is None or served == job.result_version:
                return ClaimRefused.FINISHED
            return ClaimRefused.LEASED if job.lease_live else None
        return ClaimRefused.FINISHED

    def _finish(self, job: ModelJob) -> None:
        job.reprocessing = False
        job.leased = job.lease_live = False
        job.finished = True

    def _record(self, job_id: str) -> tuple[dict[bytes, bytes], int]:
        """Everything about a job's key: its fields and whether it expires."""
        key = self.store.key_for(job_id)
        has_ttl = self.connection.ttl(key) > 0
        return self.connection.hgetall(key), int(has_ttl)


def test_the_job_store_keeps_its_promises_under_any_sequence(
    redis_connection: redis.Redis,
) -> None:
    run_state_machine_as_test(
        lambda: JobStoreMachine(redis_connection),
        settings=settings(
            max_examples=100,
            stateful_step_count=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
