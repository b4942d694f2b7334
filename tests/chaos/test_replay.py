"""Replays: with the model that produced the results they change nothing; after a promote
every replayed job runs again on the new version, its revision one up."""

from __future__ import annotations

import math
import time
from collections import Counter

import pytest

from nimbus.stack import Stack
from tests.chaos.harness import Chaos, wait_until
from tests.conftest import run_nimbus

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

JOBS = 20


def nimbus(stack: Stack, *args: str) -> str:
    """The `nimbus` CLI, as a user runs it next to the local stack."""
    done = run_nimbus(*args, NIMBUS_HOME=str(stack.home))
    assert done.returncode == 0, done.stderr
    return done.stdout


def model_runs(chaos: Chaos, job_ids: set[str]) -> list[str]:
    """The jobs a worker started the model on, once per run, from the workers' logs."""
    return [
        job_id for _, kind, job_id in chaos.job_events() if kind == "started" and job_id in job_ids
    ]


def skipped_as_finished(chaos: Chaos, job_ids: set[str]) -> Counter[str]:
    """How often a worker found each job already finished when its message came."""
    return Counter(
        entry["job_id"]
        for worker in chaos.workers
        for entry in chaos.log_entries(worker.name)
        if entry.get("job_id") in job_ids and entry.get("message", "").endswith("skipped: finished")
    )


def test_a_replay_with_the_same_model_runs_nothing_again(chaos: Chaos):
    began = time.monotonic()
    jobs = chaos.submit_jobs(JOBS, 50)
    job_ids = set(jobs)
    assert chaos.wait_finished(list(job_ids), timeout=120) == {"SUCCESS": JOBS}
    before = {job_id: chaos.status(job_id) for job_id in job_ids}
    runs_before = model_runs(chaos, job_ids)
    skipped_before = skipped_as_finished(chaos, job_ids)

    since = math.ceil(time.monotonic() - began) + 5
    nimbus(chaos.stack, "replay", "--since", f"{since}s")

    # Every replayed message reaches a worker, which finds its job finished by this very model.
    wait_until(
        lambda: set(skipped_as_finished(chaos, job_ids) - skipped_before) == job_ids,
        timeout=120,
        what="every job's replayed message handled",
    )
    assert model_runs(chaos, job_ids) == runs_before, "the model ran again on a replay"
    assert {job_id: chaos.status(job_id) for job_id in job_ids} == before


def test_a_replay_after_a_promote_reruns_every_job_on_the_new_version(chaos: Chaos):
    jobs = chaos.submit_jobs(JOBS, 50)
    job_ids = list(jobs)
    assert chaos.wait_finished(job_ids, timeout=120) == {"SUCCESS": JOBS}
    before = {job_id: chaos.status(job_id) for job_id in job_ids}
    served = before[job_ids[0]]["model"]["version"]
    assert {body["model"]["version"] for body in before.values()} == {served}

    trained = nimbus(chaos.stack, "model", "train", "--no-alias")
    new_version = trained.split("version ")[1].split()[0]
    nimbus(chaos.stack, "model", "promote", "iris", new_version)
    wait_until(
        lambda: chaos.workers_serve(new_version), timeout=60, what=f"workers on {new_version}"
    )
    nimbus(chaos.stack, "replay", *job_ids)

    after = {
        job_id: wait_until(
            lambda job_id=job_id: (
                (body := chaos.status(job_id)).get("revision") == 1
                and not body["reprocessing"]
                and body
            ),
            timeout=120,
            what=f"job {job_id} re-run",
        )
        for job_id in job_ids
    }

    for job_id, body in after.items():
        assert body["status"] == "SUCCESS"
        assert body["model"] == {"name": "iris", "version": new_version}
        assert body["finished_at"] == before[job_id]["finished_at"]
        assert body["reprocessed_at"] > before[job_id]["finished_at"]
    chaos.assert_results_are_the_models(jobs)
