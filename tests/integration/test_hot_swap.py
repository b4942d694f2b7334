"""Hot swap against a real MLflow server and the GCS emulator.

The served version follows the `production` alias within the deadline while predictions keep
flowing, a broken version never replaces a good one, a stopped registry stops no prediction,
and batch validation follows the alias without loading a model.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import mlflow
import numpy as np
import pytest
from mlflow import MlflowClient
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from mlflow_server.train import PRODUCTION_ALIAS, train_and_register
from nimbus import api, model_watch
from nimbus.registry import ModelRegistry
from tests.integration.test_registry import DIABETES_FIELDS, IRIS_FIELDS, IRIS_ROWS

if TYPE_CHECKING:
    from tests.integration.conftest import MlflowServer

SWAP_DEADLINE = 5.0  # the promise: a moved alias is served within 5 s
IRIS_MATRIX = np.array([[row[name] for name in IRIS_FIELDS] for row in IRIS_ROWS])
WATCHER_PREFIX = "nimbus-model-watch-"

T = TypeVar("T")
MakeRegistry = Callable[..., ModelRegistry]


def wait_for(condition: Callable[[], T], *, timeout: float, what: str) -> T:
    """The condition's first truthy value, polled every 50 ms for at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"waited {timeout}s for {what}"
        time.sleep(0.05)


@dataclass(frozen=True)
class Call:
    registry: int  # which of the registries answered
    started: float
    version: str | None
    error: BaseException | None = None


def predict_in_a_loop(
    registry: ModelRegistry, index: int, stop: threading.Event, calls: list[Call]
) -> None:
    """What a busy process does: production().predict, back to back, until told to stop."""
    while not stop.is_set():
        started = time.monotonic()
        try:
            model = registry.production()
            assert model.predict(IRIS_MATRIX) == [0, 2]
            calls.append(Call(index, started, model.version))
        except BaseException as error:
            calls.append(Call(index, started, None, error))
        # Requests arrive over a network; a loop with no pause at all would hold the GIL
        # against the very watcher thread under test.
        time.sleep(0.0005)


def watcher_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name.startswith(WATCHER_PREFIX)}


@pytest.fixture(scope="module")
def iris_versions(mlflow_server: MlflowServer) -> tuple[str, str]:
    """Two good iris versions in this module's own registry."""
    first = train_and_register(mlflow_server.tracking_uri, alias=None)
    second = train_and_register(mlflow_server.tracking_uri, alias=None)
    return first, second


@pytest.fixture
def client(mlflow_server: MlflowServer) -> MlflowClient:
    return MlflowClient(tracking_uri=mlflow_server.tracking_uri)


@pytest.fixture
def promote(client: MlflowClient) -> Callable[[str], None]:
    """Move iris@production, as `nimbus model promote iris VERSION` does."""

    def move(version: str) -> None:
        client.set_registered_model_alias("iris", PRODUCTION_ALIAS, version)

    return move


@pytest.fixture
def make_registry(client: MlflowClient, tmp_path: Path) -> Iterator[MakeRegistry]:
    """Registries with caches of their own, as separate processes would have; closed after."""
    made: list[ModelRegistry] = []

    def make(model_uri: str = "models:/iris@production", **options: Any) -> ModelRegistry:
        registry = ModelRegistry(
            client, model_uri, cache_dir=tmp_path / f"cache-{len(made)}", **options
        )
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


def test_a_moved_alias_is_served_in_time_without_a_failed_call(
    iris_versions: tuple[str, str], promote: Callable[[str], None], make_registry: MakeRegistry
):
    first, second = iris_versions
    promote(first)
    # Two "processes", each with its own cache and its own watcher at the default interval.
    registries = [make_registry(), make_registry()]
    assert [registry.production().version for registry in registries] == [first, first]
    calls: list[Call] = []
    stop = threading.Event()
    loops = [
        threading.Thread(target=predict_in_a_loop, args=(registry, index, stop, calls))
        for index, registry in enumerate(registries)
    ]
    for loop in loops:
        loop.start()
    try:
        time.sleep(1.0)
        promote(second)
        # The alias moved during that call; the deadline counts from when it returned.
        moved_at = time.monotonic()
        # Keep predicting past the deadline, so calls after it exist to be checked.
        time.sleep(SWAP_DEADLINE + 1.0)
    finally:
        stop.set()
        for loop in loops:
            loop.join(timeout=10)

    assert [call.error for call in calls if call.error is not None] == []
    late = [call for call in calls if call.started > moved_at + SWAP_DEADLINE]
    assert {call.registry for call in late} == {0, 1}
    assert {call.version for call in late} == {second}
    for index in (0, 1):
        versions = [call.version for call in calls if call.registry == index]
        switch = versions.index(second)
        # One switch, never back: each process moved from the old version to the new once.
        assert set(versions[:switch]) == {first} and set(versions[switch:]) == {second}
        first_new = next(c for c in calls if c.registry == index and c.version == second)
        assert first_new.started - moved_at < SWAP_DEADLINE
    assert all(registry.status()["last_error"] is None for registry in registries)


def test_a_broken_version_leaves_the_old_one_serving_and_is_reported(
    iris_versions: tuple[str, str],
    client: MlflowClient,
    artifact_root: str,
    promote: Callable[[str], None],
    make_registry: MakeRegistry,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
):
    first, second = iris_versions
    promote(first)
    # A version whose source holds no artifacts at all, and one whose artifacts are no model.
    missing = client.create_model_version("iris", f"{artifact_root}/no-such-model", run_id=None)
    run = client.create_run("0")
    client.log_text(run.info.run_id, "not a model", "model/notes.txt")
    not_a_model = client.create_model_version(
        "iris", f"{run.info.artifact_uri}/model", run_id=run.info.run_id
    )
    broken = {missing.version: missing.source, not_a_model.version: not_a_model.source}
    attempts: list[str] = []
    download = mlflow.artifacts.download_artifacts

    def counted_download(*args: Any, **kwargs: Any) -> str:
        uri = str(kwargs.get("artifact_uri") or args[0])
        attempts.extend(v for v, source in broken.items() if uri.startswith(source))
        return download(*args, **kwargs)

    monkeypatch.setattr(mlflow.artifacts, "download_artifacts", counted_download)
    registry = make_registry(refresh_seconds=0.5)
    assert registry.production().version == first

    for version in broken:
        with caplog.at_level(logging.DEBUG, logger="nimbus.model_watch"):
            caplog.clear()
            promote(version)
            status = wait_for(
                lambda version=version: (
                    (s := registry.status())["last_error"]
                    and s["last_error"]["version"] == version
                    and s
                ),
                timeout=SWAP_DEADLINE,
                what=f"readiness to report version {version}",
            )
            time.sleep(2.0)  # four more checks at 0.5 s: none may load or log it again

        model = registry.production()
        assert (model.version, model.predict(IRIS_MATRIX)) == (first, [0, 2])
        assert status["model"] == {"name": "iris", "version": first}
        assert status["registry"] == "ok"
        assert status["last_error"]["message"]
        assert attempts.count(version) == 1
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and f"version {version}" in errors[0].getMessage()

    promote(second)
    wait_for(
        lambda: registry.production().version == second,
        timeout=SWAP_DEADLINE,
        what=f"version {second} to be served",
    )
    assert registry.status()["last_error"] is None


def test_a_failed_version_is_tried_again_after_the_back_off(
    iris_versions: tuple[str, str],
    client: MlflowClient,
    artifact_root: str,
    promote: Callable[[str], None],
    make_registry: MakeRegistry,
    tmp_path: Path,
):
    first, _ = iris_versions
    promote(first)
    pending = client.create_model_version("iris", f"{artifact_root}/uploaded-late", run_id=None)
    registry = make_registry(refresh_seconds=0.3, retry_failed_after=1.0)
    registry.production()
    promote(pending.version)
    wait_for(lambda: registry.status()["last_error"], timeout=SWAP_DEADLINE, what="the failure")
    assert registry.production().version == first

    # The artifacts arrive late (an upload still running when the alias moved).
    good = client.get_model_version_download_uri("iris", first)
    local = mlflow.artifacts.download_artifacts(artifact_uri=good, dst_path=str(tmp_path))
    get_artifact_repository(pending.source).log_artifacts(local)

    wait_for(
        lambda: registry.production().version == pending.version,
        timeout=SWAP_DEADLINE,
        what="the retried version to be served",
    )
    assert registry.status()["last_error"] is None


def test_a_hung_or_stopped_registry_stops_no_prediction(
    start_mlflow: Callable[[], MlflowServer], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    # A check that hangs counts as unreachable after 1 s here (10 s in service), well before
    # the MLflow client gives up on it.
    monkeypatch.setattr(model_watch, "STALLED_CHECK_SECONDS", 1.0)
    server = start_mlflow()
    assert server.service.process is not None
    group = server.service.process.pid
    version = train_and_register(server.tracking_uri)
    client = MlflowClient(tracking_uri=server.tracking_uri)
    registry = ModelRegistry(
        client, "models:/iris@production", cache_dir=tmp_path / "cache", refresh_seconds=0.5
    )
    cold = ModelRegistry(client, "models:/iris@production", cache_dir=tmp_path / "cold")

    def unreachable() -> dict[str, Any] | None:
        status = registry.status()
        return status if status["registry"] == "unreachable" else None

    calls: list[Call] = []
    stop = threading.Event()
    loop = threading.Thread(target=predict_in_a_loop, args=(registry, 0, stop, calls))
    try:
        registry.production()
        assert registry.production_schema().names == IRIS_FIELDS
        assert registry.status()["registry"] == "ok"
        loop.start()

        # The server hangs: it accepts connections and answers none.
        os.killpg(group, signal.SIGSTOP)
        try:
            hung = wait_for(unreachable, timeout=10, what="a hung registry to be reported")
        finally:
            os.killpg(group, signal.SIGCONT)
        wait_for(
            lambda: registry.status()["registry"] == "ok",
            timeout=30,
            what="the registry to answer again",
        )

        # The server is gone.
        server.stop()
        gone = wait_for(unreachable, timeout=10, what="a stopped registry to be reported")
        time.sleep(1.0)  # more checks against the stopped server
        ready = api.predict_ready(registry)
        unready = api.predict_ready(cold)
    finally:
        stop.set()
        loop.join(timeout=10)
        registry.close()
        cold.close()

    assert calls and [call.error for call in calls if call.error is not None] == []
    assert {call.version for call in calls} == {version}
    assert registry.production_schema().names == IRIS_FIELDS
    for status in (hung, gone):
        assert status["model"] == {"name": "iris", "version": version}
        assert status["last_error"] is None
    assert gone["checked_at"] > hung["checked_at"]
    # Readiness: still 200 with the cached model, and it says the registry is unreachable.
    assert ready.status_code == 200
    assert ready.get_json()["status"] == "ready"
    assert ready.get_json()["registry"] == "unreachable"
    assert ready.headers["X-Nimbus-Model"] == f"iris/{version}"
    # A process that never loaded a model has nothing to serve: 503, and it says why.
    assert unready.status_code == 503
    assert unready.get_json()["registry"] == "unreachable"
    assert unready.get_json()["model"] is None
    assert unready.get_json()["error"]["code"] == "model_unavailable"


def test_the_batch_schema_follows_a_move_to_other_inputs(
    mlflow_server: MlflowServer, make_registry: MakeRegistry
):
    name = "hot-swap-schema"  # a model of this test's own, so iris stays as the others need it
    train_and_register(mlflow_server.tracking_uri, dataset="iris", model_name=name)
    registry = make_registry(f"models:/{name}@production")
    assert registry.production_schema().names == IRIS_FIELDS

    train_and_register(mlflow_server.tracking_uri, dataset="diabetes", model_name=name)
    moved_at = time.monotonic()
    wait_for(
        lambda: registry.production_schema().names == DIABETES_FIELDS,
        timeout=SWAP_DEADLINE,
        what="the diabetes signature",
    )

    assert time.monotonic() - moved_at < SWAP_DEADLINE
    # Validation alone never loads an estimator.
    assert registry.current() is None
    assert not (registry.cache_dir / name).exists()


def test_close_stops_the_watcher_and_a_dropped_registry_stops_its_own(
    iris_versions: tuple[str, str],
    client: MlflowClient,
    promote: Callable[[str], None],
    tmp_path: Path,
):
    promote(iris_versions[0])
    before = watcher_threads()
    closed = ModelRegistry(
        client, "models:/iris@production", cache_dir=tmp_path / "a", refresh_seconds=0.2
    )
    closed.production()
    (closed_thread,) = watcher_threads() - before
    dropped = ModelRegistry(
        client, "models:/iris@production", cache_dir=tmp_path / "b", refresh_seconds=0.2
    )
    dropped.production()
    (dropped_thread,) = watcher_threads() - before - {closed_thread}

    closed.close()
    del dropped
    gc.collect()
    dropped_thread.join(timeout=5)

    # Daemon threads never keep a process alive; both ended here.
    assert closed_thread.daemon and dropped_thread.daemon
    assert not closed_thread.is_alive()
    assert not dropped_thread.is_alive()
    # A closed registry still serves what it loaded; a pinned version starts no watcher.
    assert closed.production().predict(IRIS_MATRIX) == [0, 2]
    pinned = ModelRegistry(client, f"models:/iris/{iris_versions[0]}", cache_dir=tmp_path / "a")
    pinned.production()
    assert watcher_threads() - before == set()
