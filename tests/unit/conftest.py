"""Unit-test fixtures: one real redis-server per session, flushed before every test."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from nimbus.jobs import JobStore
from nimbus.stack import free_port, redis_argv, wait_for_port

REDIS_START_TIMEOUT = 10.0
REDIS_STOP_TIMEOUT = 10.0


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server started the way `nimbus up` starts it, on a free port."""
    data_dir: Path = tmp_path_factory.mktemp("redis")
    port = free_port()
    with (data_dir / "redis.log").open("wb") as log:
        server = subprocess.Popen(redis_argv(port, data_dir), stdout=log, stderr=log)
    try:
        wait_for_port(port, timeout=REDIS_START_TIMEOUT)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()
        try:
            server.wait(timeout=REDIS_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait(timeout=REDIS_STOP_TIMEOUT)


@pytest.fixture
def redis_connection(redis_url: str) -> Iterator[redis.Redis]:
    """A client on the session's redis-server, with an empty database."""
    connection = redis.Redis.from_url(redis_url, socket_timeout=5, socket_connect_timeout=5)
    connection.flushdb()
    yield connection
    connection.close()


@pytest.fixture
def job_store(redis_connection: redis.Redis) -> JobStore:
    """A JobStore on the flushed database."""
    return JobStore(redis_connection)
