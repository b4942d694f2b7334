"""Running the deploy scripts' dry runs, and reading what they print.

No test here reaches Google Cloud: a dry run prints the gcloud commands it would run, and a
`gcloud` stand-in on PATH fails the test if a script calls it anyway.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

# The GCS emulator and the bucket the MLflow server's artifacts go to, as the integration
# tests start them (the Cloud SQL test reuses them).
from tests.integration.conftest import artifact_root, emulators  # noqa: F401

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
ENV_EXAMPLE = DEPLOY / "env.example"
FUNCTIONS = ("predict", "batch_submit", "batch_status")
SCRIPTS = sorted(DEPLOY.glob("*.sh"))


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "slow: installs packages or starts servers (tens of seconds each)"
    )


@dataclass(frozen=True)
class Command:
    """One gcloud command of a dry run: its words, and its flags by name."""

    words: list[str]

    @property
    def line(self) -> str:
        return shlex.join(self.words)

    def is_(self, *path: str) -> bool:
        """True for `gcloud <path...>`, e.g. is_("pubsub", "topics", "create")."""
        return self.words[1 : 1 + len(path)] == list(path)

    @property
    def positionals(self) -> list[str]:
        return [word for word in self.words if not word.startswith("-")]

    def flag(self, name: str) -> str | None:
        """The value of --name=value, "" for a bare --name, None when absent."""
        for word in self.words:
            if word == f"--{name}":
                return ""
            if word.startswith(f"--{name}="):
                return word.split("=", 1)[1]
        return None


@dataclass(frozen=True)
class DryRun:
    stdout: str
    stderr: str
    build_dir: Path

    @property
    def commands(self) -> list[Command]:
        """Every gcloud command printed, continuation lines joined."""
        joined = self.stdout.replace("\\\n", " ")
        return [
            Command(shlex.split(line)) for line in joined.splitlines() if line.startswith("gcloud ")
        ]

    def find(self, *path: str) -> list[Command]:
        return [command for command in self.commands if command.is_(*path)]

    def one(self, *path: str, name: str | None = None) -> Command:
        found = [c for c in self.find(*path) if name is None or name in c.positionals]
        assert len(found) == 1, f"expected one `gcloud {' '.join(path)} {name or ''}`: {found}"
        return found[0]


@pytest.fixture(scope="session")
def gcloud_trap(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with a `gcloud` that records any call and fails: dry runs must not call it."""
    folder = tmp_path_factory.mktemp("trap")
    trap = folder / "gcloud"
    trap.write_text(f'#!/bin/sh\necho "$@" >> {folder / "calls"}\nexit 97\n')
    trap.chmod(0o755)
    return folder


RunDry = Callable[..., DryRun]


@pytest.fixture(scope="session")
def run_dry(gcloud_trap: Path, tmp_path_factory: pytest.TempPathFactory) -> RunDry:
    """run_dry("pubsub.sh", *args, **env): the script's dry run against deploy/env.example."""

    done_before: dict[tuple[str, tuple[str, ...], tuple[tuple[str, str], ...]], DryRun] = {}

    def run(script: str, *args: str, **env: str) -> DryRun:
        """The same dry run twice prints the same: the second is the first's answer."""
        key = (script, args, tuple(sorted(env.items())))
        if key not in done_before:
            done_before[key] = run_once(script, *args, **env)
        return done_before[key]

    def run_once(script: str, *args: str, **env: str) -> DryRun:
        build_dir = tmp_path_factory.mktemp(f"build-{script.removesuffix('.sh')}")
        environment = {
            **script_environment(gcloud_trap),
            "BUILD_DIR": str(build_dir),
            "ENV_FILE": str(ENV_EXAMPLE),
            **env,
        }
        done = subprocess.run(
            ["bash", str(DEPLOY / script), "--dry-run", *args],
            env=environment,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, f"{script} --dry-run failed:\n{done.stderr}"
        calls = gcloud_trap / "calls"
        assert not calls.exists(), f"{script} --dry-run called gcloud: {calls.read_text()}"
        return DryRun(done.stdout, done.stderr, build_dir)

    return run


def script_environment(gcloud_trap: Path) -> dict[str, str]:
    """The environment a script runs in here: the gcloud trap first on PATH, no DRY_RUN or
    config variables inherited from the caller."""
    keep = {name: value for name, value in os.environ.items() if name in ("HOME", "LANG", "TMPDIR")}
    return {**keep, "PATH": f"{gcloud_trap}:{os.environ['PATH']}"}


@pytest.fixture(scope="session")
def env_example() -> dict[str, str]:
    """deploy/env.example's values, as bash reads them."""
    return read_env_file(ENV_EXAMPLE)


def read_env_file(path: Path) -> dict[str, str]:
    done = subprocess.run(
        ["bash", "-c", 'set -a; source "$1"; env -0', "bash", str(path)],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        check=True,
        timeout=30,
    )
    pairs = (item.split("=", 1) for item in done.stdout.decode().split("\0") if "=" in item)
    return {name: value for name, value in pairs if name not in ("PWD", "SHLVL", "_", "PATH")}


def read_yaml_env(path: Path) -> dict[str, str]:
    """A gcloud --env-vars-file."""
    import yaml

    values = yaml.safe_load(path.read_text())
    assert isinstance(values, dict), f"{path} is not a mapping"
    return {str(name): str(value) for name, value in values.items()}


def read_quoted_env(path: Path) -> dict[str, str]:
    """KEY='value' lines (the VM's env file)."""
    values = {}
    for line in path.read_text().splitlines():
        name, value = line.split("=", 1)
        values[name] = shlex.split(value)[0] if value else ""
    return values


def mlflow_client_variables() -> Mapping[str, str]:
    """What the local stack sets so the MLflow client fails fast (nimbus/stack.py)."""
    from nimbus.config import Settings
    from nimbus.stack import Stack

    saved = {name: os.environ.pop(name) for name in list(os.environ) if name.startswith("MLFLOW_")}
    try:
        env = Stack(Settings.from_env({})).env()
    finally:
        os.environ.update(saved)
    return {name: value for name, value in env.items() if name.startswith("MLFLOW_HTTP_REQUEST_")}
