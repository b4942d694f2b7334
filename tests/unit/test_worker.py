"""handle_job alone: a real job store on redis-server, a plain model object passed in."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest

from nimbus.errors import ModelUnavailable
from nimbus.jobs import JobStatus, JobStore
from nimbus.schema import Column, InputSchema
from vm_worker.worker import Outcome, handle_job

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
        return [float(value) for value in matrix.sum(axis=1)]


@dataclass
class Registry:
    model: SumModel | None = None

    def production(self) -> SumModel:
        if self.model is None:
            raise ModelUnavailable("registry down")
        return self.model


def run(job_id: str, store: JobStore, registry: Registry, owner: str = "w1") -> Outcome:
    return handle_job(job_id, store, registry, owner=owner, lease_seconds=30)  # type: ignore[arg-type]


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


def test_a_job_another_worker_holds_is_left_for_redelivery(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 2}])
    job_store.claim(job.id, owner="other", lease_seconds=30)
    model = SumModel()

    outcome = run(job.id, job_store, Registry(model))

    assert outcome is Outcome.RETRY
    assert model.calls == []


def test_registry_down_takes_no_claim(job_store: JobStore):
    job = job_store.create([{"x": 1, "y": 2}])

    outcome = run(job.id, job_store, Registry(None))

    assert outcome is Outcome.RETRY
    fetched = job_store.fetch(job.id)
    assert fetched is not None and fetched.status is JobStatus.PENDING


def test_items_the_model_no_longer_accepts_fail_the_job(job_store: JobStore):
    job = job_store.create([{"x": 1, "z": 2}])

    outcome = run(job.id, job_store, Registry(SumModel()))

    assert outcome is Outcome.FAILED
    failed = job_store.fetch(job.id)
    assert failed is not None and failed.status is JobStatus.FAILURE
    assert failed.error is not None and failed.error["code"] == "validation_failed"


@pytest.mark.parametrize("job_id", ["8d3c0a52-5b8c-4c35-9d1c-2a1b0f3e4d5c", "junk"])
def test_unknown_jobs_are_skipped(job_store: JobStore, job_id: str):
    assert run(job_id, job_store, Registry(SumModel())) is Outcome.SKIPPED
