"""The job store's reliability moves against a real redis-server: progress, release,
reprocessing on replay, the pending index and expiry tombstones."""

from __future__ import annotations

import time

import pytest

from nimbus.jobs import Claim, ClaimRefused, JobStatus, JobStore
from tests.unit.test_jobs import IRIS, MODEL, PREDICTIONS, claim_job

NEWER = {"name": "iris", "version": "4"}


def finished_job(store: JobStore, model: dict = MODEL) -> str:
    job_id = store.create(IRIS).id
    claim = claim_job(store, job_id)
    assert store.complete(job_id, epoch=claim.epoch, result=PREDICTIONS, model=model)
    return job_id


def test_progress_is_recorded_with_the_lease(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id)

    assert job_store.extend_lease(
        job_id, owner="worker-a", epoch=claim.epoch, lease_seconds=30, done=1
    )

    job = job_store.fetch(job_id)
    assert job is not None
    assert job.to_public()["progress"] == {"done": 1, "total": 2}


def test_a_revoked_job_tells_its_worker_to_stop(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id)
    job_store.cancel(job_id)

    assert not job_store.extend_lease(job_id, owner="worker-a", epoch=claim.epoch, lease_seconds=30)
    assert not job_store.complete(job_id, epoch=claim.epoch, result=PREDICTIONS)
    assert job_store.fetch(job_id).status is JobStatus.REVOKED  # type: ignore[union-attr]


def test_release_lets_the_next_delivery_claim_at_once(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    first = claim_job(job_store, job_id)

    released = job_store.release(
        job_id, owner="worker-a", epoch=first.epoch, error={"code": "boom", "message": "x"}
    )
    second = claim_job(job_store, job_id, owner="worker-b")

    assert released
    assert second.epoch == first.epoch + 1 and second.attempts == 2
    job = job_store.fetch(job_id)
    assert job is not None and job.last_error == {"code": "boom", "message": "x"}


def test_a_stale_holder_cannot_release(job_store: JobStore):
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id)

    assert not job_store.release(job_id, owner="worker-a", epoch=claim.epoch + 1)
    assert isinstance(job_store.claim(job_id, owner="b", lease_seconds=30), ClaimRefused)


def test_a_replay_with_the_same_model_is_a_no_op(job_store: JobStore):
    job_id = finished_job(job_store)

    outcome = job_store.claim(job_id, owner="w", lease_seconds=30, model_version="3")

    assert outcome is ClaimRefused.FINISHED


def test_a_replay_after_a_promote_reprocesses_and_bumps_the_revision(job_store: JobStore):
    job_id = finished_job(job_store)

    claim = job_store.claim(job_id, owner="w", lease_seconds=30, model_version="4")
    assert isinstance(claim, Claim) and claim.reprocess and claim.inputs == IRIS
    during = job_store.fetch(job_id)
    assert during is not None
    assert during.status is JobStatus.SUCCESS and during.result == PREDICTIONS  # still readable
    assert during.to_public()["reprocessing"] is True
    assert (
        job_store.claim(job_id, owner="v", lease_seconds=30, model_version="4")
        is ClaimRefused.LEASED
    )

    new_result = [{"prediction": 1}, {"prediction": 2}]
    assert job_store.complete(job_id, epoch=claim.epoch, result=new_result, model=NEWER)

    after = job_store.fetch(job_id)
    assert after is not None
    public = after.to_public()
    assert public["result"] == new_result and public["model"] == NEWER
    assert public["revision"] == 1 and public["reprocessing"] is False
    assert "reprocessed_at" in public
    assert job_store.connection.ttl(job_store.key_for(job_id)) > 0
    assert (
        job_store.claim(job_id, owner="w", lease_seconds=30, model_version="4")
        is ClaimRefused.FINISHED
    )


def test_a_failed_rerun_keeps_the_result_it_had(job_store: JobStore):
    job_id = finished_job(job_store)
    claim = job_store.claim(job_id, owner="w", lease_seconds=30, model_version="4")
    assert isinstance(claim, Claim)

    job_store.fail(job_id, epoch=claim.epoch, error={"code": "x", "message": "y"})

    job = job_store.fetch(job_id)
    assert job is not None
    assert job.status is JobStatus.SUCCESS and job.result == PREDICTIONS and job.revision == 0


@pytest.mark.parametrize("status", ["FAILURE", "REVOKED"])
def test_failed_and_revoked_jobs_are_never_replayed(job_store: JobStore, status: str):
    job_id = job_store.create(IRIS).id
    if status == "FAILURE":
        job_store.fail(job_id, epoch=None, error={"code": "x", "message": "y"})
    else:
        job_store.cancel(job_id)

    outcome = job_store.claim(job_id, owner="w", lease_seconds=30, model_version="9")

    assert outcome is ClaimRefused.FINISHED


def test_pending_index_holds_unclaimed_jobs_only(job_store: JobStore):
    waiting = job_store.create(IRIS).id
    claimed = job_store.create(IRIS).id
    claim_job(job_store, claimed)
    time.sleep(0.05)

    assert job_store.pending_before(0.01) == [waiting]
    assert job_store.pending_before(3600) == []
    assert job_store.requeued(waiting) == 1 and job_store.requeued(waiting) == 2


def test_an_expired_job_is_known_to_have_existed(job_store: JobStore):
    short = JobStore(job_store.connection, finished_ttl=1)
    job_id = finished_job(short)

    deadline = time.monotonic() + 5
    while short.fetch(job_id) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    assert short.is_expired(job_id)
    assert not short.is_expired("8d3c0a52-5b8c-4c35-9d1c-2a1b0f3e4d5c")


def test_the_eviction_policy_is_readable(job_store: JobStore):
    assert job_store.eviction_policy() == "noeviction"
