from __future__ import annotations

import time
import uuid

import pytest

from nimbus.jobs import JobStore
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA
from tests.functions.conftest import MakeClient
from tests.functions.test_predict import assert_error


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


def finished(store: JobStore, items: int) -> str:
    job = store.create([IRIS_SETOSA] * items)
    claim = store.claim(job.id, owner="test", lease_seconds=30)
    assert not isinstance(claim, str)
    store.complete(job.id, epoch=claim.epoch, result=[{"prediction": i} for i in range(items)])
    return job.id


def test_a_long_result_comes_in_pages(client, store):
    job_id = finished(store, 5)

    first = client.get(f"/v1/batch/{job_id}?limit=2").get_json()
    last = client.get(f"/v1/batch/{job_id}?offset=4&limit=2").get_json()

    assert first["result"] == [{"prediction": 0}, {"prediction": 1}]
    assert first["page"] == {
        "offset": 0,
        "limit": 2,
        "total": 5,
        "next": f"/v1/batch/{job_id}?offset=2&limit=2",
    }
    assert last["result"] == [{"prediction": 4}] and last["page"]["next"] is None


def test_a_short_result_comes_whole(client, store):
    body = client.get(f"/v1/batch/{finished(store, 3)}").get_json()

    assert len(body["result"]) == 3 and "page" not in body


@pytest.mark.parametrize("query", ["limit=0", "limit=x", "offset=-1", "limit=100000000"])
def test_bad_page_arguments_are_400(client, store, query):
    assert_error(client.get(f"/v1/batch/{finished(store, 1)}?{query}"), 400, "bad_request")


def test_an_expired_job_says_so(client, store):
    short_lived = JobStore(store.connection, finished_ttl=1)
    job_id = finished(short_lived, 1)
    deadline = time.monotonic() + 5
    while store.fetch(job_id) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    error = assert_error(client.get(f"/v1/batch/{job_id}"), 404, "job_expired")

    assert "expired" in error["message"]
