"""The servers Nimbus is compared with, started like the stack's own (`nimbus.stack.Service`).

- the floor: an empty functions-framework handler (bench/floor/main.py), started with the very
  command line of the stack's predict function, so gunicorn's workers and threads match;
- the floor behind a gateway: the stack's gateway program, started again with its predict
  route pointed at the floor, so the gateway path is compared with its own floor;
- `mlflow models serve --env-manager local` of the same `models:/iris@production`, from the
  same MLflow server, with one worker (functions-framework runs one gunicorn worker too).
"""

from __future__ import annotations

import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

from nimbus.stack import Service, Stack, free_port, http_ok

BENCH_DIR = Path(__file__).resolve().parent
FLOOR_SOURCE = BENCH_DIR / "floor" / "main.py"


def with_options(argv: list[str], options: Mapping[str, str]) -> list[str]:
    """`argv` with the value after each flag in `options` replaced; every flag must be there."""
    result = list(argv)
    for flag, value in options.items():
        result[result.index(flag) + 1] = value
    return result


def predict_function(stack: Stack, port: int, *, name: str = "bench-predict") -> Service:
    """Another predict function like the stack's, on `port` (same command, cwd and cache)."""
    # Its first /ready loads the model: a probe may take seconds.
    ready = f"http://127.0.0.1:{port}/ready"
    return _another(stack, "predict", name, {"--port": str(port)}, ready, 120, probe_timeout=30)


def floor_function(stack: Stack, port: int) -> Service:
    """The empty handler, with the predict function's command line but its own source."""
    options = {"--target": "floor", "--source": str(FLOOR_SOURCE), "--port": str(port)}
    ready = f"http://127.0.0.1:{port}/"
    return _another(stack, "predict", "bench-floor", options, ready, 60, cwd=FLOOR_SOURCE.parent)


def gateway_in_front(stack: Stack, port: int, predict_url: str) -> Service:
    """Another gateway like the stack's (same program and flags) on `port`, whose predict
    route goes to `predict_url`: the floor behind it is the floor of the gateway path."""
    options = {"--listen": f"127.0.0.1:{port}", "--predict": predict_url}
    ready = f"http://127.0.0.1:{port}/healthz"
    return _another(stack, "gateway", "bench-floor-gateway", options, ready, 30)


def _another(
    stack: Stack,
    like: str,
    name: str,
    options: Mapping[str, str],
    ready_url: str,
    ready_timeout: float,
    *,
    probe_timeout: float = 2.0,
    cwd: Path | None = None,
) -> Service:
    """A service started as the stack's `like` is, with `options` changed in its command
    line; ready once `ready_url` answers 2xx (each probe bounded by `probe_timeout`)."""
    running = stack.service(like)
    return Service(
        name,
        with_options(running.argv, options),
        ready=lambda: http_ok(ready_url, timeout=probe_timeout),
        ready_timeout=ready_timeout,
        cwd=cwd or running.cwd,
    )


def mlflow_serve(stack: Stack, port: int, *, workers: int = 1) -> Service:
    """`mlflow models serve` of the stack's production model, from the stack's registry."""
    return Service(
        "bench-mlflow-serve",
        [
            sys.executable,
            "-m",
            "mlflow",
            "models",
            "serve",
            "--model-uri",
            stack.settings.model_uri,
            "--env-manager",
            "local",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        ready=lambda: http_ok(f"http://127.0.0.1:{port}/ping"),
        ready_timeout=180,
    )


def post_ok(url: str, body: bytes, *, timeout: float = 60.0) -> bool:
    """True when POSTing the JSON body answers 2xx; False when refused or not 2xx."""
    request = urllib.request.Request(
        url, data=body, method="POST", headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            response.read()
            return 200 <= response.status < 300
    except (OSError, ValueError):  # refused, reset, or an HTTPError (a subclass of OSError)
        return False


def time_to_first_prediction(
    service: Service,
    url: str,
    body: bytes,
    *,
    env: Mapping[str, str],
    log_dir: Path,
    timeout: float = 180.0,
    poll: float = 0.02,
) -> float:
    """Seconds from starting `service` to its first 2xx answer to POST `url`; stops it after."""
    started = time.perf_counter()
    service.start(env, log_dir)
    try:
        while not post_ok(url, body):
            if not service.is_running:
                raise RuntimeError(f"{service.name} exited before answering; see {log_dir}")
            if time.perf_counter() - started > timeout:
                raise TimeoutError(f"{service.name} gave no prediction within {timeout:.0f}s")
            time.sleep(poll)
        return time.perf_counter() - started
    finally:
        service.stop()


def cold_start_services(stack: Stack) -> dict[str, tuple[Service, str]]:
    """A fresh predict function and a fresh `mlflow models serve`, each on a free port,
    with the URL a prediction is posted to."""
    predict_port, mlflow_port = free_port(), free_port()
    predict = predict_function(stack, predict_port, name="coldstart-predict")
    served = replace(mlflow_serve(stack, mlflow_port), name="coldstart-mlflow-serve")
    return {
        "nimbus_predict": (predict, f"http://127.0.0.1:{predict_port}/v1/predict"),
        "mlflow_serve": (served, f"http://127.0.0.1:{mlflow_port}/invocations"),
    }
