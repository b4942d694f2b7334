"""A job that fails every attempt: retried with backoff, dead-lettered, recorded as FAILURE;
the jobs around it are untouched."""

from __future__ import annotations

import pytest

from tests.chaos.harness import Chaos

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_a_poison_job_is_dead_lettered_and_the_others_succeed(chaos: Chaos):
    attempts_allowed = chaos.stack.settings.max_delivery_attempts
    # The API never accepts such a record, so it is written straight into the store: its
    # inputs are not a list of items, which fails each attempt as a whole (not one item).
    with chaos.bus() as bus:
        poison = chaos.store.create({"not": "a list of items"}).id  # type: ignore[arg-type]
        bus.publish_job(poison)
    jobs = chaos.submit_jobs(199, 300)
    job_ids = list(jobs)

    finished = chaos.wait_finished([poison, *job_ids], timeout=240)

    assert finished == {"SUCCESS": 199, "FAILURE": 1}
    failed = chaos.status(poison)
    assert failed["status"] == "FAILURE"
    assert failed["error"]["code"] == "dead_lettered"
    assert "TypeError" in failed["error"]["message"]  # why the last attempt failed
    assert failed["attempts"] == attempts_allowed  # retried, but no hot redelivery loop
    chaos.assert_results_are_the_models(jobs)
