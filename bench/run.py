"""`make bench`: Nimbus side by side with `mlflow models serve` and the floor, interleaved.

    python -m bench            # the full run, about 8 minutes on 2 cores
    python -m bench --quick    # a smoke run, about 2 minutes

Starts its own stack on free ports (nimbus.stack.Stack), `mlflow models serve` of the same
registered model and an empty functions-framework handler, loads each with wrk in rounds
(A B C D, A B C D, ...), times batch jobs, cold starts and how cost grows, then prints the
table with the issue's targets and saves bench/results/<date>.json and .png. A missed target
is reported, not an error: the exit code is non-zero only when the harness itself fails.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from bench import batch, servers
from bench.load import LoadResult, run_wrk, wrk_version
from bench.memory import PeakMemory, group_processes
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
    predict_targets,
    summarize,
)
from nimbus.config import Settings
from nimbus.stack import Service, Stack, free_port

logger = logging.getLogger("bench")

RESULTS_DIR = Path(__file__).resolve().parent / "results"
MAX_BODY_BYTES = 64 * 1024 * 1024  # a 100,000-item body is about 8.5 MB; leave room


@dataclass(frozen=True)
class Plan:
    """How much of everything one run measures."""

    quick: bool
    rounds: int = 3
    duration_s: float = 10.0
    warmup_s: float = 2.0
    connections: int = 4
    scaling_connections: tuple[int, ...] = (1, 16, 64)
    scaling_rounds: int = 2
    scaling_duration_s: float = 5.0
    cold_starts: int = 3
    batch_rows: int = 100_000
    batch_rounds: int = 3
    batch_sizes: tuple[int, ...] = (1_000, 10_000)
    large_rows: int = 1_000_000
    large_rounds: int = 2
    workers: tuple[int, ...] = (1, 2, 4)
    concurrent_jobs: int = 8
    rows_per_concurrent_job: int = 50_000

    @classmethod
    def for_args(cls, args: argparse.Namespace) -> Plan:
        plan = (
            cls(
                quick=True,
                rounds=2,
                duration_s=3.0,
                warmup_s=1.0,
                scaling_rounds=1,
                scaling_duration_s=2.0,
                cold_starts=1,
                batch_rows=10_000,
                batch_rounds=1,
                batch_sizes=(1_000,),
                large_rows=100_000,
                large_rounds=1,
                workers=(1, 2),
                concurrent_jobs=4,
                rows_per_concurrent_job=10_000,
            )
            if args.quick
            else cls(quick=False)
        )
        if args.rounds:
            plan = replace(plan, rounds=args.rounds)
        if args.duration:
            plan = replace(plan, duration_s=args.duration)
        return plan


def bench_settings(home: Path, workers: int) -> Settings:
    """A stack of its own: every port free, state under `home`, defaults otherwise."""
    ports = {
        name: free_port()
        for name in (
            "port",
            "predict_port",
            "batch_submit_port",
            "batch_status_port",
            "mlflow_port",
            "redis_port",
            "pubsub_port",
            "gcs_port",
        )
    }
    return replace(Settings.from_env({}), home=str(home), workers=workers, **ports)  # type: ignore[arg-type]


def prepare_environment() -> None:
    """The bench stack's processes inherit this process's environment: no NIMBUS_* from the
    shell (the bench measures the defaults), except a body limit that fits 100,000 items."""
    for name in [name for name in os.environ if name.startswith("NIMBUS_")]:
        del os.environ[name]
    os.environ["NIMBUS_MAX_BODY_BYTES"] = str(MAX_BODY_BYTES)
    # `mlflow models serve` execs `uvicorn` from PATH, as in an activated venv.
    scripts = str(Path(sys.executable).parent)
    if scripts not in os.environ.get("PATH", "").split(os.pathsep):
        os.environ["PATH"] = scripts + os.pathsep + os.environ.get("PATH", "")


def machine() -> dict[str, Any]:
    """What the numbers came from."""
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = 0.0
    with contextlib.suppress(OSError, ValueError, IndexError):
        first = Path("/proc/meminfo").read_text().splitlines()[0]
        memory_gib = int(first.split()[1]) / 1024 / 1024
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "wrk": wrk_version(),
        "loadavg_at_start": os.getloadavg(),
        "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE", ""),
    }


# -- predict --------------------------------------------------------------------------------


@dataclass
class Target:
    """One server under load: where to send, what, and which process groups are it."""

    name: str
    url: str
    body_file: Path
    pgids: list[int]


def _pid(service: Service) -> int:
    assert service.process is not None, service.name
    return service.process.pid


def run_predict_rounds(
    targets: Sequence[Target], plan: Plan
) -> tuple[dict[str, list[LoadResult]], dict[str, Memory]]:
    """Warm every server, then `plan.rounds` interleaved rounds at `plan.connections`."""
    for target in targets:
        run_wrk(
            target.url,
            target.body_file,
            connections=plan.connections,
            duration_s=plan.warmup_s,
        )
    results: dict[str, list[LoadResult]] = {target.name: [] for target in targets}
    peaks: dict[str, Memory] = {target.name: Memory(0.0, 0.0) for target in targets}
    for number in range(1, plan.rounds + 1):
        for target in targets:
            with PeakMemory(target.pgids) as peak:
                result = run_wrk(
                    target.url,
                    target.body_file,
                    connections=plan.connections,
                    duration_s=plan.duration_s,
                )
            results[target.name].append(result)
            old = peaks[target.name]
            peaks[target.name] = Memory(
                max(old.rss_mib, peak.rss_mib), max(old.pss_mib, peak.pss_mib)
            )
            logger.info(
                "round %d %-8s %7.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d  RSS %4.0f MiB",
                number, target.name, result.requests_per_s, result.p50_ms, result.p99_ms,
                result.errors, peak.rss_mib,
            )  # fmt: skip
    return results, peaks


def process_breakdown(targets: Sequence[Target]) -> dict[str, list[dict[str, Any]]]:
    """Each server's processes and their memory now (after its rounds), for the JSON."""
    return {
        target.name: [asdict(process) for pgid in target.pgids for process in group_processes(pgid)]
        for target in targets
    }


def run_connection_scaling(targets: Sequence[Target], plan: Plan) -> dict[str, dict[str, Any]]:
    """req/s and latency at each connection count, interleaved over servers and counts."""
    runs: dict[str, dict[int, list[LoadResult]]] = {
        target.name: {count: [] for count in plan.scaling_connections} for target in targets
    }
    for _ in range(plan.scaling_rounds):
        for count in plan.scaling_connections:
            for target in targets:
                result = run_wrk(
                    target.url,
                    target.body_file,
                    connections=count,
                    duration_s=plan.scaling_duration_s,
                )
                runs[target.name][count].append(result)
                logger.info(
                    "%3d conn %-8s %7.0f req/s  p50 %6.2f ms  p99 %6.2f ms  errors %d",
                    count, target.name, result.requests_per_s, result.p50_ms, result.p99_ms,
                    result.errors,
                )  # fmt: skip
    return {
        name: {
            str(count): {
                "requests_per_s": statistics.median(r.requests_per_s for r in results),
                "p50_ms": statistics.median(r.p50_ms for r in results),
                "p99_ms": statistics.median(r.p99_ms for r in results),
                "errors": sum(r.errors for r in results),
                "rounds": [r.to_dict() for r in results],
            }
            for count, results in by_count.items()
        }
        for name, by_count in runs.items()
    }


def start_alongside(stack: Stack, services: Sequence[Service]) -> None:
    """Start services next to the stack (stopped with it), all at once, then wait for each."""
    env = stack.env()
    for service in services:
        stack.services.append(service)
        service.start(env, stack.log_dir)
    for service in services:
        service.wait_ready(stack.log_dir)


# -- cold start -----------------------------------------------------------------------------


def run_cold_starts(stack: Stack, plan: Plan, bodies: dict[str, bytes]) -> dict[str, Any]:
    """Process start to first prediction, a fresh predict function and a fresh MLflow serve,
    alternating; the predict function finds its artifacts in the warm local cache."""
    times: dict[str, list[float]] = {"nimbus_predict": [], "mlflow_serve": []}
    for _ in range(plan.cold_starts):
        for name, (service, url) in servers.cold_start_services(stack).items():
            body = bodies[MLFLOW] if name == "mlflow_serve" else bodies[NIMBUS]
            seconds = servers.time_to_first_prediction(
                service, url, body, env=stack.env(), log_dir=stack.log_dir
            )
            times[name].append(seconds)
            logger.info("cold start %-15s %.2f s", name, seconds)
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "seconds": times,
        "median_s": median,
        "ratio": median["nimbus_predict"] / median["mlflow_serve"],
    }


# -- batch ----------------------------------------------------------------------------------


def run_batch_comparison(gateway_url: str, model: Any, rows: int, rounds: int) -> dict[str, Any]:
    """`rounds` x (one job through the gateway, then the in-process floor on the same body)."""
    body = orjson.dumps(batch.make_rows(rows, model.schema.names))
    jobs: list[batch.BatchRun] = []
    floors: list[dict[str, float]] = []
    fetches: list[float] = []
    for _ in range(rounds):
        job = batch.run_job(gateway_url, body, rows)
        fetched, fetch_s = batch.fetch_all_results(gateway_url, job.job_id)
        if fetched != rows:
            raise batch.BatchFailed(f"job {job.job_id}: {fetched} results fetched of {rows}")
        floor = batch.floor_batch(body, model)
        jobs.append(job)
        fetches.append(fetch_s)
        floors.append(floor)
        _log_round("batch", rows, job, floor)
    return {
        **_comparison(rows, jobs, floors),
        "body_bytes": len(body),
        "fetch_all_pages_s": statistics.median(fetches),
    }


def _log_round(kind: str, rows: int, job: batch.BatchRun, floor: dict[str, float]) -> None:
    logger.info(
        "%s %7d rows: Nimbus %8.0f rows/s (%.2f s: receive %.2f, queue %.2f, run %.2f, "
        "notice %.2f)  floor %9.0f rows/s",
        kind, rows, job.rows_per_s, job.total_s, job.receive_s, job.queue_s, job.run_s,
        job.notice_s, floor["rows_per_s"],
    )  # fmt: skip


def _comparison(
    rows: int, jobs: Sequence[batch.BatchRun], floors: Sequence[dict[str, float]]
) -> dict[str, Any]:
    """Rounds of jobs and their floors: every round, the medians and the paired ratio."""
    ratios = [job.rows_per_s / floor["rows_per_s"] for job, floor in zip(jobs, floors, strict=True)]
    return {
        "rows": rows,
        "nimbus": [job.to_dict() for job in jobs],
        "floor": list(floors),
        "nimbus_rows_per_s": statistics.median(job.rows_per_s for job in jobs),
        "floor_rows_per_s": statistics.median(floor["rows_per_s"] for floor in floors),
        "ratio": statistics.median(ratios),
        "median_parts_s": {
            part: statistics.median(getattr(job, part) for job in jobs)
            for part in ("submit_s", "receive_s", "queue_s", "run_s", "notice_s", "total_s")
        },
    }


def run_large_comparison(stack: Stack, model: Any, rows: int, rounds: int) -> dict[str, Any]:
    """`rounds` x (a job whose items are a JSON-lines object in GCS, then the floor on the
    same bytes); the object is uploaded to the stack's GCS emulator first, untimed."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    bucket = stack.settings.artifact_root.removeprefix("gs://").split("/", 1)[0]
    name = f"bench/items-{rows}.jsonl"
    body = batch.make_jsonl(rows, model.schema.names)
    env = stack.env()
    client = storage.Client(
        project=env["GOOGLE_CLOUD_PROJECT"],
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]},
    )
    client.bucket(bucket).blob(name).upload_from_string(body, content_type="application/x-ndjson")
    jobs: list[batch.BatchRun] = []
    floors: list[dict[str, float]] = []
    for _ in range(rounds):
        job = batch.run_large_job(
            stack.gateway_url, f"gs://{bucket}/{name}", f"gs://{bucket}/bench/out/", rows
        )
        floor = batch.floor_jsonl(body, model, repeat=1)  # seconds long: one run is enough
        jobs.append(job)
        floors.append(floor)
        _log_round("input_uri job", rows, job, floor)
    return {**_comparison(rows, jobs, floors), "object_bytes": len(body)}


def worker_service(stack: Stack, number: int) -> Service:
    """Worker number `number`, with the stack's own worker command line."""
    running = stack.service("worker-1")
    return Service(f"worker-{number}", list(running.argv), ready=lambda: True, restart=True)


def wait_for_log(path: Path, text: str, *, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(OSError):
            if text in path.read_text(errors="replace"):
                return
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} has no {text!r} after {timeout:.0f}s")
        time.sleep(0.1)


def run_worker_scaling(stack: Stack, model: Any, plan: Plan) -> dict[str, Any]:
    """Many jobs at once with 1, 2, 4 worker processes: rows/s from first submit to last done."""
    body = orjson.dumps(batch.make_rows(plan.rows_per_concurrent_job, model.schema.names))
    running = {service.name for service in stack.services if service.name.startswith("worker-")}
    results: dict[str, Any] = {}
    for count in plan.workers:
        added = [
            worker_service(stack, number)
            for number in range(1, count + 1)
            if f"worker-{number}" not in running
        ]
        start_alongside(stack, added)
        for service in added:
            wait_for_log(stack.log_dir / f"{service.name}.log", "listening on")
            running.add(service.name)
        result = batch.run_concurrent_jobs(
            stack.gateway_url, body, plan.rows_per_concurrent_job, plan.concurrent_jobs
        )
        results[str(count)] = result
        logger.info(
            "%d workers: %d jobs x %d rows in %.2f s = %.0f rows/s (workers' side %.0f rows/s)",
            count, plan.concurrent_jobs, plan.rows_per_concurrent_job, result["wall_s"],
            result["rows_per_s"], result["workers_rows_per_s"],
        )  # fmt: skip
    return results


# -- the run --------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run of about 2 minutes")
    parser.add_argument("--rounds", type=int, default=0, help="predict rounds per server")
    parser.add_argument("--duration", type=float, default=0, help="seconds per predict round")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="where results go")
    parser.add_argument("--keep", action="store_true", help="keep the stack's folder and logs")
    return parser.parse_args(argv)


@contextlib.contextmanager
def bench_home(keep: bool) -> Iterator[Path]:
    home = Path(tempfile.mkdtemp(prefix="nimbus-bench-"))
    try:
        yield home
    finally:
        if keep:
            logger.info("stack folder kept: %s", home)
        else:
            shutil.rmtree(home, ignore_errors=True)


def measure(stack: Stack, plan: Plan, work_dir: Path) -> dict[str, Any]:
    """Every measurement of one run against a started stack."""
    from mlflow import MlflowClient

    from nimbus.registry import ModelRegistry

    env = stack.env()
    # The in-process floor loads the same version from the cache the functions filled.
    cache_dir = Path(env["NIMBUS_MODEL_CACHE_DIR"])
    # load(resolve()), not production(): one load, no alias watching in this process.
    registry = ModelRegistry(
        MlflowClient(tracking_uri=stack.mlflow_url), stack.settings.model_uri, cache_dir=cache_dir
    )
    model = registry.load(registry.resolve())
    row = batch.make_rows(1, model.schema.names)[0]
    bodies = {
        NIMBUS: orjson.dumps(row),
        MLFLOW: orjson.dumps({"dataframe_records": [row]}),
    }
    body_files = {}
    for name, body in bodies.items():
        body_files[name] = work_dir / f"{name}-body.json"
        body_files[name].write_bytes(body)

    floor_port, mlflow_port, floor_gateway_port = free_port(), free_port(), free_port()
    floor = servers.floor_function(stack, floor_port)
    floor_gateway = servers.gateway_in_front(
        stack, floor_gateway_port, f"http://127.0.0.1:{floor_port}"
    )
    served = servers.mlflow_serve(stack, mlflow_port)
    logger.info("starting mlflow models serve, the floor and a gateway in front of it")
    start_alongside(stack, [floor, floor_gateway, served])
    predict_pid, gateway_pid = _pid(stack.service("predict")), _pid(stack.service("gateway"))
    targets = [
        Target(NIMBUS, f"{stack.function_url('predict')}/v1/predict", body_files[NIMBUS], [predict_pid]),
        Target(GATEWAY, f"{stack.gateway_url}/v1/predict", body_files[NIMBUS], [predict_pid, gateway_pid]),
        Target(MLFLOW, f"http://127.0.0.1:{mlflow_port}/invocations", body_files[MLFLOW], [_pid(served)]),
        Target(FLOOR, f"http://127.0.0.1:{floor_port}/", body_files[NIMBUS], [_pid(floor)]),
        Target(FLOOR_GATEWAY, f"http://127.0.0.1:{floor_gateway_port}/v1/predict", body_files[NIMBUS], [_pid(floor), _pid(floor_gateway)]),
    ]  # fmt: skip
    for target in targets:
        body = bodies[MLFLOW] if target.name == MLFLOW else bodies[NIMBUS]
        if not servers.post_ok(target.url, body):
            raise RuntimeError(f"{target.name} does not answer a prediction at {target.url}")

    logger.info("predict: %d interleaved rounds of %.0f s", plan.rounds, plan.duration_s)
    rounds, peaks = run_predict_rounds(targets, plan)
    processes = process_breakdown(targets)
    summaries = summarize(rounds, peaks)
    logger.info("predict at %s connections", ", ".join(map(str, plan.scaling_connections)))
    scaling = run_connection_scaling(
        [t for t in targets if t.name not in {GATEWAY, FLOOR_GATEWAY}], plan
    )
    for name, by_count in scaling.items():
        results = rounds[name]
        by_count[str(plan.connections)] = {
            "requests_per_s": statistics.median(r.requests_per_s for r in results),
            "p50_ms": statistics.median(r.p50_ms for r in results),
            "p99_ms": statistics.median(r.p99_ms for r in results),
            "errors": sum(r.errors for r in results),
        }
    served.stop()
    floor_gateway.stop()
    floor.stop()

    logger.info("cold start: %d x each, alternating", plan.cold_starts)
    cold = run_cold_starts(stack, plan, bodies)

    logger.info("batch: warming up with one small job")
    first = batch.run_job(
        stack.gateway_url, orjson.dumps(batch.make_rows(100, model.schema.names)), 100
    )
    logger.info("first job (100 rows, batch_submit builds its clients): %.2f s", first.total_s)
    inline = run_batch_comparison(stack.gateway_url, model, plan.batch_rows, plan.batch_rounds)
    inline_body = orjson.dumps(batch.make_rows(plan.batch_rows, model.schema.names))
    inline["compute_parts_s"] = batch.compute_parts(inline_body, model)
    inline["worker_model_load_s"] = batch.model_load_seconds(stack.log_dir / "worker-1.log")
    inline["first_job"] = first.to_dict()
    sizes = {str(plan.batch_rows): inline}
    for rows in plan.batch_sizes:
        sizes[str(rows)] = run_batch_comparison(stack.gateway_url, model, rows, plan.batch_rounds)
    logger.info("batch: a %d-row input_uri job, %d rounds", plan.large_rows, plan.large_rounds)
    large = run_large_comparison(stack, model, plan.large_rows, plan.large_rounds)
    workers = run_worker_scaling(stack, model, plan)

    checks = predict_targets(summaries)
    # The issue says "a predict process": the largest process of each tree, beside the trees.
    largest = {
        name: max((process["rss_mib"] for process in processes[name]), default=0.0)
        for name in (NIMBUS, MLFLOW)
    }
    if largest[MLFLOW]:
        checks.append(
            TargetCheck(
                "predict serving process RSS ≤ MLflow's (largest of each)",
                largest[NIMBUS] / largest[MLFLOW],
                1.0,
                False,
                note=f"{largest[NIMBUS]:.0f} vs {largest[MLFLOW]:.0f} MiB",
            ),
        )
    checks.append(
        TargetCheck(
            f"batch rows/s ≥ 0.5x floor ({plan.large_rows:,}-row input_uri job)",
            large["ratio"],
            0.5,
            True,
        )
    )
    checks.append(
        TargetCheck(
            f"batch rows/s ≥ 0.5x floor ({plan.batch_rows:,}-row inline job)",
            inline["ratio"],
            0.5,
            True,
            note="for reference: the issue sets it for the input_uri job",
            reference=True,
        )
    )
    checks.append(TargetCheck("cold start ≤ 1/3 of MLflow serve's", cold["ratio"], 1 / 3, False))
    return {
        "predict": {
            "connections": plan.connections,
            "duration_s": plan.duration_s,
            "rounds": plan.rounds,
            "servers": {
                summary.name: {
                    "summary": summary.to_dict(),
                    "rounds": [r.to_dict() for r in rounds[summary.name]],
                    "processes_after_load": processes[summary.name],
                }
                for summary in summaries
            },
        },
        "connections": scaling,
        "cold_start": cold,
        "batch": {"inline": inline, "large": large, "sizes": sizes, "workers": workers},
        "targets": [check.to_dict() for check in checks],
        "_summaries": summaries,
        "_checks": checks,
    }


def render(results: dict[str, Any], summaries: Sequence[Any], checks: Sequence[TargetCheck]) -> str:
    """The printed report: the predict table, batch, cold start, growth, then the targets."""
    predict = results["predict"]
    inline = results["batch"]["inline"]
    parts = inline["median_parts_s"]
    compute = inline["compute_parts_s"]
    rest = parts["run_s"] - sum(compute.values())
    cold = results["cold_start"]
    first_workers = next(iter(results["batch"]["workers"].values()))
    large = results["batch"]["large"]
    large_parts = large["median_parts_s"]
    lines = [
        f"predict: {predict['connections']} connections, {predict['rounds']} interleaved rounds "
        f"of {predict['duration_s']:.0f} s each (medians; ratios are medians of per-round pairs)",
        format_predict_table(summaries),
        "",
        f"batch: one {inline['rows']:,}-row inline job through the gateway, submit to SUCCESS "
        f"({len(inline['nimbus'])} rounds)",
        f"  Nimbus {inline['nimbus_rows_per_s']:>10,.0f} rows/s   floor (decode, predict, "
        f"encode in one process) {inline['floor_rows_per_s']:>12,.0f} rows/s   "
        f"ratio {inline['ratio']:.3f}x",
        f"  where the {parts['total_s']:.2f} s go: receive (upload, parse, validate, record) "
        f"{parts['receive_s']:.2f} s · queue (publish, delivery, claim) {parts['queue_s']:.2f} s"
        f" · run {parts['run_s']:.2f} s · notice (poll, fetch result) {parts['notice_s']:.2f} s",
        f"  inside the run (its compute timed in-process with Nimbus's schema and model): "
        f"decode {compute['decode_s']:.3f} s · validate {compute['validate_s']:.3f} s · predict "
        f"{compute['predict_s']:.3f} s · result objects {compute['result_s']:.3f} s · encode "
        f"{compute['encode_s']:.3f} s · the rest (Redis, chunks, progress) {rest:.3f} s",
        f"  then fetching every result page: {inline['fetch_all_pages_s']:.2f} s",
        "  model load: 0 on the job path (the worker loads it at start: "
        + (
            f"{inline['worker_model_load_s']:.2f} s)"
            if inline["worker_model_load_s"] is not None
            else "not found in its log)"
        ),
        "",
        f"batch: a {large['rows']:,}-row input_uri job (JSON lines in GCS, predictions streamed "
        f"back to GCS), submit to SUCCESS ({len(large['nimbus'])} rounds)",
        f"  Nimbus {large['nimbus_rows_per_s']:>10,.0f} rows/s   floor (the same lines decoded, "
        f"predicted, encoded in one process) {large['floor_rows_per_s']:>12,.0f} rows/s   "
        f"ratio {large['ratio']:.3f}x",
        f"  where the {large_parts['total_s']:.2f} s go: receive {large_parts['receive_s']:.2f} s"
        f" · queue {large_parts['queue_s']:.2f} s · run (read GCS, validate, predict, write "
        f"GCS) {large_parts['run_s']:.2f} s · notice {large_parts['notice_s']:.2f} s",
        "",
        "batch rows/s by job size (Nimbus / floor):  "
        + "   ".join(
            f"{int(rows):,}: {size['nimbus_rows_per_s']:,.0f} / {size['floor_rows_per_s']:,.0f}"
            for rows, size in sorted(results["batch"]["sizes"].items(), key=lambda kv: int(kv[0]))
        )
        + f"   {large['rows']:,} (input_uri): {large['nimbus_rows_per_s']:,.0f} / "
        f"{large['floor_rows_per_s']:,.0f}",
        "batch rows/s by worker processes, submit → last SUCCESS (first claim → last result):  "
        + "   ".join(
            f"{count}: {run['rows_per_s']:,.0f} ({run['workers_rows_per_s']:,.0f})"
            for count, run in results["batch"]["workers"].items()
        )
        + f"   [{first_workers['jobs']} jobs x {first_workers['rows_per_job']:,} rows at once]",
        "predict req/s by connections:  "
        + "   ".join(
            f"{name} "
            + " ".join(
                f"{count}:{point['requests_per_s']:.0f}"
                for count, point in sorted(by_count.items(), key=lambda kv: int(kv[0]))
            )
            for name, by_count in results["connections"].items()
        ),
        "",
        f"cold start (start → first prediction, median of {len(cold['seconds']['nimbus_predict'])}):"
        f" Nimbus predict {cold['median_s']['nimbus_predict']:.2f} s, mlflow models serve "
        f"{cold['median_s']['mlflow_serve']:.2f} s, ratio {cold['ratio']:.2f}",
        "",
        "targets (issue 5):",
        format_targets(checks),
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    plan = Plan.for_args(args)
    prepare_environment()
    started = time.monotonic()
    info = machine()
    with bench_home(args.keep) as home:
        settings = bench_settings(home / "stack", workers=1)
        logger.info("starting a Nimbus stack under %s", home)
        with Stack(settings) as stack:
            logger.info("stack up in %.0f s", time.monotonic() - started)
            results = measure(stack, plan, home)
    summaries = results.pop("_summaries")
    checks = results.pop("_checks")
    info["loadavg_at_end"] = os.getloadavg()
    stamp = datetime.now().astimezone()
    results = {
        "date": stamp.isoformat(timespec="seconds"),
        "quick": plan.quick,
        "machine": info,
        "plan": {key: value for key, value in vars(plan).items()},
        "wall_s": round(time.monotonic() - started, 1),
        **results,
    }
    report = render(results, summaries, checks)
    results["report"] = report
    args.out.mkdir(parents=True, exist_ok=True)
    stem = stamp.strftime("%Y-%m-%d") + ("-quick" if plan.quick else "")
    json_path = args.out / f"{stem}.json"
    json_path.write_bytes(orjson.dumps(results, option=orjson.OPT_INDENT_2) + b"\n")
    from bench.chart import draw

    png_path = args.out / f"{stem}.png"
    draw(results, png_path)
    print()
    print(report)
    print()
    print(f"saved {json_path} and {png_path} ({results['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
