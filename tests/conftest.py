"""The real local stack, started once per test session on free ports.

Tests never share a running `make run`: every port here is picked free, and the stack's state
lives in a temporary folder that goes away with the session.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from nimbus.config import Settings
from nimbus.stack import Stack, free_port

IRIS_SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
IRIS_VIRGINICA = {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3}


def stack_settings(home: Path, **overrides: object) -> Settings:
    """Settings for a stack of its own: free ports, state under `home`, no outside environment."""
    ports = {
        name: free_port()
        for name in (
            "port",
            "predict_port",
            "batch_submit_port",
            "batch_status_port",
            "mlflow_port",
            "redis_port",
            "pubsub_port",
            "gcs_port",
        )
    }
    return replace(Settings.from_env({}), home=str(home), **ports, **overrides)  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The whole system: emulators, redis-server, MLflow with iris@production, three functions,
    one worker, the gateway."""
    settings = stack_settings(tmp_path_factory.mktemp("stack"))
    with Stack(settings) as running:
        yield running


@pytest.fixture(scope="session")
def stack_env(stack: Stack) -> dict[str, str]:
    """The environment a process of the stack gets: where Redis, Pub/Sub, GCS and MLflow are."""
    return stack.env()


def run_nimbus(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run the `nimbus` CLI in its own process, as a user would, with `env` added."""
    return subprocess.run(
        [sys.executable, "-m", "nimbus.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
