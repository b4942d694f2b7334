"""openapi.yaml (the one OpenAPI 3 spec) and deploy/gateway.sh: one base URL routing each path
to its function."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from deploy.render_openapi import RenderError, render
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


def backend_of(spec: dict, operation: dict, urls: dict[str, str]) -> str:
    backend = spec["x-google-api-management"]["backends"][operation["x-google-backend"]]
    return next(name for name, url in urls.items() if url == backend["address"])


def source_spec() -> dict:
    return yaml.safe_load((REPO / "openapi.yaml").read_text())


def test_the_source_is_openapi_3_and_api_gateway_gets_it_rendered(spec: dict):
    assert str(source_spec()["openapi"]).startswith("3.0.")
    assert str(spec["openapi"]).startswith("3.0.")  # API Gateway takes OpenAPI 3.x configs
    assert "${" not in yaml.safe_dump(spec), "a placeholder was left unfilled"
    # Nimbus's keys are checked by the functions; API Gateway would read an apiKey scheme as
    # a Google Cloud API key, so the rendered document has none.
    assert "security" not in spec
    assert "securitySchemes" not in spec["components"]
    assert "securitySchemes" in source_spec()["components"]


def test_every_operation_names_its_function_and_keeps_the_path(spec: dict, dry: DryRun):
    urls = function_urls(dry)
    backends = spec["x-google-api-management"]["backends"]
    assert set(backends) == set(FUNCTIONS)
    for name, backend in backends.items():
        assert backend["address"] == urls[name]
        # The functions route on the full path (/v1/batch/<id>), as behind the local gateway.
        assert backend["pathTranslation"] == "APPEND_PATH_TO_ADDRESS"
    for (method, path), operation in operations(spec).items():
        assert operation.get("x-google-backend") in backends, f"{method} {path}"


def test_render_refuses_what_api_gateway_would_not_route():
    source = source_spec()
    urls = {name: f"https://{name}.example" for name in FUNCTIONS}
    with pytest.raises(RenderError, match="no URL"):
        render(source, {"predict": "https://p.example"})
    broken = yaml.safe_load(yaml.safe_dump(source))
    broken["paths"]["/v1/predict"]["post"]["x-google-backend"] = "nowhere"
    with pytest.raises(RenderError, match="nowhere"):
        render(broken, urls)
    with pytest.raises(RenderError, match="OpenAPI 3"):
        render({"swagger": "2.0"}, urls)
    assert render(source, urls)["paths"].keys() == source["paths"].keys()


def test_every_operation_documents_its_errors_in_the_one_shape():
    source = source_spec()
    error_ref = "#/components/schemas/Error"
    for (method, path), operation in operations(source).items():
        responses = operation["responses"]
        if path not in {"/", "/ready"}:  # liveness and readiness need no key
            assert "401" in responses, f"{method} {path} needs a 401 (keys on)"
        else:
            assert operation["security"] == [], f"{method} {path} needs no key"
        for status, response in responses.items():
            if not status.startswith("4"):
                continue
            if "$ref" in response:
                name = response["$ref"].rsplit("/", 1)[1]
                response = source["components"]["responses"][name]
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": error_ref}, f"{method} {path} {status}"


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
        assert backend_of(spec, operation, urls) == function, f"{method.upper()} {path}"


def test_each_function_answers_the_methods_routed_to_it(spec: dict, dry: DryRun):
    urls = function_urls(dry)
    for (method, path), operation in operations(spec).items():
        function = backend_of(spec, operation, urls)
        main = (REPO / "functions" / function / "main.py").read_text()
        assert f'"{method}"' in main, f"{method} {path} goes to {function}, which has no {method}"


def test_the_seeds_api_is_all_there(spec: dict):
    ops = operations(spec)
    for route in [
        ("GET", "/"),
        ("GET", "/ready"),
        ("POST", "/v1/predict"),
        ("POST", "/v1/batch"),
        ("GET", "/v1/batch"),
        ("GET", "/v1/batch/{job_id}"),
        ("DELETE", "/v1/batch/{job_id}"),
    ]:
        assert route in ops, route
    error = spec["components"]["schemas"]["Error"]
    assert error["required"] == ["error"]
    assert spec["components"]["schemas"]["ErrorDetail"]["required"] == ["code", "message"]


def test_gateway_calls_the_functions_as_their_invoker(dry: DryRun):
    config = dry.one("api-gateway", "api-configs", "create")
    assert (config.flag("backend-auth-service-account") or "").startswith("nimbus-gateway@")
    gateway = dry.one("api-gateway", "gateways", "create")
    assert gateway.flag("api-config") == config.positionals[-1]


def test_a_rerun_updates_the_gateway_in_place(run_dry: RunDry):
    rerun = run_dry("gateway.sh", DRY_RUN_ASSUME_EXISTING="1")
    assert rerun.find("api-gateway", "gateways", "update")
    assert not rerun.find("api-gateway", "gateways", "create")
