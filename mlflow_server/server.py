"""The MLflow tracking server as Nimbus runs it: metadata in SQL, artifacts in GCS.

Clients (the trainer, the functions, the worker) read and write model artifacts in the bucket
themselves (`--no-serve-artifacts`), so the server only ever answers metadata calls and never
needs GCS credentials of its own.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

# MLflow 3's host validation (DNS-rebinding protection) already accepts `localhost:*`,
# `127.0.0.1:*` and the private ranges (10.*, 172.16-31.*, 192.168.*) when --allowed-hosts is
# not given, which covers the local stack and a VM reached on its internal address. A list we
# pass replaces those defaults, so loopback is always kept in it.
LOOPBACK_HOSTS = ("localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*")


def server_argv(
    *,
    backend_store_uri: str,
    artifact_root: str,
    host: str,
    port: int,
    workers: int = 1,
    allowed_hosts: Sequence[str] = (),
) -> list[str]:
    """The `mlflow server` command line; creates the folder of a SQLite database.

    `allowed_hosts` is only needed when clients reach the server by a DNS name (the cloud VM
    behind a load balancer, say); a `postgresql://` backend URI passes through unchanged.
    """
    sqlite_folder = _sqlite_folder(backend_store_uri)
    if sqlite_folder is not None:
        sqlite_folder.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "mlflow", "server",
        "--backend-store-uri", backend_store_uri,
        "--default-artifact-root", artifact_root,
        "--no-serve-artifacts",
        "--host", host,
        "--port", str(port),
        "--workers", str(workers),
    ]  # fmt: skip
    if allowed_hosts:
        hosts = [*allowed_hosts, *(h for h in LOOPBACK_HOSTS if h not in allowed_hosts)]
        argv += ["--allowed-hosts", ",".join(hosts)]
    return argv


def server_env(base: Mapping[str, str]) -> dict[str, str]:
    """The server's environment: `base` without MLflow's GenAI job runner.

    By default MLflow 3 starts a huey job consumer beside a SQL-backed server (for GenAI
    evaluation jobs). Nimbus runs none, and one process fewer starts faster and stops cleanly.
    """
    return {**base, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}


def _sqlite_folder(backend_store_uri: str) -> Path | None:
    """The folder holding a `sqlite:///path` database, or None for any other store."""
    prefix = "sqlite:///"
    if not backend_store_uri.startswith(prefix):
        return None
    database = backend_store_uri.removeprefix(prefix).split("?", 1)[0]
    if database in ("", ":memory:"):
        return None
    return Path(database).parent


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mlflow_server`: replace this process with the configured MLflow server."""
    import argparse
    from urllib.parse import urlparse

    from nimbus.config import Settings

    settings = Settings.from_env()
    tracking = urlparse(settings.tracking_uri)
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_server",
        description="Run the MLflow tracking server with Nimbus's settings "
        "(NIMBUS_MLFLOW_BACKEND_URI, NIMBUS_ARTIFACT_ROOT).",
    )
    parser.add_argument("--host", default=tracking.hostname or "127.0.0.1")
    parser.add_argument("--port", type=int, default=tracking.port or 5000)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument(
        "--allowed-hosts",
        default="",
        help="Comma-separated Host headers to accept besides loopback (a DNS name of the VM).",
    )
    args = parser.parse_args(argv)
    command = server_argv(
        backend_store_uri=settings.backend_store_uri,
        artifact_root=settings.artifact_root,
        host=args.host,
        port=args.port,
        workers=args.workers,
        allowed_hosts=[h for h in args.allowed_hosts.split(",") if h],
    )
    # exec, not a child: signals from `nimbus up` or systemd reach MLflow, which forwards them.
    os.execve(command[0], command, server_env(os.environ))
