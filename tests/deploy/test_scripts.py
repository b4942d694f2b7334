"""Every deploy script: lint-clean, one flag per line, a dry run that only prints, retries."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.deploy.conftest import (
    DEPLOY,
    ENV_EXAMPLE,
    REPO,
    SCRIPTS,
    RunDry,
    read_env_file,
    script_environment,
)

GCLOUD_SCRIPTS = ["infra.sh", "pubsub.sh", "vm.sh", "functions.sh", "gateway.sh", "teardown.sh"]


def test_shellcheck_passes_on_every_script():
    shellcheck = shutil.which("shellcheck")
    assert shellcheck, "shellcheck is missing: `make install` installs Debian's"
    done = subprocess.run(
        [shellcheck, "--external-sources", *(str(p.relative_to(REPO)) for p in SCRIPTS)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_script_is_strict_bash(script: Path):
    text = script.read_text()
    if script.name == "lib.sh":
        assert "never run" in text  # sourced by the others, which set the options
        return
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "\nset -euo pipefail\n" in text
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_one_flag_per_line(script: Path):
    two_flags = re.compile(r"\s--[a-z][a-z0-9-]*.*\s--[a-z][a-z0-9-]*")
    crowded = [
        line
        for line in script.read_text().splitlines()
        if two_flags.search(line)
        and not line.lstrip().startswith(("#", "echo", "say", "die", "usage"))
    ]
    assert crowded == [], f"{script.name}: one flag per line, please:\n" + "\n".join(crowded)


@pytest.mark.parametrize("script", GCLOUD_SCRIPTS)
def test_dry_run_prints_gcloud_commands_and_calls_nothing(run_dry: RunDry, script: str):
    dry = run_dry(script, *(["--delete-data"] if script == "teardown.sh" else []))

    assert dry.commands, f"{script} --dry-run printed no gcloud command"
    for command in dry.commands:
        assert "--project=my-nimbus-project" in command.words or command.is_(
            "projects", "add-iam-policy-binding"
        ), f"no explicit --project: {command.line}"


@pytest.mark.parametrize("script", ["pubsub.sh", "functions.sh"])
def test_dry_run_env_var_is_the_same_as_the_flag(gcloud_trap: Path, tmp_path: Path, script: str):
    def run(*args: str, **env: str) -> str:
        return subprocess.run(
            ["bash", str(DEPLOY / script), *args],
            env={
                **script_environment(gcloud_trap),
                "ENV_FILE": str(ENV_EXAMPLE),
                "BUILD_DIR": str(tmp_path),
                **env,
            },
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout

    assert run(DRY_RUN="1") == run("--dry-run")
    assert not (gcloud_trap / "calls").exists()


@pytest.mark.parametrize("script", GCLOUD_SCRIPTS)
def test_help_names_the_dry_run(script: str):
    done = subprocess.run(
        ["bash", str(DEPLOY / script), "--help"], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 0
    assert "--dry-run" in done.stdout


def test_a_real_run_without_a_config_file_says_what_to_do(gcloud_trap: Path, tmp_path: Path):
    done = subprocess.run(
        ["bash", str(DEPLOY / "pubsub.sh")],
        env={**script_environment(gcloud_trap), "ENV_FILE": str(tmp_path / "missing.env")},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    assert "copy deploy/env.example to deploy/.env" in done.stderr
    assert not (gcloud_trap / "calls").exists()


def test_teardown_needs_yes_outside_a_dry_run(gcloud_trap: Path):
    done = subprocess.run(
        ["bash", str(DEPLOY / "teardown.sh")],
        env={**script_environment(gcloud_trap), "ENV_FILE": str(ENV_EXAMPLE)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0 and "--yes" in done.stderr
    assert not (gcloud_trap / "calls").exists()


def test_env_example_is_plain_assignments_the_code_accepts(env_example: dict[str, str]):
    from nimbus.config import Settings

    for number, line in enumerate(ENV_EXAMPLE.read_text().splitlines(), 1):
        if line and not line.startswith("#"):
            assert re.fullmatch(r"[A-Z][A-Z0-9_]*=\S*", line), f"env.example:{number}: {line!r}"
    # Every Nimbus setting in it is one the code reads, with a value it accepts.
    Settings.from_env(env_example)
    known = {spec for spec in _settings_variables()}
    nimbus_names = {name for name in env_example if name.startswith("NIMBUS_")}
    assert nimbus_names <= known, f"not settings of nimbus/config.py: {nimbus_names - known}"


def _settings_variables() -> set[str]:
    from nimbus.config import documented_variables

    return {name for name, _, _ in documented_variables()}


def test_gitignore_keeps_the_config_file_out():
    done = subprocess.run(
        ["git", "check-ignore", "-q", "deploy/.env"], cwd=REPO, timeout=30, check=False
    )
    assert done.returncode == 0, "deploy/.env must be git-ignored: it names the real project"


# -- retries ----------------------------------------------------------------------------------


def _retry(tmp_path: Path, fake: str) -> tuple[subprocess.CompletedProcess[str], int]:
    """Run lib.sh's `retry` on a fake command that writes one line per call to a counter."""
    counter = tmp_path / "calls"
    script = f"""
set -euo pipefail
source {DEPLOY / "lib.sh"}
fake() {{ echo x >> {counter}; {fake}; }}
retry fake
"""
    done = subprocess.run(
        ["bash", "-c", script],
        env={**os.environ, "GCLOUD_RETRY_DELAY": "0", "GCLOUD_ATTEMPTS": "4"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    calls = len(counter.read_text().splitlines()) if counter.exists() else 0
    return done, calls


def test_retry_runs_a_flaky_call_again_until_it_succeeds(tmp_path: Path):
    done, calls = _retry(
        tmp_path,
        f'[ "$(wc -l < {tmp_path / "calls"})" -ge 3 ] || {{ echo "503 UNAVAILABLE" >&2; return 1; }}',
    )
    assert done.returncode == 0, done.stderr
    assert calls == 3


def test_retry_gives_up_after_its_attempts(tmp_path: Path):
    done, calls = _retry(tmp_path, 'echo "UNAVAILABLE" >&2; return 1')
    assert done.returncode != 0
    assert calls == 4


def test_retry_does_not_repeat_what_cannot_succeed(tmp_path: Path):
    done, calls = _retry(tmp_path, 'echo "ERROR: unrecognized arguments: --nope" >&2; return 2')
    assert done.returncode == 2
    assert calls == 1


def test_retry_takes_already_exists_as_done(tmp_path: Path):
    done, calls = _retry(
        tmp_path, 'echo "ERROR: ALREADY_EXISTS: Resource already exists" >&2; return 1'
    )
    assert done.returncode == 0
    assert calls == 1


# -- gcloud's own parser ----------------------------------------------------------------------

GCLOUD_PARSE = """
import json, sys
sdk = sys.argv[1]
sys.path[:0] = [sdk + "/lib", sdk + "/lib/third_party"]
from googlecloudsdk import gcloud_main
parser = gcloud_main.CreateCLI([])._CLI__parser
rejected = []
for argv in json.load(sys.stdin):
    try:
        args = parser.parse_args(argv)
        if args.CONCEPT_ARGS is not None:
            args.CONCEPT_ARGS.ParseConcepts()
    except SystemExit as exit:
        rejected.append([argv, "exit %s" % exit.code])
    except Exception as error:
        rejected.append([argv, repr(error)[:500]])
print(json.dumps(rejected))
"""


def test_gcloud_accepts_every_command_of_every_dry_run(run_dry: RunDry, tmp_path: Path):
    """gcloud's own argument parser, in one process and offline, reads every command the dry
    runs print: a misspelt flag or a value outside a flag's choices fails here."""
    gcloud = shutil.which("gcloud")
    if gcloud is None:
        pytest.skip("gcloud is not installed; the dry runs' flags are checked where it is")
    sdk = Path(gcloud).resolve().parents[1]
    python = subprocess.run(
        [gcloud, "info", "--format=value(basic.python_location)"],
        env={**os.environ, "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    ).stdout.strip()
    if not python or not (sdk / "lib" / "googlecloudsdk").is_dir():
        pytest.skip(f"cannot find gcloud's Python and library under {sdk}")

    runs = [
        run_dry(script, *(["--delete-data"] if script == "teardown.sh" else []), **env)
        for script in GCLOUD_SCRIPTS
        for env in ({}, {"DRY_RUN_ASSUME_EXISTING": "1"})
    ]
    argvs = [command.words[1:] for run in runs for command in run.commands]
    # A known-bad command proves the parser is really checking.
    argvs.append(["pubsub", "topics", "create", "probe", "--no-such-flag"])
    done = subprocess.run(
        [python, "-c", GCLOUD_PARSE, str(sdk)],
        input=json.dumps(argvs),
        env={
            "PATH": os.environ["PATH"],
            "HOME": str(tmp_path),
            "CLOUDSDK_CONFIG": str(tmp_path / "gcloud"),
            "CLOUDSDK_CORE_DISABLE_PROMPTS": "1",
        },
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"gcloud's parser could not be loaded here: {done.stderr[-500:]}")
    rejected = json.loads(done.stdout.splitlines()[-1])
    assert rejected[-1][0][-1] == "--no-such-flag"
    assert rejected[:-1] == [], "gcloud rejects:\n" + "\n".join(
        f"gcloud {' '.join(argv)}\n  -> {why}" for argv, why in rejected[:-1]
    )


def test_real_config_is_read_from_the_env_file_given(tmp_path: Path, run_dry: RunDry):
    custom = tmp_path / "prod.env"
    values = read_env_file(ENV_EXAMPLE)
    text = ENV_EXAMPLE.read_text().replace(
        f"PROJECT_ID={values['PROJECT_ID']}", "PROJECT_ID=acme-prod"
    )
    custom.write_text(text)

    dry = run_dry("pubsub.sh", "--env-file", str(custom))

    assert all("--project=acme-prod" in command.words for command in dry.commands)
