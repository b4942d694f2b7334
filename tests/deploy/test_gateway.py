"""openapi.yaml and deploy/gateway.sh: one base URL routing each path to its function."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from tests.deploy.conftest import FUNCTIONS, REPO, DryRun, RunDry

METHODS = ("get", "post", "put", "patch", "delete")
DEVSTACK_GATEWAY = REPO / "devstack" / "cmd" / "nimbus-gateway" / "main.go"


@pytest.fixture(scope="module")
def dry(run_dry: RunDry) -> DryRun:
    return run_dry("gateway.sh")


@pytest.fixture(scope="module")
def spec(dry: DryRun) -> dict:
    config = dry.one("api-gateway", "api-configs", "create")
    return yaml.safe_load(Path(config.flag("openapi-spec") or "").read_text())


def function_urls(dry: DryRun) -> dict[str, str]:
    """The URLs a dry run stands in for the functions' (gateway.sh's `function_url`)."""
    region = dry.one("api-gateway", "gateways", "create").flag("location")
    return {name: f"https://{name}-DRY-RUN-{region}.a.run.app" for name in FUNCTIONS}


def operations(spec: dict) -> dict[tuple[str, str], dict]:
    return {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }


def backend_of(operation: dict, urls: dict[str, str]) -> str:
    address = operation["x-google-backend"]["address"]
    return next(name for name, url in urls.items() if url == address)


def test_spec_is_openapi_2_for_api_gateway(spec: dict):
    assert spec["swagger"] == "2.0"
    assert "${" not in yaml.safe_dump(spec), "a placeholder was left unfilled"


def test_every_operation_names_its_function_and_keeps_the_path(spec: dict, dry: DryRun):
    urls = function_urls(dry)
    for (method, path), operation in operations(spec).items():
        backend = operation.get("x-google-backend")
        assert backend, f"{method} {path} has no x-google-backend"
        assert backend["address"] in urls.values(), f"{method} {path}: {backend['address']}"
        # The functions route on the full path (/v1/batch/<id>), as behind the local gateway.
        assert backend["path_translation"] == "APPEND_PATH_TO_ADDRESS"


def test_routes_agree_with_the_local_gateway(spec: dict, dry: DryRun):
    """The devstack gateway is the local stand-in for API Gateway: the same path goes to the
    same function in both."""
    local = re.findall(
        r'method: http\.Method(\w+), pattern: "([^"]+)", upstream: "(\w+)"',
        DEVSTACK_GATEWAY.read_text(),
    )
    assert local, f"no routes found in {DEVSTACK_GATEWAY}"
    urls = function_urls(dry)
    ops = operations(spec)
    for method, path, function in local:
        operation = ops.get((method.upper(), path))
        assert operation, f"openapi.yaml lacks {method.upper()} {path}"
        assert backend_of(operation, urls) == function, f"{method.upper()} {path}"


def test_each_function_answers_the_methods_routed_to_it(spec: dict, dry: DryRun):
    urls = function_urls(dry)
    for (method, path), operation in operations(spec).items():
        function = backend_of(operation, urls)
        main = (REPO / "functions" / function / "main.py").read_text()
        assert f'"{method}"' in main, f"{method} {path} goes to {function}, which has no {method}"


def test_the_seeds_api_is_all_there(spec: dict):
    ops = operations(spec)
    for route in [
        ("GET", "/"),
        ("GET", "/ready"),
        ("POST", "/v1/predict"),
        ("POST", "/v1/batch"),
        ("GET", "/v1/batch/{job_id}"),
    ]:
        assert route in ops, route
    error = spec["definitions"]["Error"]
    assert error["required"] == ["error"]
    assert spec["definitions"]["ErrorDetail"]["required"] == ["code", "message"]


def test_gateway_calls_the_functions_as_their_invoker(dry: DryRun):
    config = dry.one("api-gateway", "api-configs", "create")
    assert (config.flag("backend-auth-service-account") or "").startswith("nimbus-gateway@")
    gateway = dry.one("api-gateway", "gateways", "create")
    assert gateway.flag("api-config") == config.positionals[-1]


def test_a_rerun_updates_the_gateway_in_place(run_dry: RunDry):
    rerun = run_dry("gateway.sh", DRY_RUN_ASSUME_EXISTING="1")
    assert rerun.find("api-gateway", "gateways", "update")
    assert not rerun.find("api-gateway", "gateways", "create")
