"""deploy/functions.sh and deploy/stage.sh: what each function is deployed with."""

from __future__ import annotations

import ast
import filecmp
import glob
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nimbus.config import Settings, documented_variables
from tests.deploy.conftest import (
    DEPLOY,
    FUNCTIONS,
    REPO,
    Command,
    DryRun,
    RunDry,
    mlflow_client_variables,
    read_yaml_env,
)
from tests.deploy.settings_reads import cloud_variables_read

UV = REPO / ".tools" / "bin" / "uv"
# What a function may be given besides settings: the MLflow client's own knobs and
# functions-framework's thread count.
EXTRA_VARIABLES = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES", "MLFLOW_HTTP_REQUEST_TIMEOUT", "THREADS"}


@pytest.fixture(scope="module")
def dry(run_dry: RunDry) -> DryRun:
    return run_dry("functions.sh")


def deploy_command(dry: DryRun, name: str) -> Command:
    return dry.one("functions", "deploy", name=name)


def environment(dry: DryRun, name: str) -> tuple[dict[str, str], dict[str, str]]:
    """(plain variables, secrets by variable or path) the function is deployed with."""
    command = deploy_command(dry, name)
    env_file = command.flag("env-vars-file")
    assert env_file, f"{name} is deployed without --env-vars-file"
    secrets = {}
    for item in filter(None, (command.flag("set-secrets") or "").split(",")):
        target, reference = item.split("=", 1)
        secrets[target] = reference
    return read_yaml_env(Path(env_file)), secrets


@pytest.mark.parametrize("name", FUNCTIONS)
def test_each_function_is_deployed_gen2_from_its_staged_source(dry: DryRun, name: str):
    command = deploy_command(dry, name)

    assert command.flag("gen2") == ""
    assert command.flag("runtime") == "python312"
    assert command.flag("trigger-http") == ""
    assert command.flag("entry-point") == name
    assert command.flag("source") == str(dry.build_dir / name)
    for sizing in ("memory", "cpu", "concurrency", "min-instances", "max-instances"):
        assert command.flag(sizing), f"{name}: no --{sizing}"
    assert command.flag(
        "vpc-connector",
    ).endswith("/connectors/nimbus-connector")  # type: ignore[union-attr]
    assert command.flag("no-allow-unauthenticated") == ""


@pytest.mark.parametrize("name", FUNCTIONS)
def test_entry_point_exists_in_the_staged_main(dry: DryRun, name: str):
    source = Path(deploy_command(dry, name).flag("source") or "")
    entry_point = deploy_command(dry, name).flag("entry-point")
    tree = ast.parse((source / "main.py").read_text())

    http_functions = [
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef)
        and any(ast.unparse(d) == "functions_framework.http" for d in node.decorator_list)
    ]
    assert http_functions == [entry_point]


@pytest.mark.parametrize("name", FUNCTIONS)
def test_staged_source_is_the_function_folder_plus_nimbus(dry: DryRun, name: str):
    staged = dry.build_dir / name
    for file in ("main.py", "requirements.txt", ".gcloudignore"):
        assert filecmp.cmp(staged / file, REPO / "functions" / name / file, shallow=False)
    package = {p.relative_to(REPO) for p in (REPO / "nimbus").rglob("*.py")}
    copied = {p.relative_to(staged) for p in (staged / "nimbus").rglob("*")}
    assert copied == package, "the staged nimbus/ is the package's .py files, nothing else"
    for module in package:
        assert filecmp.cmp(staged / module, REPO / module, shallow=False)
    assert not (staged / "requirements-test.txt").exists()


@pytest.mark.parametrize("name", FUNCTIONS)
def test_requirements_are_exact_pins(name: str):
    lines = (REPO / "functions" / name / "requirements.txt").read_text().splitlines()
    pins = [line for line in lines if line.strip() and not line.startswith("#")]
    assert pins
    loose = [line for line in pins if not re.fullmatch(r"[A-Za-z0-9._\[\],-]+==[\w.+!-]+", line)]
    assert loose == [], f"functions/{name}/requirements.txt: pin exactly (==): {loose}"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_every_variable_the_code_reads_is_set(dry: DryRun, name: str):
    plain, secrets = environment(dry, name)
    read = cloud_variables_read(REPO / "functions" / name / "main.py")

    missing = read - set(plain) - set(secrets)
    assert not missing, (
        f"functions/{name} reads {sorted(missing)} (nimbus/config.py) but deploy/functions.sh "
        f"does not set them: add them to {name.upper()}_ENV there and to deploy/env.example"
    )
    known = {variable for variable, _, _ in documented_variables()} | EXTRA_VARIABLES
    assert set(plain) <= known, f"unknown variables: {set(plain) - known}"
    assert all(value != "" for value in plain.values())
    Settings.from_env(plain)  # every value is one the code accepts


@pytest.mark.parametrize("name", FUNCTIONS)
def test_redis_and_its_ca_come_from_secret_manager_only_where_read(dry: DryRun, name: str):
    plain, secrets = environment(dry, name)
    reads_redis = "NIMBUS_REDIS_URL" in cloud_variables_read(REPO / "functions" / name / "main.py")

    assert "NIMBUS_REDIS_URL" not in plain
    assert ("NIMBUS_REDIS_URL" in secrets) == reads_redis
    if reads_redis:
        ca_path = re.search(r"^REDIS_CA_PATH=(\S+)$", (DEPLOY / "infra.sh").read_text(), re.M)
        assert ca_path and secrets.get(ca_path.group(1)) == "nimbus-redis-ca:latest"


def test_functions_that_call_mlflow_fail_over_fast_like_the_local_stack(dry: DryRun):
    expected = mlflow_client_variables()
    assert expected, "nimbus/stack.py no longer sets MLFLOW_HTTP_REQUEST_*"
    callers = [n for n in FUNCTIONS if "MLFLOW_TRACKING_URI" in environment(dry, n)[0]]
    assert {"predict", "batch_submit"} <= set(callers)
    for name in callers:
        plain, _ = environment(dry, name)
        assert {k: plain.get(k) for k in expected} == dict(expected), name


def test_functions_reach_mlflow_at_the_internal_load_balancer(
    dry: DryRun, run_dry: RunDry, env_example: dict[str, str]
):
    address = run_dry("vm.sh").one("compute", "addresses", "create", name="nimbus-mlflow")
    ip = address.flag("addresses")
    assert ip == env_example["MLFLOW_INTERNAL_IP"]
    for name in ("predict", "batch_submit"):
        assert environment(dry, name)[0]["MLFLOW_TRACKING_URI"] == f"http://{ip}:5000"


def test_each_function_runs_as_its_own_account_and_only_the_gateway_may_call_it(
    dry: DryRun, run_dry: RunDry
):
    accounts = [deploy_command(dry, name).flag("service-account") for name in FUNCTIONS]
    assert len(set(accounts)) == len(FUNCTIONS)
    gateway = run_dry("gateway.sh").one("api-gateway", "api-configs", "create")
    invoker = f"serviceAccount:{gateway.flag('backend-auth-service-account')}"
    for name in FUNCTIONS:
        binding = dry.one("functions", "add-invoker-policy-binding", name=name)
        assert binding.flag("member") == invoker


def test_concurrency_and_threads_agree(dry: DryRun):
    for name in FUNCTIONS:
        plain, _ = environment(dry, name)
        assert plain["THREADS"] == deploy_command(dry, name).flag("concurrency")


# -- the staged source on its own ---------------------------------------------------------------


def runtime_python() -> str:
    """Cloud Run's Python (3.12) when this machine has one, else the tests' own."""
    candidates = [
        shutil.which("python3.12"),
        *glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12")),
    ]
    for candidate in filter(None, candidates):
        works = subprocess.run([candidate, "--version"], capture_output=True, timeout=30)
        if works.returncode == 0:
            return candidate
    return sys.executable


@pytest.mark.slow
@pytest.mark.parametrize("name", FUNCTIONS)
def test_staged_source_installs_from_its_requirements_alone_and_loads(tmp_path: Path, name: str):
    """What Cloud Build does: a fresh environment, `requirements.txt` and nothing else, then
    functions-framework loads the entry point from the uploaded folder."""
    assert UV.exists(), "uv is missing: `make install` bootstraps it into .tools/"
    subprocess.run(
        ["bash", str(DEPLOY / "stage.sh"), name],
        env={**os.environ, "BUILD_DIR": str(tmp_path / "build")},
        check=True,
        capture_output=True,
        timeout=60,
    )
    staged = tmp_path / "build" / name
    venv = tmp_path / "venv"
    subprocess.run(
        [str(UV), "venv", "--quiet", "--python", runtime_python(), str(venv)],
        check=True,
        timeout=120,
    )
    subprocess.run(
        [str(UV), "pip", "install", "--quiet", "--python", str(venv / "bin" / "python"),
         "--requirement", str(staged / "requirements.txt")],
        check=True,
        timeout=600,
    )  # fmt: skip

    loaded = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import sys; from functions_framework import create_app; "
            f"app = create_app(target={name!r}, source='main.py'); "
            "import nimbus; assert nimbus.__file__.startswith(sys.argv[1]), nimbus.__file__",
            str(staged),
        ],
        cwd=staged,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert loaded.returncode == 0, loaded.stderr[-3000:]
