"""Training, registering and serving models through a real MLflow server and the GCS emulator."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
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
from nimbus.registry import (
    FAST_ARRAYS_FILE,
    FAST_MANIFEST_FILE,
    LoadedModel,
    ModelRef,
    ModelRegistry,
    RegistryUnreachable,
    RestRegistryClient,
)
from nimbus.schema import InputSchema
from nimbus.stack import free_port

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


# -- the services' registry client and the fast form ----------------------------------------

_FRESH_PROCESS = """
import json, sys
import numpy as np
from nimbus.registry import ModelRegistry, RestRegistryClient
from pathlib import Path
registry = ModelRegistry(
    RestRegistryClient(sys.argv[1]), sys.argv[2], cache_dir=Path(sys.argv[3]),
    serving=sys.argv[5] == "serving",
)
model = registry.production()
rows = json.loads(sys.argv[4])
matrix = model.schema.rows_to_matrix(rows)
answer = {
    "version": model.version,
    "predictions": model.predict(matrix),
    "proba": model.predict_proba(matrix) if model.is_classifier else None,
    "imported": sorted(m for m in ("mlflow", "sklearn", "skops", "scipy", "pandas", "redis")
                       if m in sys.modules),
}
registry.close()
print(json.dumps(answer))
"""


def _fresh_process(
    tracking_uri: str, model_uri: str, cache: Path, rows: object, *, serving: bool = False
) -> dict:
    """Load and predict in a new interpreter, as a restarted function would; its answer."""
    done = subprocess.run(
        [sys.executable, "-c", _FRESH_PROCESS, tracking_uri, model_uri, str(cache),
         json.dumps(rows), "serving" if serving else "-"],
        capture_output=True, text=True, timeout=180, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def test_the_rest_client_answers_as_mlflows_does(
    mlflow_server: MlflowServer, client: MlflowClient, iris_version: str, tmp_path: Path
):
    rest = RestRegistryClient(mlflow_server.tracking_uri)

    assert rest.get_model_version_by_alias("iris", "production").version == iris_version
    assert rest.get_model_version_download_uri(
        "iris", iris_version
    ) == client.get_model_version_download_uri("iris", iris_version)
    registry = ModelRegistry(rest, "models:/iris@production", cache_dir=tmp_path)
    assert registry.resolve() == ModelRef("iris", iris_version)
    with pytest.raises(ModelUnavailable, match="no model 'no-such-model'"):
        ModelRegistry(rest, "models:/no-such-model@production", cache_dir=tmp_path).resolve()
    with pytest.raises(ModelUnavailable, match="no version 99"):
        ModelRegistry(rest, "models:/iris/99", cache_dir=tmp_path).production()
    nobody = RestRegistryClient(f"http://127.0.0.1:{free_port()}", timeout=5)
    started = time.monotonic()
    with pytest.raises(RegistryUnreachable):
        ModelRegistry(nobody, "models:/iris@production", cache_dir=tmp_path).resolve()
    assert time.monotonic() - started < 5  # refused: no retries with backoff


def test_a_restart_loads_the_fast_form_without_mlflow_or_scikit_learn(
    mlflow_server: MlflowServer, iris_version: str, tmp_path: Path
):
    cache = tmp_path / "cache"
    registry = ModelRegistry(MlflowClient(mlflow_server.tracking_uri), "models:/iris@production",
                             cache_dir=cache)  # fmt: skip
    first = registry.production()
    registry.close()
    folder = cache / "iris" / iris_version
    manifest = json.loads((folder / FAST_MANIFEST_FILE).read_text())
    arrays = (folder / FAST_ARRAYS_FILE).read_bytes()
    assert manifest["sha256"] == hashlib.sha256(arrays).hexdigest()
    assert InputSchema.from_json(manifest["schema"]) == first.schema

    # The scikit-learn estimator, loaded the way MLflow serves it, is the reference.
    estimator = mlflow.sklearn.load_model(str(folder))
    rng = np.random.default_rng(5)
    matrix = np.vstack([first.schema.rows_to_matrix(IRIS_ROWS), rng.normal(4, 3, (300, 4))])
    rows = [dict(zip(IRIS_FIELDS, row, strict=True)) for row in matrix.tolist()]
    expected = estimator.predict(matrix).tolist()
    expected_proba = estimator.predict_proba(matrix).tolist()
    assert first.predict(matrix) == expected

    fresh = _fresh_process(mlflow_server.tracking_uri, "models:/iris@production", cache, rows)

    assert fresh["version"] == iris_version
    assert fresh["predictions"] == expected
    assert [list(p.values()) for p in fresh["proba"]] == expected_proba
    assert fresh["imported"] == []  # no mlflow, skops, scikit-learn, scipy, pandas or redis


def test_a_damaged_fast_form_is_ignored_and_written_again(
    mlflow_server: MlflowServer, iris_version: str, tmp_path: Path
):
    client = MlflowClient(mlflow_server.tracking_uri)
    cache = tmp_path / "cache"
    ModelRegistry(client, f"models:/iris/{iris_version}", cache_dir=cache).production()
    arrays = cache / "iris" / iris_version / FAST_ARRAYS_FILE
    damaged = bytearray(arrays.read_bytes())
    damaged[-200] ^= 0xFF  # a flipped byte inside the coefficients
    arrays.write_bytes(bytes(damaged))

    model = ModelRegistry(client, f"models:/iris/{iris_version}", cache_dir=cache).production()

    assert model.predict(model.schema.rows_to_matrix(IRIS_ROWS)) == [0, 2]
    manifest = json.loads((arrays.parent / FAST_MANIFEST_FILE).read_text())
    assert manifest["sha256"] == hashlib.sha256(arrays.read_bytes()).hexdigest()


def test_a_serving_registry_loads_through_mlflow_in_a_child_only(
    mlflow_server: MlflowServer, iris_version: str, tmp_path: Path
):
    cache = tmp_path / "cache"  # empty: the version must be downloaded and loaded first

    fresh = _fresh_process(
        mlflow_server.tracking_uri, "models:/iris@production", cache, IRIS_ROWS, serving=True
    )

    assert fresh["version"] == iris_version
    assert fresh["predictions"] == [0, 2]
    assert fresh["imported"] == []  # the child imported MLflow and scikit-learn, not the process
    assert (cache / "iris" / iris_version / FAST_MANIFEST_FILE).is_file()
