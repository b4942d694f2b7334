"""Training, registering and serving models through a real MLflow server and the GCS emulator."""

from __future__ import annotations

import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import mlflow
import numpy as np
import pytest
from google.cloud import storage
from mlflow import MlflowClient

from mlflow_server.train import ensure_production_model, train_and_register
from nimbus.errors import ModelUnavailable
from nimbus.registry import LoadedModel, ModelRef, ModelRegistry

if TYPE_CHECKING:
    from tests.integration.conftest import Emulators, MlflowServer

IRIS_FIELDS = ("sepal_length", "sepal_width", "petal_length", "petal_width")
IRIS_ROWS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3},
]
DIABETES_FIELDS = ("age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6")


@pytest.fixture(scope="module")
def iris_version(mlflow_server: MlflowServer) -> str:
    return train_and_register(mlflow_server.tracking_uri)


@pytest.fixture
def client(mlflow_server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.tracking_uri)


@pytest.fixture
def registry(client: MlflowClient, iris_version: str, tmp_path: Path) -> ModelRegistry:
    return ModelRegistry(client, "models:/iris@production", cache_dir=tmp_path / "cache")


def test_training_registers_version_one_with_the_production_alias(
    client: MlflowClient, registry: ModelRegistry, iris_version: str
):
    assert iris_version == "1"
    assert client.get_model_version_by_alias("iris", "production").version == "1"
    assert registry.resolve() == ModelRef("iris", "1")


def test_model_artifacts_live_in_the_artifact_store(
    client: MlflowClient, iris_version: str, artifact_root: str, emulators: Emulators | None
):
    location = client.get_model_version_download_uri("iris", iris_version)

    assert location.startswith(artifact_root + "/")
    if emulators is not None:
        assert location.startswith("gs://nimbus-models/mlflow/")
        # The bucket on the emulator, read with the official client as the services read it.
        prefix = location.removeprefix("gs://nimbus-models/")
        blobs = storage.Client().list_blobs("nimbus-models", prefix=prefix)
        assert f"{prefix}/MLmodel" in {blob.name for blob in blobs}


def test_production_predicts_iris_classes(registry: ModelRegistry):
    model = registry.production()

    predictions = model.predict(model.schema.rows_to_matrix(IRIS_ROWS))

    assert predictions == [0, 2]
    assert all(type(p) is int for p in predictions)
    assert (model.name, model.version, model.is_classifier) == ("iris", "1", True)
    assert model.schema.names == IRIS_FIELDS
    assert registry.production() is model


def test_single_row_predicts_without_warnings(registry: ModelRegistry):
    model = registry.production()

    with warnings.catch_warnings(action="error"):
        (prediction,) = model.predict(model.schema.row_to_matrix(IRIS_ROWS[1]))

    assert prediction == 2


def test_production_schema_reads_the_signature_without_loading(registry: ModelRegistry):
    schema = registry.production_schema()

    assert schema.names == IRIS_FIELDS
    assert [column.type for column in schema.columns] == ["double"] * 4
    assert not (registry.cache_dir / "iris" / "1").exists()


def test_concurrent_first_calls_load_the_model_once(registry: ModelRegistry):
    barrier = threading.Barrier(8)
    results: list[LoadedModel] = []

    def first_call() -> None:
        barrier.wait(timeout=10)
        results.append(registry.production())

    threads = [threading.Thread(target=first_call) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    assert len(results) == 8
    assert all(model is results[0] for model in results)


def test_a_regressor_serves_floats_with_its_own_schema(
    mlflow_server: MlflowServer, client: MlflowClient, tmp_path: Path
):
    version = train_and_register(mlflow_server.tracking_uri, dataset="diabetes")
    registry = ModelRegistry(client, "models:/diabetes@production", cache_dir=tmp_path)

    model = registry.production()
    rows = [dict.fromkeys(DIABETES_FIELDS, 0.0), dict.fromkeys(DIABETES_FIELDS, 0.05)]
    predictions = model.predict(model.schema.rows_to_matrix(rows))

    assert (model.name, model.version, model.is_classifier) == ("diabetes", version, False)
    assert model.schema.names == DIABETES_FIELDS
    assert registry.production_schema() == model.schema
    assert len(predictions) == 2
    assert all(type(p) is float for p in predictions)
    assert predictions[0] != predictions[1]


def test_ensure_production_model_is_idempotent(
    mlflow_server: MlflowServer, client: MlflowClient, iris_version: str
):
    first = ensure_production_model(mlflow_server.tracking_uri)
    second = ensure_production_model(mlflow_server.tracking_uri)

    assert first == second == iris_version
    assert [v.version for v in client.search_model_versions("name = 'iris'")] == ["1"]


def test_an_unknown_model_is_unavailable(client: MlflowClient, tmp_path: Path):
    registry = ModelRegistry(client, "models:/no-such-model@production", cache_dir=tmp_path)

    with pytest.raises(ModelUnavailable) as raised:
        registry.production()
    with pytest.raises(ModelUnavailable):
        registry.production_schema()

    assert raised.value.status == 503
    assert "no-such-model" in raised.value.message
    assert "Traceback" not in raised.value.message


def test_an_unknown_version_is_unavailable(client: MlflowClient, iris_version: str, tmp_path: Path):
    registry = ModelRegistry(client, "models:/iris/99", cache_dir=tmp_path)

    with pytest.raises(ModelUnavailable, match="no version 99"):
        registry.production()


def test_a_warm_cache_loads_with_the_server_stopped(
    start_mlflow: Callable[[], MlflowServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    server = start_mlflow()
    cache = tmp_path / "cache"
    version = train_and_register(server.tracking_uri)
    client = MlflowClient(tracking_uri=server.tracking_uri)
    ModelRegistry(client, "models:/iris@production", cache_dir=cache).production()
    server.stop()

    def no_download(*args: object, **kwargs: object) -> str:
        raise AssertionError("a warm cache must not download")

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", no_download)
    # A new process would build a new registry: nothing in memory, only the cache on disk.
    started = time.monotonic()
    model = ModelRegistry(client, f"models:/iris/{version}", cache_dir=cache).production()
    cold_load_seconds = time.monotonic() - started

    assert model.predict(np.array([list(row.values()) for row in IRIS_ROWS])) == [0, 2]
    assert cold_load_seconds < 10
    # Resolving an alias needs the registry: that fails as a 503, quickly.
    with pytest.raises(ModelUnavailable):
        ModelRegistry(client, "models:/iris@production", cache_dir=cache).production()
