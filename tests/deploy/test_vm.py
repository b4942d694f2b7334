"""deploy/vm.sh, docker-compose.yml, the Dockerfiles and the systemd units: the worker and the
MLflow server on VMs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from nimbus.config import Settings, documented_variables
from tests.deploy.conftest import (
    DEPLOY,
    REPO,
    DryRun,
    RunDry,
    mlflow_client_variables,
    read_quoted_env,
)
from tests.deploy.settings_reads import cloud_variables_read

COMPOSE_PLUGIN = REPO / ".tools" / "docker" / "cli-plugins" / "docker-compose"
EXTRA_VARIABLES = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES",
    "MLFLOW_HTTP_REQUEST_TIMEOUT",
    # docker-compose.yml's own, not the code's
    "NIMBUS_WORKER_IMAGE",
    "NIMBUS_MLFLOW_IMAGE",
    "NIMBUS_DOCKER_LOG_DRIVER",
}


@pytest.fixture(scope="module")
def dry(run_dry: RunDry) -> DryRun:
    return run_dry("vm.sh")


@pytest.fixture(scope="module")
def vm_env(dry: DryRun) -> dict[str, str]:
    """The env file the VMs get, with stand-ins for what they read from Secret Manager."""
    env = read_quoted_env(dry.build_dir / "vm" / "nimbus.env")
    for line in (dry.build_dir / "vm" / "secrets").read_text().splitlines():
        target, secret = line.split("=", 1)
        if not target.startswith("/"):
            env[target] = f"stand-in-for-{secret}"
    return env


def compose_command() -> list[str]:
    """`docker compose`, or the plugin `make install` builds when the docker CLI has none."""
    docker = shutil.which("docker")
    if docker is not None:
        if subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
            return [docker, "compose"]
        assert COMPOSE_PLUGIN.exists(), (
            "the docker CLI has no compose plugin: `make install` builds one into .tools/docker"
        )
        return [str(COMPOSE_PLUGIN)]
    if COMPOSE_PLUGIN.exists():
        return [str(COMPOSE_PLUGIN)]
    pytest.skip("no docker CLI here (nor .tools' compose plugin): docker compose config not run")


@pytest.fixture(scope="module")
def compose(vm_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`docker compose config` of docker-compose.yml with the VM's env file."""
    folder = tmp_path_factory.mktemp("compose")
    env_file = folder / "nimbus.env"
    env_file.write_text("".join(f"{name}='{value}'\n" for name, value in vm_env.items()))
    done = subprocess.run(
        [*compose_command(), "--file", str(REPO / "docker-compose.yml"), "--env-file",
         str(env_file), "config", "--format", "json"],
        cwd=folder,
        env={"PATH": os.environ["PATH"], "HOME": str(folder), "DOCKER_CONFIG": str(folder)},
        capture_output=True,
        text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, f"docker compose config failed:\n{done.stderr}"
    return json.loads(done.stdout)


def test_compose_runs_the_worker_and_the_mlflow_server(compose: dict, dry: DryRun):
    services = compose["services"]
    assert set(services) == {"worker", "mlflow"}
    submit = dry.one("builds", "submit")
    images = dict(item.split("=", 1) for item in (submit.flag("substitutions") or "").split(","))
    assert services["worker"]["image"] == images["_WORKER_IMAGE"]
    assert services["mlflow"]["image"] == images["_MLFLOW_IMAGE"]
    assert services["worker"]["depends_on"]["mlflow"]["condition"] == "service_healthy"
    assert all(service["restart"] == "unless-stopped" for service in services.values())


@pytest.mark.parametrize(
    ("service", "entry"),
    [("worker", "vm_worker/__main__.py"), ("mlflow", "mlflow_server/__main__.py")],
)
def test_every_variable_the_code_reads_is_set(compose: dict, service: str, entry: str):
    environment = compose["services"][service]["environment"]
    read = cloud_variables_read(REPO / entry)

    missing = {name for name in read if not environment.get(name)}
    assert not missing, (
        f"{entry} reads {sorted(missing)} (nimbus/config.py) but the VM does not set them: "
        "add them to docker-compose.yml's service, VM_ENV in deploy/vm.sh and deploy/env.example"
    )
    known = {variable for variable, _, _ in documented_variables()} | EXTRA_VARIABLES
    assert set(environment) <= known, f"unknown variables: {set(environment) - known}"
    Settings.from_env(
        {name: value for name, value in environment.items() if "stand-in" not in value}
    )


def test_the_worker_fails_over_fast_like_the_local_stack(compose: dict):
    environment = compose["services"]["worker"]["environment"]
    expected = mlflow_client_variables()
    assert {name: environment.get(name) for name in expected} == dict(expected)


def test_every_env_file_value_reaches_a_container(compose: dict, vm_env: dict[str, str]):
    """A setting in VM_ENV that no service passes on would silently not apply."""
    passed = {name for service in compose["services"].values() for name in service["environment"]}
    images = {"NIMBUS_WORKER_IMAGE", "NIMBUS_MLFLOW_IMAGE", "NIMBUS_DOCKER_LOG_DRIVER"}
    assert set(vm_env) - images <= passed


def test_redis_ca_is_where_the_redis_url_says(compose: dict, dry: DryRun):
    ca_path = re.search(r"^REDIS_CA_PATH=(\S+)$", (DEPLOY / "infra.sh").read_text(), re.M)
    assert ca_path
    secrets = (dry.build_dir / "vm" / "secrets").read_text().splitlines()
    assert f"{ca_path.group(1)}=nimbus-redis-ca" in secrets
    volumes = compose["services"]["worker"]["volumes"]
    assert any(v["source"] == v["target"] == ca_path.group(1) and v["read_only"] for v in volumes)


def test_mlflow_serves_the_internal_load_balancer(compose: dict, dry: DryRun):
    command = compose["services"]["mlflow"]["command"]
    assert command[:4] == ["--host", "0.0.0.0", "--port", "5000"]
    rule = dry.one("compute", "forwarding-rules", "create", name="nimbus-mlflow")
    assert rule.flag("ports") == "5000"
    assert rule.flag("load-balancing-scheme") == "internal"
    check = dry.one("compute", "health-checks", "create", "http")
    assert (check.flag("port"), check.flag("request-path")) == ("5000", "/health")


def test_group_autoscales_on_the_jobs_waiting(dry: DryRun, env_example: dict[str, str]):
    autoscaling = dry.one("compute", "instance-groups", "managed", "set-autoscaling")
    assert (
        autoscaling.flag("update-stackdriver-metric")
        == "pubsub.googleapis.com/subscription/num_undelivered_messages"
    )
    subscription = env_example["NIMBUS_JOBS_SUBSCRIPTION"]
    assert f'resource.labels.subscription_id = "{subscription}"' in (
        autoscaling.flag("stackdriver-metric-filter") or ""
    )
    assert autoscaling.flag("stackdriver-metric-single-instance-assignment")
    assert autoscaling.flag("min-num-replicas") == env_example["VM_MIN_INSTANCES"]
    group = dry.one("compute", "instance-groups", "managed", "create")
    assert group.flag("health-check") == "nimbus-mlflow"


def test_template_ships_the_startup_script_compose_file_and_settings(dry: DryRun):
    template = dry.one("compute", "instance-templates", "create")
    files = dict(
        item.split("=", 1) for item in (template.flag("metadata-from-file") or "").split(",")
    )
    assert set(files) == {"startup-script", "nimbus-compose", "nimbus-env", "nimbus-secrets"}
    for path in files.values():
        assert (REPO / path).exists() or Path(path).exists(), path
    assert files["startup-script"] == "deploy/vm-startup.sh"
    assert files["nimbus-compose"] == "docker-compose.yml"
    assert template.flag("no-address") == ""
    assert template.flag(
        "service-account",
    ).startswith("nimbus-vm@")  # type: ignore[union-attr]
    # Every metadata key the startup script reads is shipped.
    read = set(re.findall(r"metadata (nimbus-[a-z-]+)", (DEPLOY / "vm-startup.sh").read_text()))
    assert read == {"nimbus-compose", "nimbus-env", "nimbus-secrets"}


def test_a_rerun_rolls_the_new_template_out(run_dry: RunDry):
    rerun = run_dry("vm.sh", DRY_RUN_ASSUME_EXISTING="1")
    update = rerun.one("compute", "instance-groups", "managed", "rolling-action", "start-update")
    assert (update.flag("version") or "").startswith("template=nimbus-vm-")
    assert update.flag("max-unavailable") == "0"
    assert not rerun.find("compute", "instance-groups", "managed", "create")


def test_cloud_build_builds_both_images_from_their_dockerfiles():
    build = yaml.safe_load((DEPLOY / "cloudbuild.yaml").read_text())
    files = {
        arg.split("=", 1)[1]
        for step in build["steps"]
        for arg in step["args"]
        if arg.startswith("--file=")
    }
    assert files == {"vm_worker/Dockerfile", "mlflow_server/Dockerfile"}
    assert build["images"] == ["${_WORKER_IMAGE}", "${_MLFLOW_IMAGE}"]


@pytest.mark.parametrize(
    ("dockerfile", "module", "extra"),
    [
        ("vm_worker/Dockerfile", "vm_worker", None),
        ("mlflow_server/Dockerfile", "mlflow_server", "server"),
    ],
)
def test_dockerfile_is_slim_non_root_and_pinned(dockerfile: str, module: str, extra: str | None):
    text = (REPO / dockerfile).read_text()
    assert re.search(r"^ARG PYTHON_IMAGE=python:3\.12-slim", text, re.M)
    users = re.findall(r"^USER (\S+)$", text, re.M)
    assert users and users[-1] not in ("root", "0")
    syncs = re.findall(r"^RUN uv sync (.*)$", text, re.M)
    assert syncs and all("--frozen" in s and "--no-dev" in s for s in syncs), "install from uv.lock"
    assert all((f"--extra {extra}" in s) == bool(extra) for s in syncs)
    uv_pin = re.search(r"^UV_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert uv_pin and f"ARG UV_VERSION={uv_pin.group(1)}" in text, "the Makefile's uv"
    entry = re.search(r'^ENTRYPOINT \["python", "-m", "(\w+)"\]$', text, re.M)
    assert entry and entry.group(1) == module
    assert (REPO / module / "__main__.py").exists()


def test_systemd_units_are_valid():
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert {u.name for u in units} == {"nimbus-mlflow.service", "nimbus-worker@.service"}
    done = subprocess.run(
        [analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60
    )
    # /opt/nimbus is where the units expect the checkout on the VM, not here.
    problems = [
        line
        for line in (done.stdout + done.stderr).splitlines()
        if line.strip() and "/opt/nimbus/.venv/bin/python is not executable" not in line
    ]
    assert problems == []
    for unit in units:
        text = unit.read_text()
        assert "User=nimbus" in text and "EnvironmentFile=/etc/nimbus/nimbus.env" in text
        module = "vm_worker" if "worker" in unit.name else "mlflow_server"
        assert f"ExecStart=/opt/nimbus/.venv/bin/python -m {module}" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    ("dockerfile", "imports"),
    [
        ("vm_worker/Dockerfile", "import vm_worker.worker, nimbus.bus"),
        ("mlflow_server/Dockerfile", "import mlflow_server.server, mlflow.server, psycopg2"),
    ],
)
def test_dockerfile_build_stage_installs_from_the_lock(
    dockerfile: str, imports: str, tmp_path: Path
):
    """The build stage's COPY and `RUN uv sync` steps, replayed without Docker: the locked
    dependencies install, the project installs as a package, and the image's code imports
    with the sources gone (only .venv is copied to the final stage)."""
    from tests.deploy.test_functions import UV, runtime_python

    app = tmp_path / "app"
    app.mkdir()
    text = (REPO / dockerfile).read_text()
    build_stage = text.split("\nFROM ", 2)[1]
    for line in build_stage.splitlines():
        if line.startswith("COPY ") and "--from" not in line:
            *sources, _ = line.split()[1:]
            for source in sources:
                target = app / source
                if (REPO / source).is_dir():
                    shutil.copytree(
                        REPO / source, target, ignore=shutil.ignore_patterns("__pycache__")
                    )
                else:
                    shutil.copy(REPO / source, target)
        elif line.startswith("RUN uv sync "):
            subprocess.run(
                [str(UV), *line.split()[2:], "--quiet", "--python", runtime_python()],
                cwd=app,
                env={**os.environ, "UV_PYTHON_DOWNLOADS": "never", "VIRTUAL_ENV": ""},
                check=True,
                timeout=600,
            )
    python = app / ".venv" / "bin" / "python"
    for source in ("nimbus", "vm_worker", "mlflow_server"):
        shutil.rmtree(app / source)
    done = subprocess.run(
        [str(python), "-c", imports],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    tools = {p.name for p in (app / ".venv" / "bin").iterdir()}
    assert not tools & {"pytest", "ruff", "mypy"}, "dev tools in the image"
