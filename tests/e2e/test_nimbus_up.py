"""`nimbus up` as a user runs it: it comes up, heals a dead worker, and leaves nothing behind."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
import requests

from nimbus.stack import http_ok, port_is_free
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA, stack_settings
from tests.e2e.test_guide import wait_for_status

pytestmark = pytest.mark.e2e


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie still answers kill(0); it is gone for our purposes.
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}"
        time.sleep(0.1)


def test_up_serves_restarts_a_dead_worker_and_stops_clean(tmp_path: Path):
    settings = stack_settings(tmp_path / "home")
    env = dict(os.environ)
    for spec in fields(settings):
        env[spec.metadata["env"]] = str(getattr(settings, spec.name))
    gateway = f"http://127.0.0.1:{settings.port}"
    ports = [
        getattr(settings, spec.name) for spec in fields(settings) if spec.name.endswith("port")
    ]
    state_path = tmp_path / "home" / "stack.json"
    up = subprocess.Popen(
        [sys.executable, "-m", "nimbus.cli", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_until(lambda: state_path.exists() or up.poll() is not None, 240, "nimbus up")
        assert up.poll() is None, up.stdout.read() if up.stdout else ""
        pids = json.loads(state_path.read_text())["pids"]
        assert (
            requests.post(f"{gateway}/v1/predict", json=IRIS_SETOSA, timeout=10).json()[
                "prediction"
            ]
            == 0
        )

        os.kill(pids["worker-1"], signal.SIGKILL)
        wait_until(
            lambda: json.loads(state_path.read_text())["pids"]["worker-1"] != pids["worker-1"],
            30,
            "the worker to be restarted",
        )
        job = requests.post(f"{gateway}/v1/batch", json=[IRIS_SETOSA, IRIS_VIRGINICA], timeout=10)
        done = wait_for_status(gateway, job.json()["job_id"], {"SUCCESS", "FAILURE"})
        assert done["result"] == [{"prediction": 0}, {"prediction": 2}]
        pids = json.loads(state_path.read_text())["pids"]
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(timeout=10)
            raise

    assert up.returncode == 0
    wait_until(lambda: not any(pid_alive(pid) for pid in pids.values()), 10, "every process to end")
    wait_until(lambda: all(port_is_free(port) for port in ports), 10, "every port to be free")
    assert not http_ok(f"{gateway}/healthz")
