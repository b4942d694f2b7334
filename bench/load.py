"""Load runs: wrk in its own process, one JSON line of results, parsed into `LoadResult`."""

from __future__ import annotations

import re
import shutil
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson

WRK_SCRIPT = Path(__file__).resolve().parent / "wrk" / "post.lua"
_MARKER = "WRK_JSON "


class LoadError(Exception):
    """wrk could not run, or printed no result line."""


@dataclass(frozen=True)
class LoadResult:
    """One wrk run against one URL: throughput, latency (ms) and every kind of error."""

    requests: int
    duration_s: float
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    non2xx: int
    socket_errors: int

    @property
    def errors(self) -> int:
        """Answers outside 2xx plus connect, read, write and timeout errors."""
        return self.non2xx + self.socket_errors

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "errors": self.errors}


def parse_wrk_output(output: str) -> LoadResult:
    """The `WRK_JSON {...}` line that bench/wrk/post.lua's done() prints, as a LoadResult."""
    for line in output.splitlines():
        if line.startswith(_MARKER):
            raw = orjson.loads(line.removeprefix(_MARKER))
            break
    else:
        raise LoadError(f"wrk printed no {_MARKER.strip()} line:\n{output[-2000:]}")
    duration_s = raw["duration_us"] / 1e6
    latency = raw["latency_us"]
    # wrk's status counter (> 399) is a subset of non2xx; the socket errors are disjoint.
    socket_errors = sum(
        raw[name] for name in ("connect_errors", "read_errors", "write_errors", "timeout_errors")
    )
    return LoadResult(
        requests=raw["requests"],
        duration_s=duration_s,
        requests_per_s=raw["requests"] / duration_s if duration_s > 0 else 0.0,
        p50_ms=latency["p50"] / 1000,
        p90_ms=latency["p90"] / 1000,
        p99_ms=latency["p99"] / 1000,
        max_ms=latency["max"] / 1000,
        non2xx=raw["non2xx"],
        socket_errors=socket_errors,
    )


def wrk_argv(
    url: str, body_file: Path, *, connections: int, duration_s: float, threads: int = 1
) -> list[str]:
    """The wrk command: one thread (it is not the bottleneck at these rates), POSTing a body."""
    if not url.startswith("http://127.0.0.1:"):
        raise ValueError(f"the bench only loads 127.0.0.1, got {url}")
    binary = shutil.which("wrk")
    if binary is None:
        raise LoadError("wrk is not on PATH: `make bench` installs it (apt-get install wrk).")
    return [
        binary,
        f"--threads={min(threads, connections)}",
        f"--connections={connections}",
        f"--duration={max(1, round(duration_s))}s",
        "--timeout=5s",
        f"--script={WRK_SCRIPT}",
        url,
        "--",
        str(body_file),
    ]


def run_wrk(
    url: str, body_file: Path, *, connections: int, duration_s: float, threads: int = 1
) -> LoadResult:
    """Run wrk against `url` and return its parsed result."""
    argv = wrk_argv(url, body_file, connections=connections, duration_s=duration_s, threads=threads)
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 60, check=False
    )
    if done.returncode != 0:
        raise LoadError(f"wrk exited with {done.returncode}: {done.stderr.strip()[-2000:]}")
    return parse_wrk_output(done.stdout)


def wrk_version() -> str:
    """wrk's version line, e.g. `wrk debian/4.1.0-3+b2 [epoll]`."""
    binary = shutil.which("wrk")
    if binary is None:
        return "missing"
    done = subprocess.run([binary, "--version"], capture_output=True, text=True, check=False)
    match = re.search(r"^wrk .*?\]", done.stdout + done.stderr, re.MULTILINE)
    return match.group(0) if match else "unknown"
