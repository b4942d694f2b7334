"""A queue that is merely slow: jobs waiting behind long ones are not given up on."""

from __future__ import annotations

import signal
import time

import pytest

from tests.chaos.harness import Chaos, job_items

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


def test_jobs_queued_behind_long_ones_are_not_failed_as_lost(chaos: Chaos):
    """Each worker runs one job at a time here, and two long jobs take both for several
    reconciler periods. The short jobs behind them are PENDING all that while, with their
    messages safely queued: the reconciler may republish them, but not fail them."""
    chaos.restart_workers(worker_max_messages=1, chunk_rows=1, reconcile_after=1)
    long_items = job_items(0, 15_000)  # a lease renewal per item: several seconds
    long_jobs = [chaos.submit(long_items).json()["job_id"] for _ in range(2)]
    short = chaos.submit_jobs(6, 20)

    finished = chaos.wait_finished([*long_jobs, *short], timeout=240)

    errors = [chaos.status(job_id).get("error") for job_id in [*long_jobs, *short]]
    assert finished == {"SUCCESS": 8}, errors
    chaos.assert_results_are_the_models(short)


def test_the_reconciler_lets_go_of_jobs_once_they_run(chaos: Chaos):
    """Workers that stalled come back to a queue of overdue jobs: the reconciler republishes
    them while the workers claim them. Once claimed, a job is no longer "waiting for a first
    claim": it must leave the reconciler's index, and not be republished or failed again."""
    for worker in chaos.workers:
        chaos.signal(worker, signal.SIGSTOP)
    try:
        jobs = chaos.submit_jobs(40, 20)
        time.sleep(2 * chaos.stack.settings.reconcile_after)
    finally:
        for worker in chaos.workers:
            chaos.signal(worker, signal.SIGCONT)
    job_ids = list(jobs)
    assert chaos.wait_finished(job_ids, timeout=120) == {"SUCCESS": 40}
    republished = chaos.fields(job_ids, "republished")

    time.sleep(3 * chaos.stack.settings.reconcile_after)  # a few more reconciler passes

    strays = {
        job_id: status
        for job_id, status in chaos.pending_index().items()
        if job_id in jobs and status != "PENDING"
    }
    assert strays == {}, "finished jobs are still in the reconciler's index"
    assert chaos.fields(job_ids, "republished") == republished, "finished jobs are republished"
