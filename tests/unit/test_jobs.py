"""The job store against a real redis-server: states, leases, fencing, TTLs, public shape."""

from __future__ import annotations

import time
import uuid

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nimbus.errors import Conflict
from nimbus.jobs import Claim, ClaimRefused, JobStatus, JobStore
from nimbus.stack import free_port

IRIS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3},
]
PREDICTIONS = [{"prediction": 0}, {"prediction": 2}]
MODEL = {"name": "iris", "version": "3"}
TINY_LEASE = 0.05  # seconds; sleeping twice as long lets it lapse without a slow test


def claim_job(store: JobStore, job_id: str, owner: str = "worker-a", lease: float = 60) -> Claim:
    outcome = store.claim(job_id, owner=owner, lease_seconds=lease)
    assert isinstance(outcome, Claim), outcome
    return outcome


def test_create_then_fetch_round_trips_the_record(job_store: JobStore) -> None:
    created = job_store.create(IRIS)

    fetched = job_store.fetch(created.id, with_inputs=True)

    assert fetched is not None
    assert uuid.UUID(created.id).version == 4
    assert fetched.status is JobStatus.PENDING
    assert fetched.inputs == IRIS
    assert fetched.items == 2
    assert fetched.attempts == 0
    assert fetched.created_at == pytest.approx(time.time(), abs=5)
    assert fetched.created_at == created.created_at == fetched.updated_at
    assert fetched.started_at is None and fetched.finished_at is None


def test_fetch_leaves_inputs_unloaded_unless_asked(job_store: JobStore) -> None:
    created = job_store.create(IRIS)

    fetched = job_store.fetch(created.id)

    assert fetched is not None
    assert fetched.inputs is None
    assert fetched.items == 2


def test_create_never_overwrites_an_existing_id(job_store: JobStore) -> None:
    job_id = str(uuid.uuid4())
    job_store.create(IRIS, job_id=job_id)

    with pytest.raises(Conflict, match=job_id):
        job_store.create([IRIS[0]], job_id=job_id)

    fetched = job_store.fetch(job_id, with_inputs=True)
    assert fetched is not None and fetched.inputs == IRIS


@pytest.mark.parametrize(
    "job_id", [str(uuid.uuid4()), "", "not-a-uuid", "../../etc/passwd", "a b*?[", "💥", "\udcff"]
)
def test_unknown_or_odd_ids_are_simply_unknown(job_store: JobStore, job_id: str) -> None:
    assert job_store.fetch(job_id) is None
    assert job_store.claim(job_id, owner="w", lease_seconds=60) is ClaimRefused.UNKNOWN
    assert job_store.cancel(job_id) is None
    assert job_store.complete(job_id, epoch=1, result=PREDICTIONS) is False
    assert job_store.fail(job_id, epoch=None, error={"code": "x", "message": "y"}) is False


def test_claim_takes_a_pending_job(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id

    claim = job_store.claim(job_id, owner="worker-a", lease_seconds=60)

    assert claim == Claim(job_id=job_id, epoch=1, attempts=1, inputs=IRIS)
    job = job_store.fetch(job_id)
    assert job is not None
    assert job.status is JobStatus.STARTED and not job.is_terminal
    assert job.owner == "worker-a"
    assert job.started_at is not None
    assert job.lease_expires_at == pytest.approx(job.started_at + 60, abs=0.01)


def test_second_claim_is_refused_while_the_lease_lives(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    claim_job(job_store, job_id, owner="worker-a")

    outcome = job_store.claim(job_id, owner="worker-b", lease_seconds=60)

    assert outcome is ClaimRefused.LEASED
    job = job_store.fetch(job_id)
    assert job is not None and job.owner == "worker-a" and job.epoch == 1


def test_claim_after_the_lease_lapses_fences_out_the_old_worker(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    first = claim_job(job_store, job_id, owner="worker-a", lease=TINY_LEASE)
    first_started = job_store.fetch(job_id)
    time.sleep(TINY_LEASE * 2)

    second = claim_job(job_store, job_id, owner="worker-b")

    assert second.epoch > first.epoch
    assert second.attempts == 2
    job = job_store.fetch(job_id)
    assert job is not None and first_started is not None
    assert job.owner == "worker-b"
    assert job.started_at == first_started.started_at
    assert not job_store.extend_lease(job_id, owner="worker-a", epoch=first.epoch, lease_seconds=60)


def test_extend_lease_moves_the_deadline_for_the_holder_only(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id, lease=TINY_LEASE)

    extended = job_store.extend_lease(job_id, owner="worker-a", epoch=claim.epoch, lease_seconds=60)
    wrong_epoch = job_store.extend_lease(
        job_id, owner="worker-a", epoch=claim.epoch + 1, lease_seconds=60
    )
    wrong_owner = job_store.extend_lease(
        job_id, owner="worker-b", epoch=claim.epoch, lease_seconds=60
    )
    time.sleep(TINY_LEASE * 2)

    assert (extended, wrong_epoch, wrong_owner) == (True, False, False)
    assert job_store.claim(job_id, owner="worker-b", lease_seconds=60) is ClaimRefused.LEASED


def test_complete_with_a_stale_epoch_changes_nothing(
    job_store: JobStore, redis_connection: redis.Redis
) -> None:
    job_id = job_store.create(IRIS).id
    stale = claim_job(job_store, job_id, owner="worker-a", lease=TINY_LEASE)
    time.sleep(TINY_LEASE * 2)
    claim_job(job_store, job_id, owner="worker-b")
    before = redis_connection.hgetall(job_store.key_for(job_id))

    completed = job_store.complete(job_id, epoch=stale.epoch, result=PREDICTIONS)

    assert completed is False
    assert redis_connection.hgetall(job_store.key_for(job_id)) == before
    assert redis_connection.ttl(job_store.key_for(job_id)) == -1


def test_complete_writes_result_and_success_together_with_a_ttl(
    job_store: JobStore, redis_connection: redis.Redis
) -> None:
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id)

    completed = job_store.complete(job_id, epoch=claim.epoch, result=PREDICTIONS, model=MODEL)

    assert completed is True
    job = job_store.fetch(job_id)
    assert job is not None
    assert job.status is JobStatus.SUCCESS
    assert job.result == PREDICTIONS
    assert job.model == MODEL
    assert job.finished_at is not None and job.lease_expires_at is None
    ttl = redis_connection.ttl(job_store.key_for(job_id))
    assert 0 < ttl <= job_store.finished_ttl


def test_unfinished_jobs_have_no_ttl(job_store: JobStore, redis_connection: redis.Redis) -> None:
    pending = job_store.create(IRIS).id
    started = job_store.create(IRIS).id
    claim_job(job_store, started)

    ttls = [redis_connection.ttl(job_store.key_for(job_id)) for job_id in (pending, started)]

    assert ttls == [-1, -1]


def test_fail_by_the_holder_records_the_error(
    job_store: JobStore, redis_connection: redis.Redis
) -> None:
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id)
    error = {"code": "prediction_failed", "message": "The model rejected item 1."}

    failed = job_store.fail(job_id, epoch=claim.epoch, error=error)

    assert failed is True
    job = job_store.fetch(job_id)
    assert job is not None and job.status is JobStatus.FAILURE and job.error == error
    assert redis_connection.ttl(job_store.key_for(job_id)) > 0


def test_fail_with_a_stale_epoch_changes_nothing(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id)

    failed = job_store.fail(job_id, epoch=claim.epoch + 1, error={"code": "x", "message": "y"})

    job = job_store.fetch(job_id)
    assert failed is False
    assert job is not None and job.status is JobStatus.STARTED and job.error is None


def test_fail_without_an_epoch_fails_a_pending_job(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    error = {"code": "dead_lettered", "message": "No worker could run the job."}

    failed = job_store.fail(job_id, epoch=None, error=error)

    job = job_store.fetch(job_id)
    assert failed is True
    assert job is not None and job.status is JobStatus.FAILURE and job.error == error


def finished_job(store: JobStore, status: JobStatus) -> str:
    job_id = store.create(IRIS).id
    claim = claim_job(store, job_id)
    if status is JobStatus.SUCCESS:
        assert store.complete(job_id, epoch=claim.epoch, result=PREDICTIONS)
    elif status is JobStatus.FAILURE:
        assert store.fail(job_id, epoch=claim.epoch, error={"code": "x", "message": "y"})
    else:
        assert store.cancel(job_id) is JobStatus.REVOKED
    return job_id


@pytest.mark.parametrize("status", [JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED])
def test_terminal_jobs_never_change_again(
    job_store: JobStore, redis_connection: redis.Redis, status: JobStatus
) -> None:
    job_id = finished_job(job_store, status)
    before = redis_connection.hgetall(job_store.key_for(job_id))
    error = {"code": "late", "message": "too late"}

    outcomes = (
        job_store.claim(job_id, owner="worker-b", lease_seconds=60),
        job_store.complete(job_id, epoch=1, result=[{"prediction": 1}]),
        job_store.fail(job_id, epoch=1, error=error),
        job_store.fail(job_id, epoch=None, error=error),
        job_store.cancel(job_id),
    )

    assert outcomes == (ClaimRefused.FINISHED, False, False, False, status)
    assert redis_connection.hgetall(job_store.key_for(job_id)) == before
    assert status.is_terminal


def test_cancel_revokes_a_pending_job(job_store: JobStore, redis_connection: redis.Redis) -> None:
    job_id = job_store.create(IRIS).id

    status = job_store.cancel(job_id)

    job = job_store.fetch(job_id)
    assert status is JobStatus.REVOKED
    assert job is not None and job.status is JobStatus.REVOKED and job.is_terminal
    assert redis_connection.ttl(job_store.key_for(job_id)) > 0


def test_cancel_of_a_started_job_stops_its_worker_from_completing(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    claim = claim_job(job_store, job_id)

    status = job_store.cancel(job_id)

    assert status is JobStatus.REVOKED
    assert job_store.complete(job_id, epoch=claim.epoch, result=PREDICTIONS) is False
    assert not job_store.extend_lease(job_id, owner="worker-a", epoch=claim.epoch, lease_seconds=60)


def test_cancel_leaves_a_successful_job_alone(job_store: JobStore) -> None:
    job_id = finished_job(job_store, JobStatus.SUCCESS)

    status = job_store.cancel(job_id)

    job = job_store.fetch(job_id)
    assert status is JobStatus.SUCCESS
    assert job is not None and job.result == PREDICTIONS


def test_public_pending_answer_has_no_result(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    job = job_store.fetch(job_id)
    assert job is not None

    body = job.to_public()

    assert body["job_id"] == job_id
    assert body["status"] == "PENDING"
    assert "result" not in body and "error" not in body and "model" not in body
    assert "started_at" not in body and "finished_at" not in body
    assert body["created_at"].endswith("Z")
    assert body["items"] == 2 and body["attempts"] == 0


def test_public_started_answer_has_no_result(job_store: JobStore) -> None:
    job_id = job_store.create(IRIS).id
    claim_job(job_store, job_id)
    job = job_store.fetch(job_id)
    assert job is not None

    body = job.to_public()

    assert body["status"] == "STARTED" and "result" not in body
    assert "owner" not in body and "epoch" not in body


def test_public_success_answer_has_the_seeds_shape(job_store: JobStore) -> None:
    job_id = finished_job(job_store, JobStatus.SUCCESS)
    job = job_store.fetch(job_id)
    assert job is not None

    body = job.to_public()

    assert {k: body[k] for k in ("job_id", "status", "result")} == {
        "job_id": job_id,
        "status": "SUCCESS",
        "result": [{"prediction": 0}, {"prediction": 2}],
    }
    assert body["attempts"] == 1
    assert {"created_at", "updated_at", "started_at", "finished_at"} <= body.keys()


def test_public_failure_answer_carries_the_error(job_store: JobStore) -> None:
    job_id = finished_job(job_store, JobStatus.FAILURE)
    job = job_store.fetch(job_id)
    assert job is not None

    body = job.to_public()

    assert body["status"] == "FAILURE"
    assert body["error"] == {"code": "x", "message": "y"}
    assert "result" not in body


def test_store_works_with_decoded_responses(redis_url: str, redis_connection: redis.Redis) -> None:
    decoded = redis.Redis.from_url(redis_url, decode_responses=True, socket_timeout=5)
    store = JobStore(decoded)
    job_id = store.create(IRIS).id
    claim = claim_job(store, job_id)

    store.complete(job_id, epoch=claim.epoch, result=PREDICTIONS, model=MODEL)

    job = store.fetch(job_id, with_inputs=True)
    decoded.close()
    assert job is not None
    assert (job.status, job.owner, job.inputs, job.result) == (
        JobStatus.SUCCESS,
        "worker-a",
        IRIS,
        PREDICTIONS,
    )


def test_an_unreachable_redis_raises_and_reads_as_not_reachable() -> None:
    # No client retries: redis-py's default backoff would stretch this test to seconds.
    nobody = redis.Redis(port=free_port(), socket_connect_timeout=1, retry=Retry(NoBackoff(), 0))
    store = JobStore(nobody)

    with pytest.raises(redis.exceptions.ConnectionError):
        store.fetch(str(uuid.uuid4()))
    with pytest.raises(redis.exceptions.ConnectionError):
        store.create(IRIS)
    assert store.is_reachable() is False


def test_is_reachable_when_redis_answers(job_store: JobStore) -> None:
    assert job_store.is_reachable() is True


def test_jobs_live_under_the_prefix(redis_connection: redis.Redis) -> None:
    store = JobStore(redis_connection, prefix="test:")

    job_id = store.create(IRIS).id

    assert store.key_for(job_id) == f"test:job:{job_id}"
    assert sorted(redis_connection.keys("*")) == [
        f"test:job:{job_id}".encode(),
        b"test:pending",
        b"test:recent:anonymous",  # the submitter's recent jobs (GET /v1/batch)
    ]
