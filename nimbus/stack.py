"""The local stack's processes: how each is started and how we know it is up.

`nimbus up` and the tests start the same commands from here, so what the tests exercise is
what a developer runs.
"""

from __future__ import annotations

import shutil
import socket
import time
from pathlib import Path

from nimbus.errors import ConfigError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Block until something accepts connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {host}:{port} after {timeout:.0f}s") from None
            time.sleep(0.05)


def redis_argv(port: int, data_dir: Path) -> list[str]:
    """redis-server as Memorystore runs it: AOF fsync every second, never evict job state."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "redis-server is not on PATH. Run `make install` (it installs Debian's redis-server) "
            "or install Redis 7 yourself."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip
