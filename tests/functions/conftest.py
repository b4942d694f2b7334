"""Each function through functions-framework's test client, against the real stack's services."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis
from flask.testing import FlaskClient
from functions_framework import create_app

from nimbus.clients import Clients
from nimbus.jobs import JobStore
from nimbus.stack import Stack

FUNCTIONS = Path(__file__).resolve().parents[2] / "functions"

MakeClient = Callable[..., FlaskClient]


@pytest.fixture
def function_client(stack_env: dict[str, str]) -> Iterator[MakeClient]:
    """Build a test client for a function whose process environment is the stack's plus
    `overrides` (e.g. a Pub/Sub host where nothing listens), for the length of the test.

    The environment stays set while the test runs: the client libraries read it when the
    function first builds them, on its first request.
    """
    built: list[Clients] = []
    with pytest.MonkeyPatch.context() as patch:
        for key, value in stack_env.items():
            patch.setenv(key, value)

        def make(name: str, **overrides: str) -> FlaskClient:
            for key, value in overrides.items():
                patch.setenv(key, value)
            client, clients = load_function(name)
            built.append(clients)
            return client

        try:
            yield make
        finally:
            close_registries(built)


def load_function(name: str) -> tuple[FlaskClient, Clients]:
    """A test client of the function, and the clients its module built."""
    app = create_app(name, str(FUNCTIONS / name / "main.py"))
    return app.test_client(), sys.modules["main"].clients  # functions-framework names it main


def close_registries(built: list[Clients]) -> None:
    """Stop the alias watcher of every registry a request built: with the test, not at exit
    after the stack is gone."""
    for clients in built:
        registry = clients.__dict__.get("model_registry")
        if registry is not None:
            registry.close()


@pytest.fixture
def store(stack: Stack) -> JobStore:
    """The stack's job store, to arrange and inspect job records directly."""
    return JobStore(redis.Redis.from_url(stack.redis_url))
