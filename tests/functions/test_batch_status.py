from __future__ import annotations

import uuid

import pytest
import redis

from nimbus.jobs import JobStore
from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA
from tests.functions.conftest import MakeClient
from tests.functions.test_predict import assert_error


@pytest.fixture
def store(stack: Stack) -> JobStore:
    return JobStore(redis.Redis.from_url(stack.redis_url))


@pytest.fixture
def client(function_client: MakeClient):
    return function_client("batch_status")


def test_pending_job_has_no_result(client, store):
    job = store.create([IRIS_SETOSA])

    response = client.get(f"/v1/batch/{job.id}")

    assert response.status_code == 200
    body = response.get_json()
    assert body["job_id"] == job.id
    assert body["status"] == "PENDING"
    assert "result" not in body


def test_finished_job_answers_the_seed_shape(client, store):
    job = store.create([IRIS_SETOSA, IRIS_VIRGINICA])
    claim = store.claim(job.id, owner="test", lease_seconds=30)
    assert claim is not None
    store.complete(job.id, epoch=claim.epoch, result=[{"prediction": 0}, {"prediction": 2}])

    body = client.get(f"/v1/batch/{job.id}").get_json()

    assert body["status"] == "SUCCESS"
    assert body["result"] == [{"prediction": 0}, {"prediction": 2}]


def test_function_url_takes_the_id_as_its_path(client, store):
    job = store.create([IRIS_SETOSA])

    assert client.get(f"/{job.id}").get_json()["job_id"] == job.id


@pytest.mark.parametrize("job_id", [str(uuid.uuid4()), "not-a-uuid", "x" * 500])
def test_unknown_and_malformed_ids_are_404(client, job_id):
    error = assert_error(client.get(f"/v1/batch/{job_id}"), 404, "job_not_found")

    assert "x" * 100 not in error["message"]


def test_only_get_is_allowed(client, store):
    job = store.create([IRIS_SETOSA])

    assert_error(client.post(f"/v1/batch/{job.id}"), 405, "method_not_allowed")


def test_health_and_ready(client):
    assert client.get("/").get_json() == {"status": "NimbusAPI is running."}
    assert client.get("/ready").status_code == 200
