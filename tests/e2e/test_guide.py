"""The seed's API guide, verbatim, through the gateway of a real stack."""

from __future__ import annotations

import time
import uuid

import pytest
import requests

from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA

pytestmark = pytest.mark.e2e


def wait_for_status(base: str, job_id: str, statuses: set[str], timeout: float = 60) -> dict:
    """Poll GET /v1/batch/<id> until its status is one of `statuses` (bounded)."""
    deadline = time.monotonic() + timeout
    while True:
        body = requests.get(f"{base}/v1/batch/{job_id}", timeout=5).json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, f"job {job_id} still {body['status']} after {timeout}s"
        time.sleep(0.05)


def test_health_check(stack: Stack):
    response = requests.get(f"{stack.gateway_url}/", timeout=5)

    assert response.status_code == 200
    assert response.json() == {"status": "NimbusAPI is running."}


def test_synchronous_prediction(stack: Stack):
    response = requests.post(f"{stack.gateway_url}/v1/predict", json=IRIS_SETOSA, timeout=10)

    assert response.status_code == 200
    assert response.json()["prediction"] == 0


def test_batch_job_from_submit_to_result(stack: Stack):
    submitted = requests.post(
        f"{stack.gateway_url}/v1/batch", json=[IRIS_SETOSA, IRIS_VIRGINICA], timeout=10
    )

    assert submitted.status_code == 202
    body = submitted.json()
    assert body["status"] == "PENDING"
    assert uuid.UUID(body["job_id"]).version == 4
    done = wait_for_status(stack.gateway_url, body["job_id"], {"SUCCESS", "FAILURE"})
    assert done["job_id"] == body["job_id"]
    assert done["status"] == "SUCCESS"
    assert done["result"] == [{"prediction": 0}, {"prediction": 2}]
    assert done["model"] == {"name": "iris", "version": "1"}


def test_many_jobs_all_finish_with_the_models_answers(stack: Stack):
    items = [IRIS_SETOSA, IRIS_VIRGINICA] * 50
    job_ids = [
        requests.post(f"{stack.gateway_url}/v1/batch", json=items, timeout=10).json()["job_id"]
        for _ in range(20)
    ]

    results = [
        wait_for_status(stack.gateway_url, job_id, {"SUCCESS", "FAILURE"}) for job_id in job_ids
    ]

    assert {r["status"] for r in results} == {"SUCCESS"}
    assert all(r["result"] == [{"prediction": 0}, {"prediction": 2}] * 50 for r in results)


def test_unknown_job_is_404_in_the_error_shape(stack: Stack):
    response = requests.get(f"{stack.gateway_url}/v1/batch/{uuid.uuid4()}", timeout=5)

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "job_not_found"


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("GET", "/v2/predict", 404, "not_found"),
        ("GET", "/v1/predict", 405, "method_not_allowed"),
        ("DELETE", "/v1/batch", 405, "method_not_allowed"),
    ],
)
def test_gateway_errors_use_the_one_shape(stack: Stack, method, path, status, code):
    response = requests.request(method, f"{stack.gateway_url}{path}", timeout=5)

    assert response.status_code == status
    assert response.json()["error"]["code"] == code


def test_bad_batch_is_422_and_names_item_and_field(stack: Stack):
    response = requests.post(
        f"{stack.gateway_url}/v1/batch",
        json=[IRIS_SETOSA, {**IRIS_SETOSA, "sepal_width": None}],
        timeout=10,
    )

    assert response.status_code == 422
    (problem,) = response.json()["error"]["details"]
    assert (problem["item"], problem["field"]) == (1, "sepal_width")


def test_each_function_answers_on_its_own_port(stack: Stack):
    predict = requests.post(stack.function_url("predict"), json=IRIS_SETOSA, timeout=10)
    submit = requests.post(stack.function_url("batch_submit"), json=[IRIS_SETOSA], timeout=10)
    job_id = submit.json()["job_id"]
    status = requests.get(f"{stack.function_url('batch_status')}/{job_id}", timeout=5)

    assert predict.json()["prediction"] == 0
    assert submit.status_code == 202
    assert status.status_code == 200 and status.json()["job_id"] == job_id


def test_gateway_ready_reports_every_function(stack: Stack):
    response = requests.get(f"{stack.gateway_url}/ready", timeout=10)

    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert set(body["components"]) == {"predict", "batch_submit", "batch_status"}
