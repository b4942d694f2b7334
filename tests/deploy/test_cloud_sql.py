"""The Cloud SQL path for real: the MLflow server on PostgreSQL, and a model's whole round trip
(register, alias, load, predict) through it.

PostgreSQL is Debian's (`make install` installs it); a throwaway cluster lives in a temporary
folder for this module only. Postgres refuses to run as root, so as root the cluster belongs to
Debian's `postgres` user.
"""

from __future__ import annotations

import glob
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from mlflow import MlflowClient

from mlflow_server.server import server_argv, server_env
from mlflow_server.train import train_and_register
from nimbus.registry import ModelRegistry
from nimbus.stack import Service, free_port, http_ok
from tests.deploy.conftest import DEPLOY
from tests.integration.conftest import start_service

INFRA = DEPLOY / "infra.sh"

pytestmark = pytest.mark.slow

IRIS_ROWS = [
    {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2},
    {"sepal_length": 7.7, "sepal_width": 3.0, "petal_length": 6.1, "petal_width": 2.3},
]


@dataclass(frozen=True)
class Postgres:
    """A running cluster, reached like Cloud SQL: a user with a password, over TCP."""

    port: int
    user: str
    password: str
    database: str

    @property
    def uri(self) -> str:
        """The nimbus-mlflow-db-url secret as deploy/infra.sh writes it, pointed here (without
        the sslmode=require Cloud SQL gets: this cluster has no TLS)."""
        written = re.search(
            r'"(postgresql[+\w]*)://\$SQL_USER:\$password@\$ip:5432/', INFRA.read_text()
        )
        assert written, "deploy/infra.sh no longer writes the MLflow database URL"
        scheme = written.group(1)
        return f"{scheme}://{self.user}:{self.password}@127.0.0.1:{self.port}/{self.database}"


def postgres_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    assert found, "PostgreSQL is not installed: `make install` installs Debian's postgresql"
    return Path(found[-1]).parent


def as_cluster_owner(argv: list[str]) -> list[str]:
    """Postgres will not run as root: there, run it as Debian's postgres user."""
    if os.geteuid() != 0:
        return argv
    runuser = shutil.which("runuser")
    assert runuser, "runuser (util-linux) is needed to run PostgreSQL as root"
    return [runuser, "-u", "postgres", "--", *argv]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    binaries = postgres_bin()
    # Not under pytest's tmp_path: that folder is root's alone, and the cluster is postgres's.
    home = Path(tempfile.mkdtemp(prefix="nimbus-pg-"))
    home.chmod(0o755)
    data, password_file = home / "data", home / "password"
    cluster = Postgres(free_port(), "mlflow", secrets.token_hex(16), "mlflow")
    password_file.write_text(cluster.password + "\n")
    if os.geteuid() == 0:
        shutil.chown(home, "postgres", "postgres")
        shutil.chown(password_file, "postgres", "postgres")

    def pg(tool: str, *args: str, timeout: float = 60) -> None:
        subprocess.run(
            as_cluster_owner([str(binaries / tool), *args]),
            check=True,
            capture_output=True,
            timeout=timeout,
            cwd=home,
            env={"PATH": os.environ["PATH"], "PGPASSWORD": cluster.password, "LC_ALL": "C"},
        )

    started = False
    try:
        pg("initdb", "--pgdata", str(data), "--username", cluster.user, "--pwfile",
           str(password_file), "--auth", "scram-sha-256", "--encoding", "UTF8")  # fmt: skip
        pg("pg_ctl", "start", "--pgdata", str(data), "--wait", "--timeout", "60",
           "--log", str(home / "postgres.log"),
           "-o", f"-p {cluster.port} -c listen_addresses=127.0.0.1 -k {home}",
           timeout=90)  # fmt: skip
        started = True
        pg("createdb", "--host", "127.0.0.1", "--port", str(cluster.port), "--username",
           cluster.user, cluster.database)  # fmt: skip
        yield cluster
    finally:
        if started:
            pg("pg_ctl", "stop", "--pgdata", str(data), "--mode", "fast", "--wait", "--timeout", "60",
               timeout=90)  # fmt: skip
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="module")
def mlflow_on_postgres(
    postgres: Postgres, artifact_root: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """`mlflow server` with the postgresql:// backend, as the VM runs it; its tracking URI."""
    port = free_port()
    tracking_uri = f"http://127.0.0.1:{port}"
    argv = server_argv(
        backend_store_uri=postgres.uri, artifact_root=artifact_root, host="127.0.0.1", port=port
    )
    # A fresh database gets MLflow's schema migrations at first start: give it time.
    service = Service(
        "mlflow", argv, ready=lambda: http_ok(f"{tracking_uri}/health"), ready_timeout=180
    )
    start_service(service, server_env(os.environ), tmp_path_factory.mktemp("mlflow-pg"))
    try:
        yield tracking_uri
    finally:
        service.stop()


def test_register_alias_load_round_trip_through_postgres(
    mlflow_on_postgres: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")
    client = MlflowClient(tracking_uri=mlflow_on_postgres)

    version = train_and_register(mlflow_on_postgres)
    registry = ModelRegistry(client, "models:/iris@production", cache_dir=tmp_path / "cache")
    try:
        model = registry.production()
        predictions = model.predict(model.schema.rows_to_matrix(IRIS_ROWS))
    finally:
        registry.close()

    assert client.get_model_version_by_alias("iris", "production").version == version
    assert (model.name, model.version) == ("iris", version)
    assert predictions == [0, 2]


def test_the_metadata_lives_in_postgres(mlflow_on_postgres: str, postgres: Postgres):
    """The registry's rows are in the database, not in a SQLite file somewhere."""
    psql = postgres_bin() / "psql"
    rows = subprocess.run(
        [str(psql), "--host", "127.0.0.1", "--port", str(postgres.port), "--username",
         postgres.user, "--dbname", postgres.database, "--tuples-only", "--no-align",
         "--command", "select name from registered_models"],
        env={"PATH": os.environ["PATH"], "PGPASSWORD": postgres.password},
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout.split()  # fmt: skip
    assert "iris" in rows
