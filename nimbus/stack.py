"""The local stack's processes: how each is started and how we know it is up.

`nimbus up` and the tests start the same commands from here, so what the tests exercise is
what a developer runs.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING

from nimbus.errors import ConfigError

if TYPE_CHECKING:
    from nimbus.config import Settings

logger = logging.getLogger(__name__)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, *, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
    """Block until something accepts connections on host:port, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"nothing listens on {host}:{port} after {timeout:.0f}s"
                ) from None
            time.sleep(0.05)


def redis_argv(port: int, data_dir: Path) -> list[str]:
    """redis-server as Memorystore runs it: AOF fsync every second, never evict job state."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise ConfigError(
            "redis-server is not on PATH. Run `make install` (it installs Debian's redis-server) "
            "or install Redis 7 yourself."
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    return [
        binary,
        "--bind", "127.0.0.1",
        "--port", str(port),
        "--dir", str(data_dir),
        "--appendonly", "yes",
        "--appendfsync", "everysec",
        "--maxmemory-policy", "noeviction",
        "--save", "",
        "--daemonize", "no",
        "--loglevel", "warning",
    ]  # fmt: skip


def http_ok(url: str, *, timeout: float = 2.0) -> bool:
    """True when GET url answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (OSError, ValueError):
        return False


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def repo_root() -> Path:
    """The checkout `nimbus up` runs from: the stack starts the functions from their folders."""
    root = Path(__file__).resolve().parents[1]
    if not (root / "functions").is_dir() or not (root / "devstack").is_dir():
        raise ConfigError(
            f"{root} is not a Nimbus checkout: `nimbus up` runs the functions from the "
            "repository's functions/ folder. Run it from a clone (`make run`)."
        )
    return root


def devstack_binaries(root: Path) -> Path:
    """devstack/bin with the emulator and gateway programs, built with `go build` if missing."""
    bin_dir = root / "devstack" / "bin"
    wanted = [bin_dir / "nimbus-emulators", bin_dir / "nimbus-gateway"]
    if all(path.exists() for path in wanted):
        return bin_dir
    go = shutil.which("go")
    if go is None:
        raise ConfigError("Go is needed to build devstack/ (the emulators and the gateway).")
    logger.info("building devstack programs with go build")
    subprocess.run(
        [go, "build", "-o", "bin/", "./cmd/..."], cwd=root / "devstack", check=True, timeout=600
    )
    return bin_dir


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    # If `nimbus up` is killed outright, its children must not linger holding ports.
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Service:
    """One process of the stack: how to start it and how to tell it is ready."""

    name: str
    argv: list[str]
    ready: Callable[[], bool]
    ready_timeout: float = 60.0
    restart: bool = False
    cwd: Path | None = None
    process: subprocess.Popen[bytes] | None = None
    restarts: int = 0
    env_overrides: dict[str, str] = field(default_factory=dict)  # this service's own settings

    def start(self, env: Mapping[str, str], log_dir: Path) -> None:
        log_dir.mkdir(parents=True, exist_ok=True)
        with (log_dir / f"{self.name}.log").open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env={**env, **self.env_overrides},
                cwd=self.cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop() takes its children too
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,
            )

    @property
    def is_running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, log_dir: Path) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while not self.ready():
            if not self.is_running:
                code = self.process.returncode if self.process else None
                raise StackError(self.name, f"exited with code {code}", log_dir)
            if time.monotonic() > deadline:
                raise StackError(self.name, f"not ready after {self.ready_timeout:.0f}s", log_dir)
            time.sleep(0.1)

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM the process group, then SIGKILL what is left after `timeout`."""
        process = self.process
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, sig)
            try:
                process.wait(timeout=timeout)
                break
            except subprocess.TimeoutExpired:
                logger.warning("%s did not stop within %.0fs; killing it", self.name, timeout)
        # The leader may be gone while a child of its group lingers; sweep the group.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)


class StackError(Exception):
    """A service of the local stack failed to start or died; the message ends with its log."""

    def __init__(self, service: str, problem: str, log_dir: Path) -> None:
        log_path = log_dir / f"{service}.log"
        tail = ""
        with contextlib.suppress(OSError):
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-20:])
        super().__init__(f"{service} {problem}; last lines of {log_path}:\n{tail}")
        self.service = service


class Stack:
    """The whole local system, started in dependency order and stopped in reverse.

    Mirrors the cloud: emulators for Pub/Sub and GCS, redis-server for Memorystore, a real
    MLflow server, the three functions under functions-framework, workers, and the gateway.
    """

    def __init__(self, settings: Settings, *, home: Path | None = None) -> None:
        self.settings = settings
        self.home = (home or Path(settings.home)).resolve()
        self.log_dir = self.home / "logs"
        self.root = repo_root()
        self.services: list[Service] = []

    # -- addresses -----------------------------------------------------------------------

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.port}"

    def function_url(self, name: str) -> str:
        port = getattr(self.settings, f"{name}_port")
        return f"http://127.0.0.1:{port}"

    @property
    def mlflow_url(self) -> str:
        return f"http://127.0.0.1:{self.settings.mlflow_port}"

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.settings.redis_port}/0"

    def env(self) -> dict[str, str]:
        """The environment every process of the stack gets: where the others are."""
        env = dict(os.environ)
        # Every setting travels, so each process runs with exactly this stack's settings.
        for spec in fields(self.settings):
            env[spec.metadata["env"]] = str(getattr(self.settings, spec.name))
        env.update(
            {
                "NIMBUS_HOME": str(self.home),
                "NIMBUS_REDIS_URL": self.redis_url,
                "PUBSUB_EMULATOR_HOST": f"127.0.0.1:{self.settings.pubsub_port}",
                "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{self.settings.gcs_port}",
                "MLFLOW_TRACKING_URI": self.mlflow_url,
                "GOOGLE_CLOUD_PROJECT": self.settings.project,
                "NIMBUS_MODEL_CACHE_DIR": self.settings.model_cache_dir
                or str(self.home / "model-cache"),
                "PYTHONUNBUFFERED": "1",
            }
        )
        # MLflow's client retries for minutes by default; a request should fail over fast.
        env.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
        env.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        return env

    def urls(self) -> dict[str, str]:
        return {
            "gateway": self.gateway_url,
            "predict": self.function_url("predict"),
            "batch_submit": self.function_url("batch_submit"),
            "batch_status": self.function_url("batch_status"),
            "mlflow": self.mlflow_url,
            "redis": self.redis_url,
            "pubsub": f"127.0.0.1:{self.settings.pubsub_port}",
            "gcs": f"http://127.0.0.1:{self.settings.gcs_port}",
            **{
                service.name: self.worker_metrics_url(service.name)
                for service in self.services
                if "NIMBUS_WORKER_METRICS_PORT" in service.env_overrides
            },
        }

    def worker_metrics_url(self, name: str) -> str:
        """Where a worker (`worker-1`, ...) serves its Prometheus metrics."""
        port = self.service(name).env_overrides["NIMBUS_WORKER_METRICS_PORT"]
        return f"http://127.0.0.1:{port}/metrics"

    # -- life ----------------------------------------------------------------------------

    def start(self) -> None:
        """Start every service in dependency order; each must be ready before the next."""
        self._check_ports()
        bin_dir = devstack_binaries(self.root)
        env = self.env()
        s = self.settings
        bucket = s.artifact_root.removeprefix("gs://").split("/", 1)[0]
        self._start(
            Service(
                "emulators",
                [
                    str(bin_dir / "nimbus-emulators"),
                    "--host",
                    "127.0.0.1",
                    "--pubsub-port",
                    str(s.pubsub_port),
                    "--gcs-port",
                    str(s.gcs_port),
                    "--gcs-root",
                    str(self.home / "gcs"),
                    "--bucket",
                    bucket,
                ],
                ready=lambda: _accepts(s.pubsub_port) and _accepts(s.gcs_port),
                ready_timeout=30,
            ),
            env,
        )
        self._start(
            Service(
                "redis",
                redis_argv(s.redis_port, self.home / "redis"),
                ready=lambda: _redis_pong(s.redis_port),
                ready_timeout=30,
            ),
            env,
        )
        with environment(env):
            from nimbus.bus import ensure_topology

            ensure_topology(s)
        self._start(
            Service(
                "mlflow",
                [
                    sys.executable,
                    "-m",
                    "mlflow_server",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(s.mlflow_port),
                ],
                ready=lambda: http_ok(f"{self.mlflow_url}/health"),
                ready_timeout=90,
            ),
            env,
        )
        self._ensure_model(env)
        for name in ("predict", "batch_submit", "batch_status"):
            self._start(self._function(name), env, wait=False)
        for number in range(1, s.workers + 1):
            self._start(
                Service(
                    f"worker-{number}",
                    [sys.executable, "-m", "vm_worker"],
                    ready=lambda: True,
                    restart=True,
                    # Several workers on one machine: each serves /metrics on a port of its own.
                    env_overrides={"NIMBUS_WORKER_METRICS_PORT": str(free_port())},
                ),
                env,
                wait=False,
            )
        self._start(
            Service(
                "gateway",
                [
                    str(bin_dir / "nimbus-gateway"),
                    "--listen",
                    f"127.0.0.1:{s.port}",
                    "--predict",
                    self.function_url("predict"),
                    "--batch-submit",
                    self.function_url("batch_submit"),
                    "--batch-status",
                    self.function_url("batch_status"),
                    # The one spec: served as /openapi.json and rendered at /docs.
                    "--openapi",
                    str(self.root / "openapi.yaml"),
                ],
                ready=lambda: http_ok(f"{self.gateway_url}/healthz"),
                ready_timeout=30,
            ),
            env,
            wait=False,
        )
        for service in self.services:
            service.wait_ready(self.log_dir)
        self._write_state()

    def supervise(self, stop: threading.Event, *, poll: float = 0.5) -> None:
        """Until `stop` is set: restart workers that die; raise StackError if anything else does."""
        env = self.env()
        while not stop.wait(poll):
            for service in self.services:
                if service.is_running:
                    continue
                code = service.process.returncode if service.process else None
                if not service.restart:
                    raise StackError(service.name, f"exited with code {code}", self.log_dir)
                service.restarts += 1
                logger.warning(
                    "%s exited with code %s; restarting (restart %d)",
                    service.name,
                    code,
                    service.restarts,
                )
                # Back off a crash loop, but keep one short so a killed worker returns fast.
                time.sleep(min(0.5 * service.restarts, 5.0))
                service.start(env, self.log_dir)
                self._write_state()

    def stop(self) -> None:
        """Stop every process started, newest first; leaves none behind."""
        for service in reversed(self.services):
            service.stop()
        self.services.clear()
        with contextlib.suppress(OSError):
            self.state_path.unlink()

    def restart(self, name: str) -> None:
        """Stop one service (if running), start it again and wait until it is ready."""
        service = self.service(name)
        service.stop()
        service.start(self.env(), self.log_dir)
        service.wait_ready(self.log_dir)
        self._write_state()

    def service(self, name: str) -> Service:
        return next(service for service in self.services if service.name == name)

    def __enter__(self) -> Stack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    @property
    def state_path(self) -> Path:
        """A JSON file naming each running service's pid and the stack's URLs, for tools."""
        return self.home / "stack.json"

    def _write_state(self) -> None:
        pids = {svc.name: svc.process.pid for svc in self.services if svc.process is not None}
        state = {"urls": self.urls(), "pids": pids}
        self.state_path.write_text(json.dumps(state, indent=2) + "\n")

    # -- pieces --------------------------------------------------------------------------

    def _start(self, service: Service, env: Mapping[str, str], *, wait: bool = True) -> None:
        logger.info("starting %s", service.name)
        self.services.append(service)
        service.start(env, self.log_dir)
        if wait:
            service.wait_ready(self.log_dir)

    def _function(self, name: str) -> Service:
        port = getattr(self.settings, f"{name}_port")
        url = self.function_url(name)
        # Waiting on /ready also warms what the first request needs (the model, the clients).
        probe = f"{url}/ready"
        return Service(
            name,
            [
                sys.executable,
                "-m",
                "functions_framework",
                "--target",
                name,
                "--source",
                str(self.root / "functions" / name / "main.py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ],
            ready=lambda: http_ok(probe, timeout=30),
            ready_timeout=120,
            cwd=self.root / "functions" / name,
        )

    def _ensure_model(self, env: Mapping[str, str]) -> None:
        """Train and register the iris model once, when the registry has no production one."""
        name = self.settings.model_name
        dataset = name if name in {"iris", "diabetes"} else "iris"
        log_path = self.log_dir / "train.log"
        with log_path.open("ab") as log:
            done = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "mlflow_server.train",
                    "--tracking-uri",
                    self.mlflow_url,
                    "--dataset",
                    dataset,
                    "--name",
                    name,
                    "--if-missing",
                ],
                env=dict(env),
                stdout=log,
                stderr=subprocess.STDOUT,
                timeout=300,
                check=False,
            )
        if done.returncode != 0:
            raise StackError("train", f"exited with code {done.returncode}", self.log_dir)

    def _check_ports(self) -> None:
        s = self.settings
        wanted = {
            "NIMBUS_PORT (gateway)": s.port,
            "NIMBUS_PREDICT_PORT": s.predict_port,
            "NIMBUS_BATCH_SUBMIT_PORT": s.batch_submit_port,
            "NIMBUS_BATCH_STATUS_PORT": s.batch_status_port,
            "NIMBUS_MLFLOW_PORT": s.mlflow_port,
            "NIMBUS_REDIS_PORT": s.redis_port,
            "NIMBUS_PUBSUB_PORT": s.pubsub_port,
            "NIMBUS_GCS_PORT": s.gcs_port,
        }
        busy = [f"{name}={port}" for name, port in wanted.items() if not port_is_free(port)]
        if busy:
            raise ConfigError(
                "Ports already in use: " + ", ".join(busy) + ". Stop what holds them (another "
                "`nimbus up`?) or set those variables to free ports."
            )


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def environment(env: Mapping[str, str]) -> Iterator[None]:
    """Run a block with os.environ set to `env` (the client libraries read it at construction)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)
