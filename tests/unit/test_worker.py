"""handle_job alone: a real job store on redis-server, a plain model object passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from nimbus.errors import ModelUnavailable
from nimbus.jobs import JobStatus, JobStore
from nimbus.schema import Column, InputSchema
from vm_worker.events import JobLog, WorkerMetrics
from vm_worker.handler import Outcome, handle_job

SCHEMA = InputSchema((Column("x", "double"), Column("y", "double")))


@dataclass
class SumModel:
    """Predicts x + y; counts its calls so tests can tell whether the model ran."""

    name: str = "adder"
    version: str = "7"
    schema: InputSchema = SCHEMA
    calls: list[int] = field(default_factory=list)

    def predict(self, matrix: np.ndarray) -> list[float]:
        self.calls.append(len(matrix))
        if (matrix[:, 0] == 13).any():
            raise ValueError("unlucky x")
        return [float(value) for value in matrix.sum(axis=1)]


@dataclass
class Registry:
    model: SumModel | None = None

    def production(self) -> SumModel:
        if self.model is None:
            raise ModelUnavailable("registry down")
        return self.model


def run(
    job_id: str, store: JobStore, registry: Registry, owner: str = "w1", chunk_rows: int = 1000
) -> Outcome:
    return handle_job(
        job_id,
        store,
        registry,  # type: ignore[arg-type]
        owner=owner,
        lease_seconds=30,
        chunk_rows=chunk_rows,
    )


def test_runs_all_items_in_one_call_and_records_the_model(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 2}, {"x": 0.5, "y": 0.25}])
    model = SumModel()

    outcome = run(job.id, job_store, Registry(model))

    assert outcome is Outcome.DONE
    assert model.calls == [2]
    done = job_store.fetch(job.id)
    assert done is not None and done.status is JobStatus.SUCCESS
    assert done.result == [{"prediction": 3.0}, {"prediction": 0.75}]
    assert done.model == {"name": "adder", "version": "7"}


def test_a_finished_job_delivered_again_is_not_run_again(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 2}])
    model = SumModel()
    run(job.id, job_store, Registry(model))

    outcome = run(job.id, job_store, Registry(model), owner="w2")

    assert outcome is Outcome.SKIPPED
    assert model.calls == [1]


def test_a_duplicate_of_a_job_another_worker_holds_is_acked(job_store: JobStore):
    """Nacking it would spend the delivery attempts of a job that runs fine elsewhere."""
    job = job_store.create([{"x": 1, "y": 2}])
    job_store.claim(job.id, owner="other", lease_seconds=30)
    model = SumModel()

    outcome = run(job.id, job_store, Registry(model))

    assert outcome is Outcome.SKIPPED
    assert model.calls == []
    held = job_store.fetch(job.id)
    assert held is not None and held.status is JobStatus.STARTED and held.owner == "other"
    # Its lease is indexed: should "other" die, the reconciler publishes the job again.
    assert job_store.connection.zscore(job_store.leases_key, job.id) is not None


def test_registry_down_takes_no_claim(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 2}])

    outcome = run(job.id, job_store, Registry(None))

    assert outcome is Outcome.RETRY
    fetched = job_store.fetch(job.id)
    assert fetched is not None and fetched.status is JobStatus.PENDING


def test_a_job_whose_every_item_is_rejected_fails(job_store: JobStore):
    job = job_store.create([{"x": 1, "z": 2}, {"x": 13, "y": 1}])

    outcome = run(job.id, job_store, Registry(SumModel()))

    assert outcome is Outcome.FAILED
    failed = job_store.fetch(job.id)
    assert failed is not None and failed.status is JobStatus.FAILURE
    assert failed.error is not None and failed.error["code"] == "all_items_failed"


def test_items_the_model_rejects_fail_alone(job_store: JobStore):
    items = [{"x": 1, "y": 1}, {"x": 13, "y": 1}, {"x": 2, "z": 1}, {"x": 3, "y": 3}]
    job = job_store.create(items)

    outcome = run(job.id, job_store, Registry(SumModel()))

    assert outcome is Outcome.DONE
    done = job_store.fetch(job.id)
    assert done is not None and done.status is JobStatus.SUCCESS
    assert [answer["prediction"] for answer in done.result or []] == [2.0, None, None, 6.0]
    assert [error["index"] for error in done.item_errors or []] == [1, 2]
    assert "unlucky x" in (done.item_errors or [])[0]["message"]
    assert "unknown field" in (done.item_errors or [])[1]["message"]


def test_progress_is_per_chunk_and_the_model_runs_once_per_chunk(job_store: JobStore):
    job = job_store.create([{"x": i, "y": 0} for i in range(25) if i != 13])
    model = SumModel()

    run(job.id, job_store, Registry(model), chunk_rows=10)

    assert model.calls == [10, 10, 4]
    done = job_store.fetch(job.id)
    assert done is not None and done.to_public()["progress"] == {"done": 24, "total": 24}


def test_a_job_revoked_while_running_stops_at_its_next_chunk(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 0}] * 30)

    class RevokingModel(SumModel):
        def predict(self, matrix: np.ndarray) -> list[float]:
            job_store.cancel(job.id)  # the user cancels while the first chunk runs
            return super().predict(matrix)

    model = RevokingModel()
    outcome = run(job.id, job_store, Registry(model), chunk_rows=10)

    assert outcome is Outcome.SKIPPED
    assert model.calls == [10]
    revoked = job_store.fetch(job.id)
    assert revoked is not None and revoked.status is JobStatus.REVOKED


def test_an_attempt_that_raises_gives_the_job_back(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 2}])

    class BrokenModel(SumModel):
        def predict(self, matrix: np.ndarray) -> list[float]:
            raise MemoryError("out of memory")

    with pytest.raises(MemoryError):
        run(job.id, job_store, Registry(BrokenModel()))

    released = job_store.fetch(job.id)
    assert released is not None and released.status is JobStatus.PENDING
    assert released.last_error is not None and "out of memory" in released.last_error["message"]
    assert run(job.id, job_store, Registry(SumModel()), owner="w2") is Outcome.DONE


def test_a_replay_reruns_only_for_another_model_version(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 2}])
    run(job.id, job_store, Registry(SumModel(version="7")))
    same = SumModel(version="7")
    newer = SumModel(version="8")

    assert run(job.id, job_store, Registry(same)) is Outcome.SKIPPED
    assert same.calls == []
    assert run(job.id, job_store, Registry(newer)) is Outcome.DONE
    assert newer.calls == [1]
    rerun = job_store.fetch(job.id)
    assert rerun is not None
    assert rerun.revision == 1 and rerun.model == {"name": "adder", "version": "8"}


@pytest.mark.parametrize("job_id", ["8d3c0a52-5b8c-4c35-9d1c-2a1b0f3e4d5c", "junk"])
def test_unknown_jobs_are_skipped(job_store: JobStore, job_id: str):
    assert run(job_id, job_store, Registry(SumModel())) is Outcome.SKIPPED


def sample(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def test_metrics_count_jobs_items_duration_and_queue_time(job_store: JobStore):
    metrics = WorkerMetrics()
    done = job_store.create([{"x": 1, "y": 2}, {"x": 13, "y": 0}, {"x": 3, "y": 4}])
    rejected = job_store.create([{"x": 13, "y": 1}])

    for job in (done, rejected):
        handle_job(
            job.id, job_store, Registry(SumModel()), owner="w", lease_seconds=30, metrics=metrics
        )

    assert sample(metrics, "nimbus_worker_jobs_total", state="SUCCESS") == 1
    assert sample(metrics, "nimbus_worker_jobs_total", state="FAILURE") == 1
    assert sample(metrics, "nimbus_worker_items_predicted_total") == 2
    assert sample(metrics, "nimbus_worker_items_rejected_total") == 2
    assert sample(metrics, "nimbus_worker_job_duration_seconds_count") == 2
    assert sample(metrics, "nimbus_worker_queue_lag_seconds_count") == 2
    assert 0 < sample(metrics, "nimbus_worker_queue_lag_seconds_sum") < 60


def test_a_revoked_job_counts_as_revoked(job_store: JobStore):
    metrics = WorkerMetrics()
    job = job_store.create([{"x": 1, "y": 0}] * 20)

    class RevokingModel(SumModel):
        def predict(self, matrix: np.ndarray) -> list[float]:
            job_store.cancel(job.id)
            return super().predict(matrix)

    handle_job(
        job.id,
        job_store,
        Registry(RevokingModel()),
        owner="w",
        lease_seconds=30,
        chunk_rows=10,
        metrics=metrics,
    )

    assert sample(metrics, "nimbus_worker_jobs_total", state="REVOKED") == 1


def test_the_model_gauge_shows_only_the_version_served():
    metrics = WorkerMetrics()
    metrics.serving("iris", "1")
    metrics.serving("iris", "2")

    assert (
        metrics.registry.get_sample_value(
            "nimbus_worker_model_info", {"name": "iris", "version": "2"}
        )
        == 1
    )
    assert (
        metrics.registry.get_sample_value(
            "nimbus_worker_model_info", {"name": "iris", "version": "1"}
        )
        is None
    )


def test_job_lines_carry_the_event_and_the_trace_of_the_message(
    job_store: JobStore, caplog: pytest.LogCaptureFixture
):
    job = job_store.create([{"x": 1, "y": 2}])
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    log = JobLog.for_message(
        job.id, {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}, "my-project"
    )

    with caplog.at_level("INFO", logger="vm_worker"):
        handle_job(job.id, job_store, Registry(SumModel()), owner="w", lease_seconds=30, log=log)

    events = {record.event: record for record in caplog.records if hasattr(record, "event")}
    assert set(events) == {"claimed", "succeeded"}
    for record in events.values():
        assert record.job_id == job.id
        trace = record.__dict__["logging.googleapis.com/trace"]
        assert trace == f"projects/my-project/traces/{trace_id}"


def test_job_lines_without_a_trace_have_no_trace_field():
    assert JobLog.for_message("j", {}, "my-project").fields("claimed") == {
        "job_id": "j",
        "event": "claimed",
    }
