"""What the reconciler and the dead-letter consumer do to the job store, against a real
redis-server: which jobs they republish (and how often), which they fail, which they leave."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pytest

from nimbus.errors import ServiceUnavailable
from nimbus.jobs import JobStatus, JobStore
from tests.unit.test_jobs import IRIS, MODEL, PREDICTIONS, TINY_LEASE, claim_job
from vm_worker.reconciler import reconcile, record_dead_letter


@dataclass
class Bus:
    """Stands in for JobBus: records what was published; `down` makes every publish fail."""

    down: bool = False
    published: list[str] = field(default_factory=list)

    def publish_job(self, job_id: str, **attributes: str) -> str:
        if self.down:
            raise ServiceUnavailable("pubsub down", code="queue_unavailable")
        self.published.append(job_id)
        return str(len(self.published))


def redis_now(store: JobStore) -> float:
    seconds, micros = store.connection.time()
    return seconds + micros / 1e6


def backdate(store: JobStore, index: str, job_id: str, seconds: float = 3600) -> None:
    """Move a job's place in an index into the past, as if that much time had gone by."""
    store.connection.zadd(index, {job_id: redis_now(store) - seconds})


def lapse(store: JobStore, job_id: str) -> None:
    """Make a job's lease have run out, as if its holder had stalled past it."""
    store.connection.hset(store.key_for(job_id), "lease_expires_at", f"{redis_now(store) - 1:.6f}")
    backdate(store, store.leases_key, job_id, 1)


def status(store: JobStore, job_id: str) -> JobStatus:
    job = store.fetch(job_id, with_result=False)
    assert job is not None
    return job.status


def test_requeued_counts_and_backs_off_only_for_a_job_still_waiting(job_store: JobStore):
    waiting = job_store.create(IRIS).id
    claimed = job_store.create(IRIS).id
    for job_id in (waiting, claimed):
        backdate(job_store, job_store.pending_key, job_id)
    assert sorted(job_store.pending_before(100)) == sorted([waiting, claimed])
    claim_job(job_store, claimed)  # between the reconciler's look and its note

    assert job_store.requeued(claimed, backoff=100) == 0
    members = {m.decode() for m in job_store.connection.zrange(job_store.pending_key, 0, -1)}
    assert members == {waiting}, "a claimed job went back into the pending index"
    # The n-th republish is followed by one after min(100 * 2^n, max) seconds: the index
    # holds the job that much minus the 100 that pending_before(100) adds, from Redis's now.
    for count, wait in [(1, 200), (2, 400), (3, 800), (4, 1000)]:
        assert job_store.requeued(waiting, backoff=100, max_backoff=1000) == count
        ahead = job_store.connection.zscore(job_store.pending_key, waiting) - redis_now(job_store)
        assert wait - 100 - 5 < ahead <= wait - 100, count
        assert job_store.pending_before(100) == []


def test_requeued_drops_a_finished_job_from_the_index(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    job_store.connection.hset(job_store.key_for(job_id), "status", "SUCCESS")

    assert job_store.requeued(job_id) == 0
    assert job_store.connection.zcard(job_store.pending_key) == 0


def test_a_lapsed_lease_is_offered_until_the_job_is_held_again(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    claim_job(job_store, job_id)
    assert job_store.lapsed_leases() == []
    lapse(job_store, job_id)

    assert job_store.lapsed_leases() == [job_id]
    assert job_store.lapsed_requeued(job_id, backoff=60) == 1
    assert job_store.lapsed_leases() == [], "offered again before its backoff"

    claim = claim_job(job_store, job_id, owner="worker-b")
    assert job_store.lapsed_requeued(job_id, backoff=60) == 0
    assert job_store.extend_lease(job_id, owner="worker-b", epoch=claim.epoch, lease_seconds=60)
    assert job_store.complete(job_id, epoch=claim.epoch, result=PREDICTIONS, model=MODEL)
    assert job_store.connection.zcard(job_store.leases_key) == 0


def test_release_and_cancel_take_a_job_out_of_the_lease_index(job_store: JobStore):
    released, cancelled = job_store.create(IRIS).id, job_store.create(IRIS).id
    claim = claim_job(job_store, released)
    claim_job(job_store, cancelled)

    assert job_store.release(released, owner="worker-a", epoch=claim.epoch)
    assert job_store.cancel(cancelled) is JobStatus.REVOKED
    assert job_store.connection.zcard(job_store.leases_key) == 0


def test_fail_unless_leased_spares_a_job_under_a_live_lease(job_store: JobStore):
    live, lapsed, waiting = (job_store.create(IRIS).id for _ in range(3))
    claim_job(job_store, live, lease=60)
    claim_job(job_store, lapsed, lease=TINY_LEASE)
    time.sleep(2 * TINY_LEASE)
    error = {"code": "dead_lettered", "message": "x"}

    assert not job_store.fail(live, epoch=None, error=error, unless_leased=True)
    assert job_store.fail(lapsed, epoch=None, error=error, unless_leased=True)
    assert job_store.fail(waiting, epoch=None, error=error, unless_leased=True)
    assert status(job_store, live) is JobStatus.STARTED
    assert status(job_store, lapsed) is JobStatus.FAILURE
    assert status(job_store, waiting) is JobStatus.FAILURE


def test_reconcile_republishes_waiting_jobs_and_never_fails_them(job_store: JobStore):
    jobs = [job_store.create(IRIS).id for _ in range(3)]
    bus = Bus()
    for rounds in range(1, 8):  # a long queue: the jobs wait on and on
        for job_id in jobs:
            backdate(job_store, job_store.pending_key, job_id)
        for number in range(3):  # passes in quick succession: the backoff spaces republishes
            assert reconcile(job_store, bus, older_than=60) == (3 if number == 0 else 0, 0)
        assert sorted(bus.published) == sorted(jobs * rounds)

    assert {status(job_store, job_id) for job_id in jobs} == {JobStatus.PENDING}


def test_reconcile_counts_only_publishes_that_went_through(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    time.sleep(0.05)
    bus = Bus(down=True)

    assert reconcile(job_store, bus, older_than=0.01) == (0, 0)
    assert job_store.connection.hget(job_store.key_for(job_id), "republished") is None

    bus.down = False
    assert reconcile(job_store, bus, older_than=0.01) == (1, 0)
    assert bus.published == [job_id]


def test_reconcile_fails_a_job_only_past_the_message_retention(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    time.sleep(0.05)

    assert reconcile(job_store, Bus(), older_than=0.01, give_up_after=0.02) == (0, 1)
    job = job_store.fetch(job_id)
    assert job is not None and job.error is not None and job.error["code"] == "queue_lost"


def test_reconcile_republishes_a_job_whose_worker_died(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    claim_job(job_store, job_id)
    lapse(job_store, job_id)
    bus = Bus()

    assert reconcile(job_store, bus, older_than=60) == (1, 0)
    assert reconcile(job_store, bus, older_than=60) == (0, 0)
    assert bus.published == [job_id]


@pytest.mark.parametrize("lease", [60.0, TINY_LEASE])
def test_a_dead_letter_never_fails_a_job_a_live_worker_holds(job_store: JobStore, lease: float):
    job_id = job_store.create(IRIS).id
    claim_job(job_store, job_id, owner="worker-a", lease=lease)
    time.sleep(2 * TINY_LEASE)

    changed = record_dead_letter(job_store, job_id, delivery_attempts=5, live_workers={"worker-a"})

    assert not changed
    assert status(job_store, job_id) is JobStatus.STARTED


def test_a_dead_letter_fails_a_job_nobody_holds(job_store: JobStore):
    held, dead = job_store.create(IRIS).id, job_store.create(IRIS).id
    claim = claim_job(job_store, held)
    job_store.release(
        held, owner="worker-a", epoch=claim.epoch, error={"code": "x", "message": "boom"}
    )
    claim_job(job_store, dead, owner="worker-gone", lease=TINY_LEASE)
    time.sleep(2 * TINY_LEASE)

    assert record_dead_letter(job_store, held, delivery_attempts=5, live_workers=set())
    assert record_dead_letter(job_store, dead, delivery_attempts=5, live_workers={"worker-a"})
    job = job_store.fetch(held)
    assert job is not None and job.error is not None
    assert job.error["code"] == "dead_lettered" and "boom" in job.error["message"]
    assert status(job_store, dead) is JobStatus.FAILURE
