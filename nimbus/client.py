"""A small HTTP client for a Nimbus API (local or deployed), used by the CLI."""

from __future__ import annotations

import csv
import io
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson

TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}


class ApiError(Exception):
    """The API answered an error (in its one shape), or could not be reached."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}" if status else message)
        self.status = status
        self.code = code
        self.message = message


class NimbusClient:
    """Calls the API at `url`, sending `api_key` as a bearer token when one is given."""

    def __init__(self, url: str, *, api_key: str | None = None, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.api_key = api_key
        self.timeout = timeout

    def predict(self, rows: dict[str, Any] | list[dict[str, Any]], *, proba: bool = False) -> Any:
        return self._call("POST", "/v1/predict" + ("?proba=true" if proba else ""), rows)

    def submit(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return dict(self._call("POST", "/v1/batch", items))

    def submit_uri(self, input_uri: str, output_uri: str) -> dict[str, Any]:
        return dict(
            self._call("POST", "/v1/batch", {"input_uri": input_uri, "output_uri": output_uri})
        )

    def status(self, job_id: str, *, offset: int | None = None) -> dict[str, Any]:
        query = "" if offset is None else f"?offset={offset}"
        return dict(self._call("GET", f"/v1/batch/{job_id}{query}"))

    def recent(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """The caller's recent jobs, newest first (GET /v1/batch)."""
        return list(self._call("GET", f"/v1/batch?limit={limit}")["jobs"])

    def cancel(self, job_id: str) -> dict[str, Any]:
        return dict(self._call("DELETE", f"/v1/batch/{job_id}"))

    def wait(
        self,
        job_id: str,
        *,
        timeout: float,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
        poll: float = 0.5,
    ) -> dict[str, Any]:
        """Poll until the job finishes (or `timeout` seconds pass: TimeoutError)."""
        deadline = time.monotonic() + timeout
        while True:
            job = self.status(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in TERMINAL:
                return job
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} is still {job['status']} after {timeout:.0f}s")
            time.sleep(poll)

    def results(self, job_id: str) -> Iterator[dict[str, Any]]:
        """Every result item of a finished inline job, page after page."""
        offset = 0
        while True:
            job = self.status(job_id, offset=offset)
            if job["status"] != "SUCCESS":
                raise ApiError(0, "not_finished", f"job {job_id} is {job['status']}, not SUCCESS")
            if "result" not in job:
                raise ApiError(
                    0, "result_in_gcs", f"job {job_id}'s result is at {job.get('result_uri')}"
                )
            yield from job["result"]
            page = job.get("page")
            if not page or page.get("next") is None:
                return
            offset = page["offset"] + page["limit"]

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else orjson.dumps(body)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        if self.api_key:
            request.add_header("Authorization", f"Bearer {self.api_key}")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as error:
            raw = error.read()
            try:
                problem = orjson.loads(raw)["error"]
                raise ApiError(error.code, problem["code"], problem["message"]) from None
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise ApiError(
                    error.code, "http_error", raw[:200].decode(errors="replace")
                ) from None
        except (urllib.error.URLError, OSError) as error:
            raise ApiError(0, "unreachable", f"{self.url} cannot be reached: {error}") from None


def read_items(path: Path) -> list[dict[str, Any]]:
    """Items from a .json (array), .jsonl or .csv file (numbers in CSV read as numbers)."""
    text = path.read_bytes()
    suffix = path.suffix.lower()
    if suffix == ".json":
        items = orjson.loads(text)
        return items if isinstance(items, list) else [items]
    if suffix == ".jsonl":
        return [orjson.loads(line) for line in text.splitlines() if line.strip()]
    if suffix == ".csv":
        reader = csv.DictReader(io.StringIO(text.decode("utf-8")))
        return [
            {key: _number(value) for key, value in row.items() if value != ""} for row in reader
        ]
    raise ValueError(f"{path}: use a .json, .jsonl or .csv file")


def write_results(path: Path, results: Iterator[dict[str, Any]]) -> int:
    """Write result items to .jsonl or .csv; the number written."""
    count = 0
    with path.open("wb") as out:
        if path.suffix.lower() == ".csv":
            text = io.TextIOWrapper(out, encoding="utf-8", newline="")
            writer = csv.DictWriter(text, fieldnames=["index", "prediction", "error"])
            writer.writeheader()
            for count, item in enumerate(results, start=1):
                writer.writerow({"index": count - 1, **item})
            text.flush()
            text.detach()
        else:
            for count, item in enumerate(results, start=1):
                out.write(orjson.dumps({"index": count - 1, **item}) + b"\n")
    return count


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value
