"""Batch jobs timed from submit to SUCCESS through the gateway, and the floor they are held to.

A job's record carries Redis-clock timestamps (created_at, started_at, finished_at); with the
client's own clock at submit and at the first SUCCESS it sees (same machine, same clock), the
wall time splits into: receive (upload, parse, validate, record), queue (publish, delivery,
claim), run (decode, validate, predict, encode, write) and notice (poll interval, fetch).
"""

from __future__ import annotations

import contextlib
import gc
import re
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import pairwise
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson

if TYPE_CHECKING:
    from nimbus.registry import LoadedModel


def make_rows(count: int, names: tuple[str, ...], *, seed: int = 5) -> list[dict[str, float]]:
    """`count` items of the model's fields with iris-like values (one decimal, 0.1 to 7.9)."""
    values = np.random.default_rng(seed).integers(1, 80, size=(count, len(names))) / 10
    return [dict(zip(names, row, strict=True)) for row in values.tolist()]


def make_jsonl(count: int, names: tuple[str, ...], *, seed: int = 5) -> bytes:
    """The same kind of items as `make_rows`, as JSON lines (a large job's input object)."""
    values = np.random.default_rng(seed).integers(1, 80, size=(count, len(names))) / 10
    return b"\n".join(orjson.dumps(dict(zip(names, row, strict=True))) for row in values.tolist())


@dataclass(frozen=True)
class BatchRun:
    """One job's wall time from the client's submit to the SUCCESS it saw, and its parts."""

    job_id: str
    rows: int
    submit_s: float  # until the 202
    total_s: float  # submit → SUCCESS seen by the client
    receive_s: float  # submit → created_at: upload, parse, validate, record the inputs
    queue_s: float  # created_at → started_at: publish, Pub/Sub delivery, claim
    run_s: float  # started_at → finished_at: load inputs, validate, predict, write the result
    notice_s: float  # finished_at → seen: the poll interval and fetching the result

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.total_s

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_per_s": self.rows_per_s}


class BatchFailed(Exception):
    """A bench job ended in something other than SUCCESS, or never ended."""


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def _request(url: str, body: bytes | None = None, timeout: float = 120.0) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    request = urllib.request.Request(url, data=body, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, orjson.loads(response.read())


def submit_job(gateway_url: str, body: bytes) -> str:
    """POST /v1/batch; the job id from the 202."""
    status, answer = _request(f"{gateway_url}/v1/batch", body)
    if status != 202:
        raise BatchFailed(f"POST /v1/batch answered {status}: {answer}")
    return str(answer["job_id"])


def wait_for_job(
    gateway_url: str, job_id: str, *, poll: float = 0.025, timeout: float = 300.0
) -> tuple[float, dict[str, Any]]:
    """Poll GET /v1/batch/<id> until SUCCESS: (the epoch time it was seen, the record)."""
    deadline = time.monotonic() + timeout
    while True:
        _, record = _request(f"{gateway_url}/v1/batch/{job_id}")
        seen = time.time()
        if record["status"] == "SUCCESS":
            return seen, record
        if record["status"] in {"FAILURE", "REVOKED"}:
            raise BatchFailed(f"job {job_id} ended {record['status']}: {record.get('error')}")
        if time.monotonic() > deadline:
            raise BatchFailed(f"job {job_id} still {record['status']} after {timeout:.0f}s")
        time.sleep(poll)


def split_job_time(
    rows: int, submitted: float, answered: float, seen: float, record: dict[str, Any]
) -> BatchRun:
    """A BatchRun from client times (epoch seconds) and the record's Redis-clock timestamps."""
    created = _epoch(record["created_at"])
    started = _epoch(record["started_at"])
    finished = _epoch(record["finished_at"])
    return BatchRun(
        job_id=str(record["job_id"]),
        rows=rows,
        submit_s=answered - submitted,
        total_s=seen - submitted,
        receive_s=created - submitted,
        queue_s=started - created,
        run_s=finished - started,
        notice_s=seen - finished,
    )


def run_job(gateway_url: str, body: bytes, rows: int) -> BatchRun:
    """Submit one job through the gateway and time it until its SUCCESS is seen."""
    submitted = time.time()
    job_id = submit_job(gateway_url, body)
    answered = time.time()
    seen, record = wait_for_job(gateway_url, job_id)
    if result_count(record) != rows:
        raise BatchFailed(f"job {job_id} has {result_count(record)} results for {rows} rows")
    return split_job_time(rows, submitted, answered, seen, record)


def run_large_job(gateway_url: str, input_uri: str, output_uri: str, rows: int) -> BatchRun:
    """Submit a job naming its items in GCS, and time it until its SUCCESS is seen."""
    body = orjson.dumps({"input_uri": input_uri, "output_uri": output_uri})
    submitted = time.time()
    job_id = submit_job(gateway_url, body)
    answered = time.time()
    seen, record = wait_for_job(gateway_url, job_id, timeout=900)
    if record.get("items") != rows or not record.get("result_uri"):
        raise BatchFailed(f"job {job_id} finished with {record.get('items')} items of {rows}")
    return split_job_time(rows, submitted, answered, seen, record)


def result_count(record: dict[str, Any]) -> int:
    """How many results a finished job has: all of them, or the total of a paged answer."""
    page = record.get("page")
    return int(page["total"]) if page else len(record.get("result", []))


def fetch_all_results(gateway_url: str, job_id: str) -> tuple[int, float]:
    """Follow the result pages of a finished job: (results fetched, seconds)."""
    started = time.perf_counter()
    fetched = 0
    path: str | None = f"/v1/batch/{job_id}"
    while path:
        _, record = _request(f"{gateway_url}{path}")
        fetched += len(record.get("result", []))
        path = (record.get("page") or {}).get("next")
    return fetched, time.perf_counter() - started


def run_concurrent_jobs(
    gateway_url: str, body: bytes, rows: int, jobs: int, *, poll: float = 0.05
) -> dict[str, Any]:
    """`jobs` jobs submitted at once, then one poller for all of them (so polling does not
    grow with the job count); wall time from the first submit to the last SUCCESS seen."""
    job_ids: list[str] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def submit() -> None:
        try:
            job_id = submit_job(gateway_url, body)
        except BaseException as error:
            errors.append(error)
            return
        with lock:
            job_ids.append(job_id)

    started = time.perf_counter()
    threads = [threading.Thread(target=submit) for _ in range(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    pending = set(job_ids)
    records: dict[str, dict[str, Any]] = {}
    deadline = time.monotonic() + 600
    while pending:
        for job_id in sorted(pending):
            _, record = _request(f"{gateway_url}/v1/batch/{job_id}")
            if record["status"] == "SUCCESS":
                records[job_id] = record
                pending.discard(job_id)
            elif record["status"] in {"FAILURE", "REVOKED"}:
                raise BatchFailed(f"job {job_id} ended {record['status']}: {record.get('error')}")
        if time.monotonic() > deadline:
            raise BatchFailed(f"{len(pending)} jobs not done after 600s")
        if pending:
            time.sleep(poll)
    wall = time.perf_counter() - started
    queue = [_epoch(r["started_at"]) - _epoch(r["created_at"]) for r in records.values()]
    run = [_epoch(r["finished_at"]) - _epoch(r["started_at"]) for r in records.values()]
    # The workers' side alone: from the first claim to the last result written.
    working = max(_epoch(r["finished_at"]) for r in records.values()) - min(
        _epoch(r["started_at"]) for r in records.values()
    )
    return {
        "jobs": jobs,
        "rows_per_job": rows,
        "wall_s": wall,
        "rows_per_s": jobs * rows / wall,
        "workers_rows_per_s": jobs * rows / working if working > 0 else float("nan"),
        "mean_queue_s": sum(queue) / len(queue),
        "mean_run_s": sum(run) / len(run),
    }


@contextlib.contextmanager
def _quiet_heap() -> Iterator[None]:
    """Time in-process work without this process's garbage collector in it.

    The harness holds MLflow, pandas and matplotlib: hundreds of thousands of objects that
    every full collection walks, and decoding a million rows triggers many. A worker or a
    function holds far less (and freezes it), so a floor timed with that collector running
    came out slower than the service it is the floor of. Collect first, then time with the
    collector off: the floor is what the work costs, not what this process's heap costs.
    """
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def floor_batch(body: bytes, model: LoadedModel, *, repeat: int = 3) -> dict[str, float]:
    """The compute floor: the rows decoded (orjson), predicted and encoded in this process;
    the median of `repeat` runs by total time (small bodies take a millisecond: one run is
    mostly noise)."""
    runs = sorted((_floor_once(body, model) for _ in range(repeat)), key=itemgetter("total_s"))
    return runs[len(runs) // 2]


def _floor_once(body: bytes, model: LoadedModel) -> dict[str, float]:
    with _quiet_heap():
        return _floor_once_timed(body, model)


def _floor_once_timed(body: bytes, model: LoadedModel) -> dict[str, float]:
    started = time.perf_counter()
    rows = orjson.loads(body)
    decoded = time.perf_counter()
    matrix = np.array(list(map(itemgetter(*model.schema.names), rows)), dtype=np.float64)
    built = time.perf_counter()
    predictions = model.estimator.predict(matrix)
    predicted = time.perf_counter()
    payload = orjson.dumps([{"prediction": value} for value in predictions.tolist()])
    encoded = time.perf_counter()
    assert payload
    return {
        "rows": len(rows),
        "total_s": encoded - started,
        "rows_per_s": len(rows) / (encoded - started),
        "decode_s": decoded - started,
        "matrix_s": built - decoded,
        "predict_s": predicted - built,
        "encode_s": encoded - predicted,
    }


def floor_jsonl(body: bytes, model: LoadedModel, *, repeat: int = 3) -> dict[str, float]:
    """The floor of a large job: JSON lines decoded, predicted and encoded as JSON lines
    (`{"index", "prediction"}`) in this process, a chunk at a time as the worker does; the
    median of `repeat` runs."""
    runs = sorted(
        (_floor_jsonl_once(body, model) for _ in range(repeat)), key=itemgetter("total_s")
    )
    return runs[len(runs) // 2]


def _floor_jsonl_once(
    body: bytes, model: LoadedModel, chunk_rows: int = 10_000
) -> dict[str, float]:
    with _quiet_heap():
        return _floor_jsonl_timed(body, model, chunk_rows)


def _floor_jsonl_timed(body: bytes, model: LoadedModel, chunk_rows: int) -> dict[str, float]:
    started = time.perf_counter()
    getter = itemgetter(*model.schema.names)
    lines = body.split(b"\n")
    out: list[bytes] = []
    for offset in range(0, len(lines), chunk_rows):
        rows = [orjson.loads(line) for line in lines[offset : offset + chunk_rows]]
        matrix = np.array(list(map(getter, rows)), dtype=np.float64)
        predictions = model.estimator.predict(matrix).tolist()
        out.extend(
            orjson.dumps({"index": offset + i, "prediction": value})
            for i, value in enumerate(predictions)
        )
    payload = b"\n".join(out)
    total = time.perf_counter() - started
    assert payload
    return {"rows": len(lines), "total_s": total, "rows_per_s": len(lines) / total}


def compute_parts(body: bytes, model: LoadedModel) -> dict[str, float]:
    """The compute inside a job's run, timed one part at a time in this process with Nimbus's
    own schema and model: what is left of the run is Redis, chunking and coordination."""
    with _quiet_heap():
        return _compute_parts_timed(body, model)


def _compute_parts_timed(body: bytes, model: LoadedModel) -> dict[str, float]:
    marks = [time.perf_counter()]
    rows = orjson.loads(body)
    marks.append(time.perf_counter())
    matrix = model.schema.rows_to_matrix(rows)
    marks.append(time.perf_counter())
    predictions = model.predict(matrix)
    marks.append(time.perf_counter())
    result = [{"prediction": value} for value in predictions]
    marks.append(time.perf_counter())
    orjson.dumps(result)
    marks.append(time.perf_counter())
    names = ["decode_s", "validate_s", "predict_s", "result_s", "encode_s"]
    return {name: end - start for name, (start, end) in zip(names, pairwise(marks), strict=True)}


_LOADED = re.compile(r"loaded (\S+) version (\S+) \((from cache|downloaded)\) in ([0-9.]+)s")


def model_load_seconds(worker_log: Path) -> float | None:
    """The worker's model load at start, from its log line `loaded <name> version <v> ...`."""
    try:
        text = worker_log.read_text(errors="replace")
    except OSError:
        return None
    found = _LOADED.findall(text)
    return float(found[-1][3]) if found else None
