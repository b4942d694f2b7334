"""Real processes for integration tests: the devstack emulators and an MLflow tracking server.

Each fixture starts its process on free ports with the same command `nimbus up` runs, waits a
bounded time for it to answer, and stops its whole process group at the end.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mlflow_server.server import server_argv, server_env
from nimbus.stack import Service, StackError, free_port, http_ok

REPO = Path(__file__).resolve().parents[2]
EMULATORS = REPO / "devstack" / "bin" / "nimbus-emulators"
BUCKET = "nimbus-models"
GCS_ARTIFACT_ROOT = f"gs://{BUCKET}/mlflow"

# An unreachable registry must fail a test in seconds, not after MLflow's default seven
# retries with exponential backoff (about four minutes).
MLFLOW_CLIENT_ENV = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}


@dataclass(frozen=True)
class Emulators:
    """Where the devstack emulators listen, in the form the Google clients read."""

    pubsub_host: str  # PUBSUB_EMULATOR_HOST, host:port
    storage_host: str  # STORAGE_EMULATOR_HOST, http://host:port


@dataclass
class MlflowServer:
    """A running `mlflow server` and where its model artifacts go."""

    service: Service
    tracking_uri: str
    artifact_root: str

    def stop(self) -> None:
        self.service.stop()


def start_service(service: Service, env: dict[str, str], log_dir: Path) -> Service:
    """Start `service` and wait until it is ready; on failure stop it and raise with its log."""
    service.start(env, log_dir)
    try:
        service.wait_ready(log_dir)
    except StackError:
        service.stop()
        raise
    return service


def start_mlflow_server(home: Path, artifact_root: str) -> MlflowServer:
    """An MLflow server with its SQLite database under `home`, on a free port."""
    port = free_port()
    tracking_uri = f"http://127.0.0.1:{port}"
    argv = server_argv(
        backend_store_uri=f"sqlite:///{home / 'mlflow' / 'mlflow.db'}",
        artifact_root=artifact_root,
        host="127.0.0.1",
        port=port,
    )
    service = Service(
        "mlflow", argv, ready=lambda: http_ok(f"{tracking_uri}/health"), ready_timeout=120
    )
    start_service(service, server_env(os.environ), home / "logs")
    return MlflowServer(service, tracking_uri, artifact_root)


@pytest.fixture(scope="session")
def emulators(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulators | None]:
    """The devstack emulators with the `nimbus-models` bucket, exported to this process's
    environment; None when devstack/bin/nimbus-emulators has not been built."""
    if not EMULATORS.exists():
        yield None
        return
    home = tmp_path_factory.mktemp("emulators")
    pubsub_port, gcs_port = free_port(), free_port()
    argv = [
        str(EMULATORS),
        "--host", "127.0.0.1",
        "--pubsub-port", str(pubsub_port),
        "--gcs-port", str(gcs_port),
        "--gcs-root", str(home / "gcs"),
        "--bucket", BUCKET,
    ]  # fmt: skip
    hosts = Emulators(f"127.0.0.1:{pubsub_port}", f"http://127.0.0.1:{gcs_port}")
    service = Service(
        "emulators",
        argv,
        ready=lambda: http_ok(f"{hosts.storage_host}/storage/v1/b/{BUCKET}"),
        ready_timeout=30,
    )
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PUBSUB_EMULATOR_HOST", hosts.pubsub_host)
        env.setenv("STORAGE_EMULATOR_HOST", hosts.storage_host)
        start_service(service, dict(os.environ), home / "logs")
        try:
            yield hosts
        finally:
            service.stop()


@pytest.fixture(scope="session")
def artifact_root(emulators: Emulators | None, tmp_path_factory: pytest.TempPathFactory) -> str:
    """gs://nimbus-models/mlflow on the GCS emulator; a local folder only without the binary."""
    if emulators is not None:
        return GCS_ARTIFACT_ROOT
    return (tmp_path_factory.mktemp("artifacts")).as_uri()


@pytest.fixture(scope="session", autouse=True)
def mlflow_client_env() -> Iterator[None]:
    """MLflow clients in this process fail fast when the server is gone."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in MLFLOW_CLIENT_ENV.items():
            env.setenv(name, value)
        yield


@pytest.fixture(scope="module")
def mlflow_server(
    tmp_path_factory: pytest.TempPathFactory, artifact_root: str
) -> Iterator[MlflowServer]:
    """A tracking server of this test module's own, with an empty registry."""
    server = start_mlflow_server(tmp_path_factory.mktemp("mlflow"), artifact_root)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def start_mlflow(tmp_path: Path, artifact_root: str) -> Iterator[Callable[[], MlflowServer]]:
    """Start servers a test may stop itself (each with an empty registry); all stop at the end."""
    started: list[MlflowServer] = []

    def start() -> MlflowServer:
        server = start_mlflow_server(tmp_path / f"mlflow-{len(started)}", artifact_root)
        started.append(server)
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
