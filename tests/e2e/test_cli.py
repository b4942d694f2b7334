"""The `nimbus` CLI against the running stack, as a user types it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA, run_nimbus

pytestmark = pytest.mark.e2e


def nimbus(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return run_nimbus(*args, NIMBUS_URL=stack.gateway_url)


def test_predict_from_fields(stack: Stack):
    fields = [f"--field={name}={value}" for name, value in IRIS_VIRGINICA.items()]

    done = nimbus(stack, "predict", *fields)

    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["prediction"] == 2


def test_batch_submit_wait_and_results_from_a_csv(stack: Stack, tmp_path: Path):
    items = tmp_path / "items.csv"
    names = list(IRIS_SETOSA)
    rows = [IRIS_SETOSA, IRIS_VIRGINICA] * 3
    items.write_text(
        ",".join(names) + "\n" + "".join(",".join(str(r[n]) for n in names) + "\n" for r in rows)
    )

    submitted = nimbus(stack, "batch", "submit", str(items), "--wait", "--timeout", "60")
    job_id = submitted.stdout.strip()
    results = nimbus(stack, "batch", "results", job_id, "-o", str(tmp_path / "out.jsonl"))
    status = nimbus(stack, "batch", "status", job_id)

    assert submitted.returncode == 0, submitted.stderr
    assert "SUCCESS" in submitted.stderr
    assert results.returncode == 0, results.stderr
    lines = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [line["prediction"] for line in lines] == [0, 2] * 3
    assert json.loads(status.stdout)["status"] == "SUCCESS"


def test_errors_are_clear_and_exit_non_zero(stack: Stack, tmp_path: Path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps([{"sepal_length": 1}]))

    done = nimbus(stack, "batch", "submit", str(bad))
    unreachable = run_nimbus("batch", "status", "x", "--url", "http://127.0.0.1:9")

    assert done.returncode == 1 and "422 validation_failed" in done.stderr
    assert unreachable.returncode == 3 and "cannot be reached" in unreachable.stderr
