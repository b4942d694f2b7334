"""The bench harness's pure parts: wrk's output, the table and its targets, memory sampling.

No load runs here; `make bench` is where the numbers come from.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bench.batch import split_job_time
from bench.load import LoadError, LoadResult, parse_wrk_output, wrk_argv
from bench.memory import MIB, PeakMemory, group_pids, groups_memory
from bench.report import (
    FLOOR,
    FLOOR_GATEWAY,
    GATEWAY,
    MLFLOW,
    NIMBUS,
    Memory,
    TargetCheck,
    format_predict_table,
    format_targets,
    paired_ratio,
    predict_targets,
    summarize,
)

WRK_STDOUT = """\
Running 10s test @ http://127.0.0.1:41234/v1/predict
  1 threads and 4 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.61ms    1.20ms  31.02ms   91.40%
    Req/Sec     1.55k    98.00     1.70k    80.00%
  15432 requests in 10.00s, 3.10MB read
  Non-2xx or 3xx responses: 3
Requests/sec:   1543.11
Transfer/sec:    317.51KB
WRK_JSON {"requests": 15432, "duration_us": 10000500, "bytes": 3250000, "non2xx": 3, \
"connect_errors": 1, "read_errors": 2, "write_errors": 0, "timeout_errors": 1, \
"status_errors": 3, "latency_us": {"min": 801, "mean": 2610.4, "max": 31020, "p50": 2400, \
"p90": 3300, "p99": 7100, "p999": 20000}}
"""


def result(
    requests_per_s: float, *, p50: float = 2.0, p99: float = 5.0, errors: int = 0
) -> LoadResult:
    return LoadResult(
        requests=int(requests_per_s * 10),
        duration_s=10.0,
        requests_per_s=requests_per_s,
        p50_ms=p50,
        p90_ms=p50 * 1.5,
        p99_ms=p99,
        max_ms=p99 * 2,
        non2xx=errors,
        socket_errors=0,
    )


def test_wrk_output_parses_into_rate_latency_and_every_error() -> None:
    parsed = parse_wrk_output(WRK_STDOUT)

    assert parsed.requests == 15432
    assert parsed.requests_per_s == pytest.approx(15432 / 10.0005)
    assert (parsed.p50_ms, parsed.p90_ms, parsed.p99_ms, parsed.max_ms) == (2.4, 3.3, 7.1, 31.02)
    # wrk's status count (> 399) is inside non2xx; socket errors add to it.
    assert parsed.non2xx == 3
    assert parsed.socket_errors == 4
    assert parsed.errors == 7
    assert parsed.to_dict()["errors"] == 7


def test_wrk_output_without_the_result_line_is_an_error() -> None:
    with pytest.raises(LoadError, match="WRK_JSON"):
        parse_wrk_output("unable to connect to 127.0.0.1:1 Connection refused\n")


def test_wrk_is_only_ever_pointed_at_loopback(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"127\.0\.0\.1"):
        wrk_argv("http://example.com/", tmp_path / "body.json", connections=4, duration_s=1)


def test_ratios_pair_rounds_and_the_table_shows_them() -> None:
    rounds = {
        NIMBUS: [result(1200), result(1000), result(1500, errors=2)],
        GATEWAY: [result(900), result(800), result(1000)],
        MLFLOW: [result(300), result(250), result(300)],
        FLOOR: [result(2000), result(2000), result(2000)],
    }
    memory = {NIMBUS: Memory(150, 100), MLFLOW: Memory(300, 250)}

    summaries = summarize(rounds, memory)
    table = format_predict_table(summaries)

    nimbus = summaries[0]
    assert nimbus.requests_per_s == 1200
    assert nimbus.errors == 2
    assert nimbus.vs_mlflow == pytest.approx(4.0)  # median of 4.0, 4.0, 5.0
    assert nimbus.vs_floor == pytest.approx(0.6)
    assert summaries[2].vs_mlflow == pytest.approx(1.0)
    assert "Nimbus predict (function port)" in table
    assert "4.00x" in table and "0.60x" in table
    assert paired_ratio(rounds[GATEWAY], rounds[MLFLOW]) == pytest.approx(3.2)


def test_targets_pass_and_fail_as_the_issue_sets_them() -> None:
    rounds = {
        NIMBUS: [result(1300, p50=2.0, p99=5.0)],
        GATEWAY: [result(1000, p50=3.0, p99=12.0, errors=1)],
        MLFLOW: [result(300)],
        FLOOR: [result(1600)],
    }
    memory = {NIMBUS: Memory(150, 100), GATEWAY: Memory(170, 110), MLFLOW: Memory(300, 250)}

    checks = {check.name: check for check in predict_targets(summarize(rounds, memory))}
    printed = format_targets(list(checks.values()))

    assert checks["predict req/s ≥ 4x MLflow (function port)"].passed  # 4.33x
    assert checks["predict req/s ≥ 0.75x floor (function port)"].passed  # 0.81x
    assert checks["predict p99 ≤ 3x p50 at 4 connections (function port)"].passed  # 2.5
    assert checks["predict errors = 0 (function port)"].passed
    assert checks["predict process tree RSS ≤ MLflow's"].passed  # 0.5
    assert not checks["predict req/s ≥ 4x MLflow (via gateway)"].passed  # 3.33x
    assert not checks["predict p99 ≤ 3x p50 at 4 connections (via gateway)"].passed  # 4.0
    assert not checks["predict errors = 0 (via gateway)"].passed
    assert "FAIL  predict errors = 0 (via gateway)" in printed
    assert "PASS  predict req/s ≥ 4x MLflow (function port)" in printed


def test_job_time_splits_at_the_records_timestamps() -> None:
    record = {
        "job_id": "6f1c2a4e-0b7d-4d3a-9a57-2f0e8d1c9b42",
        "created_at": "2026-12-04T19:02:11.500Z",
        "started_at": "2026-12-04T19:02:11.600Z",
        "finished_at": "2026-12-04T19:02:12.600Z",
    }
    submitted = 1796410931.2  # 2026-12-04T19:02:11.200Z

    run = split_job_time(1000, submitted, submitted + 0.35, submitted + 1.45, record)

    assert run.receive_s == pytest.approx(0.3, abs=1e-3)
    assert run.queue_s == pytest.approx(0.1, abs=1e-3)
    assert run.run_s == pytest.approx(1.0, abs=1e-3)
    assert run.notice_s == pytest.approx(0.05, abs=1e-3)
    assert run.rows_per_s == pytest.approx(1000 / 1.45)


@pytest.fixture
def process_group_holding_64_mib() -> Iterator[subprocess.Popen[bytes]]:
    """A parent holding 64 MiB and a child of its own, in a process group of their own."""
    code = (
        "import subprocess, sys, time\n"
        "block = b'x' * (64 * 1024 * 1024)  # written, so resident\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True
    )
    assert process.stdout is not None
    assert process.stdout.readline() == b"ready\n"
    yield process
    os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


def test_memory_is_summed_over_the_process_group(
    process_group_holding_64_mib: subprocess.Popen[bytes],
) -> None:
    pgid = process_group_holding_64_mib.pid

    members = group_pids(pgid)
    memory = groups_memory([pgid])
    with PeakMemory([pgid], interval=0.05) as peak:
        time.sleep(0.2)

    assert len(members) == 2 and pgid in members
    assert memory.processes == 2
    assert memory.rss_bytes > 64 * MIB
    assert 0 < memory.pss_bytes <= memory.rss_bytes
    assert peak.samples >= 2
    assert peak.rss_mib >= memory.rss_mib * 0.9


def test_the_gateway_path_is_compared_with_the_floor_behind_the_same_gateway() -> None:
    rounds = {
        NIMBUS: [result(1400), result(1500)],
        GATEWAY: [result(1100), result(1200)],
        MLFLOW: [result(250), result(250)],
        FLOOR: [result(1800), result(1800)],
        FLOOR_GATEWAY: [result(1400), result(1500)],
    }

    summaries = {s.name: s for s in summarize(rounds, {})}
    checks = {check.name: check for check in predict_targets(list(summaries.values()))}
    table = format_predict_table(list(summaries.values()))

    gateway = summaries[GATEWAY]
    assert gateway.floor == FLOOR_GATEWAY
    assert gateway.vs_floor == pytest.approx((1100 / 1400 + 1200 / 1500) / 2)
    assert gateway.vs_bare_floor == pytest.approx((1100 / 1800 + 1200 / 1800) / 2)
    assert summaries[FLOOR_GATEWAY].floor == FLOOR  # shows what the hop itself costs
    assert summaries[NIMBUS].floor == FLOOR and summaries[NIMBUS].vs_bare_floor is None
    check = checks["predict req/s ≥ 0.75x floor (via gateway)"]
    assert check.passed and "against the bare floor 0.64x" in check.note
    assert "0.79x*" in table and "* against the floor via gateway" in table


def test_without_the_gateways_floor_the_gateway_row_uses_the_bare_floor() -> None:
    rounds = {GATEWAY: [result(900)], MLFLOW: [result(300)], FLOOR: [result(1800)]}

    (gateway, _, _) = summarize(rounds, {})

    assert gateway.floor == FLOOR and gateway.vs_floor == pytest.approx(0.5)


def test_a_reference_line_is_neither_pass_nor_fail() -> None:
    reference = TargetCheck("batch ≥ 0.5x floor (inline)", 0.25, 0.5, True, reference=True)

    printed = format_targets([reference])

    assert printed.startswith("ref ") and "0.25x" in printed and "FAIL" not in printed
