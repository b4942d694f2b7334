from __future__ import annotations

import pytest

from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA
from tests.functions.conftest import MakeClient


@pytest.fixture
def client(function_client: MakeClient):
    return function_client("predict")


def test_health_answers_the_seed_body(client):
    response = client.get("/")

    assert response.status_code == 200
    assert response.get_json() == {"status": "NimbusAPI is running."}


@pytest.mark.parametrize("path", ["/v1/predict", "/"])
def test_predicts_the_guide_example(client, path):
    response = client.post(path, json=IRIS_SETOSA)

    assert response.status_code == 200
    body = response.get_json()
    assert body["prediction"] == 0
    assert isinstance(body["prediction"], int)
    assert body["model"] == {"name": "iris", "version": "1"}
    assert response.headers["X-Nimbus-Model"] == "iris/1"


def test_predicts_another_class(client):
    assert client.post("/v1/predict", json=IRIS_VIRGINICA).get_json()["prediction"] == 2


def test_ready_names_the_loaded_model(client):
    response = client.get("/ready")

    assert response.status_code == 200
    body = response.get_json()
    assert body["status"] == "ready"
    assert body["model"] == {"name": "iris", "version": "1"}
    assert body["registry"] == "ok"


def assert_error(response, status: int, code: str | None = None) -> dict:
    """The one error shape, and nothing of a traceback."""
    assert response.status_code == status, response.get_data(as_text=True)
    body = response.get_json()
    assert set(body) == {"error"}
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    assert "Traceback" not in response.get_data(as_text=True)
    return body["error"]


def test_missing_field_is_named(client):
    item = {k: v for k, v in IRIS_SETOSA.items() if k != "petal_width"}

    error = assert_error(client.post("/v1/predict", json=item), 422, "validation_failed")

    assert {"field": "petal_width", "problem": "missing"}.items() <= error["details"][0].items()


def test_every_problem_is_listed_at_once(client):
    item = {**IRIS_SETOSA, "sepal_length": "wide", "petal_length": True, "colour": "blue"}

    error = assert_error(client.post("/v1/predict", json=item), 422, "validation_failed")

    fields = {problem["field"] for problem in error["details"]}
    assert fields == {"sepal_length", "petal_length", "colour"}
    assert "wide" not in str(error) and "blue" not in str(error)  # no input echoed back


@pytest.mark.parametrize(
    ("body", "content_type", "status", "code"),
    [
        (b"{not json", "application/json", 400, "bad_request"),
        (b'{"sepal_length": NaN}', "application/json", 400, "bad_request"),
        (b'{"sepal_length": 1e400}', "application/json", 400, "bad_request"),
        (b"", "application/json", 400, "bad_request"),
        (b"\xff\xfe", "application/json", 400, "bad_request"),
        (b'"petals"', "application/json", 400, "bad_request"),
        (b"[1, 2]", "application/json", 422, "validation_failed"),
        (b"[]", "application/json", 422, "empty_input"),
        (b"sepal_length=5.1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
    ],
)
def test_bad_bodies_get_a_clear_4xx(client, body, content_type, status, code):
    response = client.post("/v1/predict", data=body, content_type=content_type)

    assert_error(response, status, code)


def test_body_over_the_limit_is_413(function_client: MakeClient):
    client = function_client("predict", NIMBUS_MAX_BODY_BYTES="64")

    response = client.post("/v1/predict", json={**IRIS_SETOSA, "padding": "x" * 100})

    assert_error(response, 413, "payload_too_large")


def test_wrong_method_and_unknown_path(client):
    error = assert_error(client.get("/v1/predict"), 405, "method_not_allowed")
    assert "POST" in error["message"]
    assert_error(client.get("/nowhere"), 404, "not_found")


def test_a_list_of_rows_answers_a_list_in_the_same_order(client):
    rows = [IRIS_VIRGINICA, IRIS_SETOSA, IRIS_VIRGINICA]

    response = client.post("/v1/predict", json=rows)

    assert response.status_code == 200
    assert [answer["prediction"] for answer in response.get_json()] == [2, 0, 2]
    assert response.headers["X-Nimbus-Model"] == "iris/1"


def test_rows_beyond_the_limit_are_413(function_client: MakeClient):
    client = function_client("predict", NIMBUS_MAX_PREDICT_ROWS="2")

    error = assert_error(client.post("/v1/predict", json=[IRIS_SETOSA] * 3), 413)

    assert "/v1/batch" in error["message"]


def test_row_problems_name_the_row(client):
    error = assert_error(client.post("/v1/predict", json=[IRIS_SETOSA, {}]), 422)

    assert {problem["item"] for problem in error["details"]} == {1}


def test_proba_adds_class_probabilities(client):
    response = client.post("/v1/predict?proba=true", json=IRIS_SETOSA)

    body = response.get_json()
    assert body["prediction"] == 0
    assert set(body["probabilities"]) == {"0", "1", "2"}
    assert abs(sum(body["probabilities"].values()) - 1) < 1e-9
    assert max(body["probabilities"], key=body["probabilities"].get) == "0"


def test_a_malformed_proba_flag_is_400(client):
    assert_error(client.post("/v1/predict?proba=maybe", json=IRIS_SETOSA), 400, "bad_request")
