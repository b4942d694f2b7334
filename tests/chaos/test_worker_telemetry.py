"""What a running worker tells: its Prometheus metrics move with the jobs it runs, and a job's
log lines carry the trace its message came with. (Nothing breaks here: these tests use the
chaos stack's real worker processes because it is already up.)"""

from __future__ import annotations

from collections.abc import Iterable

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.chaos.harness import Chaos, job_items, wait_until

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample a /metrics page shows: {(name, labels): value}."""
    response = requests.get(url, timeout=10)
    assert response.status_code == 200, response.text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def total(pages: Iterable[dict], name: str, **labels: str) -> float:
    """A sample summed over the workers' pages (0 where a page does not have it yet)."""
    key = (name, frozenset(labels.items()))
    return sum(page.get(key, 0.0) for page in pages)


def test_worker_metrics_move_with_the_jobs_it_runs(chaos: Chaos):
    urls = [chaos.stack.worker_metrics_url(worker.name) for worker in chaos.workers]
    before = [scrape(url) for url in urls]

    jobs = chaos.submit_jobs(12, 25)
    assert chaos.wait_finished(list(jobs), timeout=120) == {"SUCCESS": 12}
    after = [scrape(url) for url in urls]

    def moved(name: str, **labels: str) -> float:
        return total(after, name, **labels) - total(before, name, **labels)

    assert moved("nimbus_worker_jobs_total", state="SUCCESS") == 12
    assert moved("nimbus_worker_items_predicted_total") == 12 * 25
    assert moved("nimbus_worker_job_duration_seconds_count") == 12
    assert moved("nimbus_worker_job_duration_seconds_sum") > 0
    assert moved("nimbus_worker_queue_lag_seconds_count") == 12
    assert total(after, "nimbus_worker_jobs_in_flight") == 0
    version = chaos.status(next(iter(jobs)))["model"]["version"]
    for page in after:  # every worker says which model it serves
        served = {
            dict(labels)["version"]
            for (name, labels), value in page.items()
            if name == "nimbus_worker_model_info" and value == 1
        }
        assert served == {version}


def test_a_jobs_log_lines_carry_the_trace_of_its_message(chaos: Chaos):
    job_id = chaos.store.create(job_items(0, 5)).id
    with chaos.bus() as bus:  # as batch_submit publishes a job with its request's trace
        bus.publish_job(job_id, traceparent=f"00-{TRACE_ID}-00f067aa0ba902b7-01")

    assert chaos.wait_for(job_id, timeout=60)["status"] == "SUCCESS"

    def events() -> dict[str, dict]:
        return {
            entry["event"]: entry
            for worker in chaos.workers
            for entry in chaos.log_entries(worker.name)
            if entry.get("job_id") == job_id and "event" in entry
        }

    lines = wait_until(
        lambda: {"claimed", "succeeded"} <= set(found := events()) and found,
        timeout=30,
        what="the job's claimed and succeeded lines in a worker's log",
    )
    trace = f"projects/{chaos.stack.settings.project}/traces/{TRACE_ID}"
    for event in ("claimed", "succeeded"):
        assert lines[event]["logging.googleapis.com/trace"] == trace
        assert lines[event]["severity"] == "INFO"
        assert lines[event]["message"]
