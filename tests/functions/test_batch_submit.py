from __future__ import annotations

import uuid

import pytest

from nimbus.jobs import JobStatus
from nimbus.stack import free_port
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA
from tests.functions.conftest import MakeClient
from tests.functions.test_predict import assert_error


@pytest.fixture
def client(function_client: MakeClient):
    return function_client("batch_submit")


def test_accepts_the_guide_batch(client, store):
    response = client.post("/v1/batch", json=[IRIS_SETOSA, IRIS_VIRGINICA])

    assert response.status_code == 202
    body = response.get_json()
    assert body["status"] == "PENDING"
    assert uuid.UUID(body["job_id"]).version == 4
    assert response.headers["Location"] == f"/v1/batch/{body['job_id']}"
    job = store.fetch(body["job_id"], with_inputs=True)
    assert job is not None
    assert job.inputs == [IRIS_SETOSA, IRIS_VIRGINICA]


def test_item_problems_are_listed_by_index(client):
    items = [IRIS_SETOSA, {**IRIS_SETOSA, "petal_width": "thin"}, {"sepal_length": 1.0}]

    error = assert_error(client.post("/v1/batch", json=items), 422, "validation_failed")

    problems = {(p["item"], p["field"]) for p in error["details"]}
    assert (1, "petal_width") in problems
    assert {(2, "sepal_width"), (2, "petal_length"), (2, "petal_width")} <= problems
    assert all(p["item"] != 0 for p in error["details"])


def test_empty_batch_is_rejected(client):
    assert_error(client.post("/v1/batch", json=[]), 422, "empty_batch")


def test_a_single_object_is_not_a_batch(client):
    error = assert_error(client.post("/v1/batch", json=IRIS_SETOSA), 400, "bad_request")
    assert "array" in error["message"]


def test_too_many_items_is_413(function_client: MakeClient):
    client = function_client("batch_submit", NIMBUS_MAX_BATCH_ITEMS="2")

    response = client.post("/v1/batch", json=[IRIS_SETOSA] * 3)

    assert_error(response, 413, "payload_too_large")


def test_queue_down_answers_503_and_leaves_no_pending_job(function_client: MakeClient, store):
    client = function_client(
        "batch_submit", PUBSUB_EMULATOR_HOST=f"127.0.0.1:{free_port()}", NIMBUS_PUBLISH_TIMEOUT="1"
    )
    before = set(store.connection.scan_iter("nimbus:job:*"))

    response = assert_error(client.post("/v1/batch", json=[IRIS_SETOSA]), 503, "queue_unavailable")

    new_keys = set(store.connection.scan_iter("nimbus:job:*")) - before
    statuses = {store.fetch(key.decode().rsplit(":", 1)[1]).status for key in new_keys}
    assert statuses <= {JobStatus.FAILURE}
    assert "submit it again" in response["message"]


def test_redis_down_answers_503_never_202(function_client: MakeClient):
    client = function_client("batch_submit", NIMBUS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0")

    assert_error(client.post("/v1/batch", json=[IRIS_SETOSA]), 503, "store_unavailable")


def test_ready_checks_redis_and_pubsub(client):
    response = client.get("/ready")

    assert response.status_code == 200
    assert response.get_json()["status"] == "ready"


def test_cancel_revokes_a_pending_job_once(client, store):
    job = store.create([IRIS_SETOSA])

    first = client.delete(f"/v1/batch/{job.id}")
    again = client.delete(f"/v1/batch/{job.id}")

    assert first.status_code == 200
    assert first.get_json() == {"job_id": job.id, "status": "REVOKED"}
    assert_error(again, 409, "job_finished")
    assert store.fetch(job.id).status is JobStatus.REVOKED


def test_cancel_of_an_unknown_job_is_404(client):
    assert_error(client.delete(f"/v1/batch/{uuid.uuid4()}"), 404, "job_not_found")
