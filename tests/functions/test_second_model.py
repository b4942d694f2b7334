"""The same code serves another model, chosen only by configuration (NIMBUS_MODEL_URI)."""

from __future__ import annotations

import pytest
from sklearn.datasets import load_diabetes

from mlflow_server.train import train_and_register
from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA
from tests.functions.conftest import MakeClient
from tests.functions.test_predict import assert_error

DIABETES_FIELDS = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]


@pytest.fixture
def diabetes_client(stack: Stack, function_client: MakeClient):
    client = function_client("predict", NIMBUS_MODEL_URI="models:/diabetes@production")
    # Trained with the stack's environment (set by function_client): artifacts go to its GCS.
    train_and_register(stack.mlflow_url, dataset="diabetes")
    return client


def test_a_regressor_on_other_features_is_served_by_configuration(diabetes_client):
    row = dict(zip(DIABETES_FIELDS, load_diabetes().data[0].tolist(), strict=True))

    response = diabetes_client.post("/v1/predict", json=row)

    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    assert isinstance(body["prediction"], float)
    assert 25 < body["prediction"] < 346  # within the range of the diabetes target
    assert body["model"]["name"] == "diabetes"


def test_its_own_signature_validates_the_input(diabetes_client):
    error = assert_error(diabetes_client.post("/v1/predict", json=IRIS_SETOSA), 422)

    problems = {(p["field"], p["problem"]) for p in error["details"]}
    assert ("sepal_length", "unknown field") in problems
    assert ("bmi", "missing") in problems


def test_probabilities_are_refused_for_a_regressor(diabetes_client):
    row = dict.fromkeys(DIABETES_FIELDS, 0.01)

    assert_error(diabetes_client.post("/v1/predict?proba=true", json=row), 400, "bad_request")
