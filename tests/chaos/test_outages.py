"""Redis and Pub/Sub going away: a submit is never 202 unless the job will run, and an
accepted job is never lost."""

from __future__ import annotations

import re
import signal
import time

import pytest

from tests.chaos.harness import Chaos, job_items, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

# Longer than the stack's retry backoffs add up to (0.25 + 0.5 + 1 + 1 s): a worker that
# nacked its jobs through the outage would have them dead-lettered before Redis is back.
OUTAGE_SECONDS = 5.0


def test_redis_killed_mid_run_loses_no_accepted_job(chaos: Chaos):
    jobs = chaos.submit_jobs(100, 1000)
    job_ids = list(jobs)
    wait_until(
        lambda: "STARTED" in chaos.statuses(job_ids).values(), timeout=60, what="jobs under way"
    )
    redis_server = chaos.stack.service("redis")
    chaos.signal(redis_server, signal.SIGKILL)
    assert redis_server.process is not None
    redis_server.process.wait(timeout=10)
    during = []
    ends = time.monotonic() + OUTAGE_SECONDS
    while time.monotonic() < ends:
        during.append(chaos.submit(job_items(0, 2)))
    chaos.stack.restart("redis")  # same data directory: the append-only file is replayed
    after = chaos.submit(job_items(1, 2))

    finished = chaos.wait_finished(job_ids, timeout=240)

    assert during, "no submit was tried during the outage"
    assert {response.status_code for response in during} == {503}
    assert {response.json()["error"]["code"] for response in during} == {"store_unavailable"}
    assert finished == {"SUCCESS": 100}, "an accepted job was lost or failed"
    chaos.assert_results_are_the_models(jobs)
    assert after.status_code == 202
    assert chaos.wait_for(after.json()["job_id"], timeout=60)["status"] == "SUCCESS"


def test_a_submit_while_pubsub_is_down_is_503_and_leaves_no_orphan(chaos: Chaos):
    settings = chaos.stack.settings
    chaos.stack.service("emulators").stop()

    response = chaos.submit(job_items(0, 3))
    time.sleep(3 * settings.reconcile_after)  # past the reconciler's threshold, and more

    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "queue_unavailable"
    # The message names the job that was not queued: it must not wait as PENDING.
    named = re.search(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}", error["message"]
    )
    if named:
        assert chaos.status(named.group())["status"] != "PENDING"
    assert chaos.pending_jobs() == [], "a job is left PENDING that no worker will ever see"


def test_workers_recreate_their_subscriptions_after_an_emulator_restart(chaos: Chaos):
    """The emulator keeps topics and subscriptions in memory: a restart loses them. The
    workers' pulls end; each worker re-creates the topology and pulls again, without a
    restart of its own."""
    pids = {worker.name: worker.process.pid for worker in chaos.workers if worker.process}
    chaos.stack.restart("emulators")  # and nobody else re-creates the topology

    def accepted() -> str | None:
        response = chaos.submit(job_items(0, 3))
        return response.json()["job_id"] if response.status_code == 202 else None

    job_id = wait_until(accepted, timeout=90, what="a submit accepted again", every=1.0)

    assert chaos.wait_for(job_id, timeout=90)["status"] == "SUCCESS"
    assert {w.name: w.process.pid for w in chaos.workers if w.process} == pids
    assert all(worker.is_running for worker in chaos.workers)
