"""One stack for the chaos tests, with settings that make failures play out in seconds.

Starting a stack (MLflow, a trained model, three functions) takes a minute or more, so the
chaos tests share one, stopped after the last of them. Each test breaks it in its own way; the
`chaos` fixture heals it before and after (resumes stopped processes, starts dead ones,
re-creates the Pub/Sub topology the emulator lost, puts the workers back on the stack's
settings).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from nimbus.stack import Stack
from tests.chaos.harness import Chaos
from tests.conftest import stack_settings


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test here is a chaos test: `make chaos` runs only these; `make test` runs them too."""
    for item in items:
        if "tests/chaos/" in str(item.path):
            item.add_marker(pytest.mark.chaos)


# Leases lapse in 3 s; a nacked job comes back after 0.25, 0.5, 1, 1 s and is dead-lettered on
# its 5th failed delivery; a job PENDING for 3 s is republished; every 10 items renew the lease.
# Two workers of 40 jobs each, so tens of jobs are in flight when they are killed.
CHAOS_SETTINGS = {
    "workers": 2,
    "worker_max_messages": 40,
    "lease_seconds": 3,
    "retry_min_backoff": 0.25,
    "retry_max_backoff": 1.0,
    "max_delivery_attempts": 5,
    "reconcile_after": 3.0,
    "chunk_rows": 10,
    "publish_timeout": 3.0,
    "model_refresh_seconds": 1.0,
}


@pytest.fixture(scope="package")
def chaos_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    settings = stack_settings(tmp_path_factory.mktemp("chaos"), **CHAOS_SETTINGS)
    with Stack(settings) as running:
        yield running


@pytest.fixture
def chaos(chaos_stack: Stack) -> Iterator[Chaos]:
    """The shared chaos stack, whole again before the test and after it."""
    harness = Chaos(chaos_stack)
    harness.heal()
    try:
        yield harness
    finally:
        harness.heal()
        harness.close()
