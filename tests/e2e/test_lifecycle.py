"""Model lifecycle on a stack of its own: promote, broken versions, a registry outage.

Each test leaves iris@production on a good version for the next; the module's stack is its
own so the rest of the suite keeps serving version 1.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests
from mlflow import MlflowClient

from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA, run_nimbus, stack_settings
from tests.e2e.test_guide import wait_for_status

pytestmark = pytest.mark.e2e

SWAP_DEADLINE = 5.0  # the promise: every process serves a moved alias within 5 s


@pytest.fixture(scope="module")
def lifecycle_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = stack_settings(tmp_path_factory.mktemp("lifecycle"), workers=2)
    with Stack(settings) as running:
        yield running


def nimbus(stack: Stack, *args: str) -> str:
    """The CLI next to this stack (it finds it by NIMBUS_HOME); its output, or the test fails."""
    done = run_nimbus(*args, NIMBUS_HOME=str(stack.home))
    assert done.returncode == 0, done.stderr
    return done.stdout


def served_version(stack: Stack) -> str:
    response = requests.post(f"{stack.gateway_url}/v1/predict", json=IRIS_SETOSA, timeout=10)
    assert response.status_code == 200, response.text
    return str(response.json()["model"]["version"])


def wait_for_version(stack: Stack, version: str, timeout: float = SWAP_DEADLINE + 5) -> None:
    deadline = time.monotonic() + timeout
    while served_version(stack) != version:
        assert time.monotonic() < deadline, f"still not serving version {version}"
        time.sleep(0.2)


@dataclass
class Answer:
    started: float
    status: int
    version: str | None


def predict_steadily(stack: Stack, stop: threading.Event, answers: list[Answer]) -> None:
    session = requests.Session()
    while not stop.is_set():
        started = time.monotonic()
        try:
            response = session.post(f"{stack.gateway_url}/v1/predict", json=IRIS_SETOSA, timeout=10)
            version = response.json().get("model", {}).get("version")
            answers.append(Answer(started, response.status_code, version))
        except requests.RequestException:
            answers.append(Answer(started, 0, None))
        time.sleep(0.01)


def test_promote_during_a_stream_of_predictions(lifecycle_stack: Stack):
    stack = lifecycle_stack
    assert "registered iris version 2" in nimbus(stack, "model", "train", "--no-alias")
    assert served_version(stack) == "1"
    stop, answers = threading.Event(), []
    stream = threading.Thread(target=predict_steadily, args=(stack, stop, answers))
    stream.start()
    try:
        time.sleep(1)
        asked_at = time.monotonic()
        assert "iris@production -> version 2 (was 1)" in nimbus(
            stack, "model", "promote", "iris", "2"
        )
        # The alias moved while the CLI ran; the deadline counts from when it returned.
        promoted_at = time.monotonic()
        time.sleep(SWAP_DEADLINE + 3)
    finally:
        stop.set()
        stream.join(timeout=15)

    assert [a for a in answers if a.status != 200] == []
    late = [a for a in answers if a.started > promoted_at + SWAP_DEADLINE]
    assert late, "no prediction was made after the deadline"
    assert {a.version for a in late} == {"2"}
    assert {a.version for a in answers if a.started < asked_at} == {"1"}


def test_model_list_shows_what_each_component_serves(lifecycle_stack: Stack):
    wait_for_version(lifecycle_stack, "2")
    deadline = time.monotonic() + 15  # worker heartbeats come every 5 s
    while True:
        listing = nimbus(lifecycle_stack, "model", "list", "iris")
        served = [
            line for line in listing.splitlines() if line.strip().startswith(("predict", "worker"))
        ]
        if len(served) == 3 and all(line.endswith("iris/2") for line in served):
            break
        assert time.monotonic() < deadline, listing
        time.sleep(1)
    assert "@production" in next(line for line in listing.splitlines() if "version 2" in line)


def test_a_batch_submitted_just_before_a_promote_runs_on_one_version(lifecycle_stack: Stack):
    stack = lifecycle_stack
    items = [IRIS_SETOSA, IRIS_VIRGINICA] * 5_000  # one result page
    job = requests.post(f"{stack.gateway_url}/v1/batch", json=items, timeout=30).json()
    nimbus(stack, "model", "promote", "iris", "1")

    done = wait_for_status(stack.gateway_url, job["job_id"], {"SUCCESS", "FAILURE"}, timeout=120)

    assert done["status"] == "SUCCESS"
    assert done["model"]["version"] in {"1", "2"}
    assert done["result"] == [{"prediction": 0}, {"prediction": 2}] * 5_000
    wait_for_version(stack, "1")


def test_a_broken_version_leaves_the_old_one_serving(lifecycle_stack: Stack):
    stack = lifecycle_stack
    wait_for_version(stack, "1")
    client = MlflowClient(tracking_uri=stack.mlflow_url)
    broken = client.create_model_version("iris", source="gs://nimbus-models/nowhere/model")
    nimbus(stack, "model", "promote", "iris", broken.version)
    time.sleep(SWAP_DEADLINE + 1)

    assert served_version(stack) == "1"
    ready = requests.get(f"{stack.gateway_url}/ready", timeout=10).json()
    predict = ready["components"]["predict"]["body"]
    assert predict["model"]["version"] == "1"
    assert predict["last_error"]["version"] == broken.version

    nimbus(stack, "model", "promote", "iris", "2")
    wait_for_version(stack, "2")


def wait_for_every_component(stack: Stack, version: str, timeout: float = 15) -> None:
    """Until predict and every worker serve `version` (`nimbus model list`); each process
    polls the alias on its own, so one serving it says nothing of the others."""
    deadline = time.monotonic() + timeout  # worker heartbeats come every 5 s
    while True:
        listing = nimbus(stack, "model", "list", "iris")
        served = [
            line for line in listing.splitlines() if line.strip().startswith(("predict", "worker"))
        ]
        if len(served) == 3 and all(line.endswith(f"iris/{version}") for line in served):
            return
        assert time.monotonic() < deadline, listing
        time.sleep(1)


def test_predictions_continue_while_the_registry_is_down(lifecycle_stack: Stack):
    stack = lifecycle_stack
    wait_for_version(stack, "2")
    # The batch below must run on version 2: the workers too must have moved before the
    # registry goes away, or they keep the version they had (which is the point of the test).
    wait_for_every_component(stack, "2")
    stack.service("mlflow").stop()
    try:
        time.sleep(SWAP_DEADLINE)
        versions = {served_version(stack) for _ in range(20)}
        ready = requests.get(f"{stack.function_url('predict')}/ready", timeout=10)
        job = requests.post(f"{stack.gateway_url}/v1/batch", json=[IRIS_SETOSA], timeout=10)
        done = wait_for_status(stack.gateway_url, job.json()["job_id"], {"SUCCESS", "FAILURE"})
    finally:
        stack.restart("mlflow")

    assert versions == {"2"}
    assert ready.status_code == 200
    assert ready.json()["registry"] == "unreachable", ready.json()
    assert done["status"] == "SUCCESS", done
    assert done["model"]["version"] == "2"
