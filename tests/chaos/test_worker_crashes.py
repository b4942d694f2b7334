"""Workers killed, stopped and drained mid-run: no job lost, none run twice, no stale write."""

from __future__ import annotations

import signal
from collections import Counter

import pytest

from tests.chaos.harness import Chaos, job_items, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

JOBS = 200
ITEMS = 1000  # 100 chunks of 10: long enough that tens of jobs are in flight at once


def in_flight(chaos: Chaos, job_ids: list[str]) -> int:
    """Jobs a worker has claimed and not finished."""
    return Counter(chaos.statuses(job_ids).values())["STARTED"]


def ran_again_after_its_result(chaos: Chaos, job_ids: list[str]) -> list[str]:
    """Jobs a worker started the model on after their result had been written."""
    seen_done: set[str] = set()
    again = []
    for _, event, job_id in chaos.job_events():
        if event == "done":
            seen_done.add(job_id)
        elif job_id in seen_done and job_id in job_ids:
            again.append(job_id)
    return again


def test_killed_workers_lose_no_job_and_write_each_result_once(chaos: Chaos):
    with chaos.result_writes() as writes:
        jobs = chaos.submit_jobs(JOBS, ITEMS)
        job_ids = list(jobs)
        wait_until(
            lambda: in_flight(chaos, job_ids) >= 50,
            timeout=120,
            what="50 jobs in flight",
            every=0.05,
        )
        for worker in chaos.workers:
            chaos.signal(worker, signal.SIGKILL)
        for worker in chaos.workers:
            assert worker.process is not None
            worker.process.wait(timeout=10)
        killed_in_flight = in_flight(chaos, job_ids)  # exact: nobody is left to finish them
        for worker in chaos.workers:
            chaos.stack.restart(worker.name)
        finished = chaos.wait_finished(job_ids, timeout=240)

    assert killed_in_flight >= 50
    assert finished == {"SUCCESS": JOBS}
    assert writes == dict.fromkeys(job_ids, 1), "a job's result was written more than once"
    records = chaos.fields(job_ids, "revision", "attempts")
    assert {r["revision"] for r in records.values()} == {"0"}
    assert sum(int(r["attempts"]) > 1 for r in records.values()) >= killed_in_flight
    chaos.assert_results_are_the_models(jobs)


def test_a_drained_worker_finishes_what_it_started_and_nothing_runs_twice(chaos: Chaos):
    with chaos.result_writes() as writes:
        jobs = chaos.submit_jobs(JOBS, ITEMS)
        job_ids = list(jobs)
        wait_until(lambda: in_flight(chaos, job_ids) >= 20, timeout=120, what="20 jobs in flight")
        for worker in chaos.workers:
            chaos.signal(worker, signal.SIGTERM)
        exit_codes = {}
        for worker in chaos.workers:
            assert worker.process is not None
            exit_codes[worker.name] = worker.process.wait(timeout=90)
        for worker in chaos.workers:
            chaos.stack.restart(worker.name)
        finished = chaos.wait_finished(job_ids, timeout=240)

    assert exit_codes == dict.fromkeys(exit_codes, 0), "a worker did not drain and exit cleanly"
    assert finished == {"SUCCESS": JOBS}
    assert writes == dict.fromkeys(job_ids, 1)
    assert ran_again_after_its_result(chaos, job_ids) == []
    # Drained means finished, not abandoned: each job was claimed exactly once.
    attempts = Counter(r["attempts"] for r in chaos.fields(job_ids, "attempts").values())
    assert attempts == {"1": JOBS}


def test_a_stalled_worker_cannot_overwrite_the_new_owners_result(chaos: Chaos):
    items = job_items(0, 45_000)  # seconds of work in chunks of 10
    job_id = chaos.submit(items).json()["job_id"]
    started = wait_until(
        lambda: (
            (f := chaos.fields([job_id], "status", "owner", "done")[job_id])["status"] == "STARTED"
            and int(f["done"] or 0) > 0
            and f
        ),
        timeout=60,
        what="the job under way",
        every=0.02,
    )
    stalled = chaos.worker_by_owner(started["owner"])
    chaos.signal(stalled, signal.SIGSTOP)
    try:
        # A duplicate delivery reaches the other worker; it takes over once the lease lapses.
        chaos.publish([job_id], duplicate="1")
        taken_over = wait_until(
            lambda: (body := chaos.status(job_id))["status"] in {"SUCCESS", "FAILURE"} and body,
            timeout=120,
            what="the job finished by the other worker",
        )
        owner_after = chaos.fields([job_id], "owner")[job_id]["owner"]
    finally:
        chaos.signal(stalled, signal.SIGCONT)

    # The stalled worker wakes up mid-job; its next write must be refused.
    def woke_and_gave_up() -> bool:
        return any(
            entry.get("job_id") == job_id
            and entry.get("message", "").startswith(("■ job", f"job {job_id}: result not written"))
            for entry in chaos.log_entries(stalled.name)
        )

    wait_until(woke_and_gave_up, timeout=60, what="the stalled worker noticed it lost the job")
    after = chaos.status(job_id)
    assert taken_over["status"] == "SUCCESS", taken_over
    assert owner_after != started["owner"]
    assert after == taken_over, "the stalled worker changed the finished job"
    assert chaos.fields([job_id], "owner")[job_id]["owner"] == owner_after
    assert after["attempts"] == 2
    assert chaos.full_result(job_id)["result"] == chaos.predictions(items[:150]) * 300
