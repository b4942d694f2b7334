"""At-least-once delivery: every job's message comes twice, and a job still runs once."""

from __future__ import annotations

import pytest

from tests.chaos.harness import Chaos, job_items

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_every_job_published_twice_runs_once(chaos: Chaos):
    with chaos.result_writes() as writes:
        jobs = chaos.submit_jobs(200, 300)
        job_ids = list(jobs)
        chaos.publish(job_ids, duplicate="1")  # as a publisher retry or a redelivery would
        finished = chaos.wait_finished(job_ids, timeout=240)

    assert finished == {"SUCCESS": 200}
    assert writes == dict.fromkeys(job_ids, 1), "a job's result was written more than once"
    assert {r["attempts"] for r in chaos.fields(job_ids, "attempts").values()} == {"1"}
    chaos.assert_results_are_the_models(jobs)


def test_a_duplicate_of_a_long_job_does_not_fail_it(chaos: Chaos):
    """The copy meets a live lease on every delivery while the job runs; running out of
    delivery attempts on it must not end the job the other delivery is running."""
    # Seconds of work in chunks of 10, longer than the copy's five deliveries take to run
    # out (the stack's retry backoff: 0.25 + 0.5 + 1 + 1 s).
    items = job_items(0, 45_000)
    job_id = chaos.submit(items).json()["job_id"]
    chaos.publish([job_id], duplicate="1")

    done = chaos.wait_for(job_id, timeout=180)

    assert done["status"] == "SUCCESS", done
    assert done["attempts"] == 1
    assert chaos.full_result(job_id)["result"] == chaos.predictions(items[:150]) * 300
