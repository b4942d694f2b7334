"""What the chaos tests do to a running stack, and how they look at what came of it.

The tests break real processes (signals to the workers' process groups, redis-server killed,
the emulators stopped) and judge the outcome the way a user would: through the gateway. Redis
is read directly only to wait for many jobs at once, and to count result writes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from typing import Any

import orjson
import redis
import requests
from sklearn.datasets import load_iris

from nimbus.bus import JobBus, ensure_topology, new_publisher
from nimbus.jobs import JobStore
from nimbus.stack import Service, Stack, environment

TERMINAL = {"SUCCESS", "FAILURE", "REVOKED"}
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")


def iris_rows() -> list[dict[str, float]]:
    """The 150 iris flowers as items: all three classes, so predictions vary."""
    return [dict(zip(FEATURES, map(float, row), strict=True)) for row in load_iris().data]


def job_items(number: int, size: int) -> list[dict[str, float]]:
    """Job `number`'s items: `size` flowers starting at a different one for each job."""
    rows = iris_rows()
    return [rows[(number + offset) % len(rows)] for offset in range(size)]


def wait_until(
    condition: Callable[[], Any], *, timeout: float, what: str, every: float = 0.2
) -> Any:
    """Poll `condition` until it returns something truthy (returned), or fail saying `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"after {timeout:.0f}s still not: {what}"
        time.sleep(every)


class Chaos:
    """A running stack, with the moves that break it and the looks that judge it."""

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.base = stack.gateway_url
        self.http = requests.Session()
        self.redis = redis.Redis.from_url(stack.redis_url, socket_timeout=10)
        self.store = JobStore(self.redis)
        self.worker_overrides: dict[str, object] = {}

    def close(self) -> None:
        self.http.close()
        self.redis.close()

    # -- the processes ------------------------------------------------------------------------

    @property
    def workers(self) -> list[Service]:
        return [s for s in self.stack.services if s.name.startswith("worker-")]

    def signal(self, service: Service, sig: signal.Signals) -> None:
        """Send `sig` to the service's whole process group (it has one of its own)."""
        assert service.process is not None
        os.killpg(service.process.pid, sig)

    def worker_by_owner(self, owner: str) -> Service:
        """The worker service whose process wrote `owner` (host:pid:tag) into a job."""
        pid = int(owner.split(":")[1])
        return next(w for w in self.workers if w.process is not None and w.process.pid == pid)

    def heal(self) -> None:
        """Bring every process back: resume stopped ones, start dead ones, re-create the
        Pub/Sub topology after an emulator restart (the emulator keeps it in memory only)."""
        for service in self.stack.services:
            if service.is_running:
                with contextlib.suppress(ProcessLookupError):
                    self.signal(service, signal.SIGCONT)
        emulators = self.stack.service("emulators")
        if not emulators.is_running:
            self.stack.restart("emulators")
            # The workers re-create what they pull from themselves; batch_submit does not.
            self.ensure_topology()
        if self.worker_overrides:
            self.restart_workers()
        for service in self.stack.services:
            if not service.is_running:
                self.stack.restart(service.name)
        self.wait_for_workers()

    def wait_for_workers(self, timeout: float = 120) -> None:
        """Wait until every worker process pulls jobs: each says so by its first heartbeat."""

        def listening() -> bool:
            beating = {name.split(":")[1] for name in self.store.workers()}
            return all(
                w.process is not None and str(w.process.pid) in beating for w in self.workers
            )

        wait_until(listening, timeout=timeout, what="every worker pulling jobs", every=0.2)

    def stop_workers(self) -> None:
        """SIGTERM every worker at once (each drains), then wait for them all."""
        for worker in self.workers:
            if worker.is_running:
                self.signal(worker, signal.SIGTERM)
        for worker in self.workers:
            worker.stop()

    def restart_workers(self, **overrides: object) -> None:
        """Stop every worker (SIGTERM: they drain) and start it again, with these settings
        (`chunk_rows=1`, ...) in place of the stack's; none to go back to the stack's own."""
        env = self.stack.env()
        for spec in fields(self.stack.settings):
            if spec.name in overrides:
                env[spec.metadata["env"]] = str(overrides[spec.name])
        self.stop_workers()
        for worker in self.workers:
            worker.start(env, self.stack.log_dir)
        self.worker_overrides = dict(overrides)
        self.wait_for_workers()

    def ensure_topology(self) -> None:
        with environment(self.stack.env()):
            ensure_topology(self.stack.settings)

    def workers_serve(self, version: str) -> bool:
        """True once every running worker's heartbeat names this model version."""
        running = {str(w.process.pid) for w in self.workers if w.process is not None}
        beats = {
            name.split(":")[1]: (info.get("model") or {}).get("version")
            for name, info in self.store.workers().items()
        }
        return all(beats.get(pid) == version for pid in running)

    @contextlib.contextmanager
    def bus(self) -> Iterator[JobBus]:
        """A publisher on the jobs topic, as batch_submit has one."""
        with environment(self.stack.env()):
            publisher = new_publisher()
        try:
            yield JobBus(publisher, self.stack.settings.topic_path, timeout=30)
        finally:
            publisher.transport.close()

    def publish(self, job_ids: list[str], **attributes: str) -> None:
        """Publish each job's message once more, straight on the jobs topic."""
        with self.bus() as bus:
            for job_id in job_ids:
                bus.publish_job(job_id, **attributes)

    def log_entries(self, service: str) -> list[dict[str, Any]]:
        """The JSON log lines a service wrote so far (all its runs: the log is appended to)."""
        path = self.stack.log_dir / f"{service}.log"
        entries = []
        for line in path.read_bytes().splitlines():
            with contextlib.suppress(orjson.JSONDecodeError):
                entry = orjson.loads(line)
                if isinstance(entry, dict):
                    entries.append(entry)
        return entries

    def job_events(self) -> list[tuple[str, str, str]]:
        """(time, event, job id) from every worker's log, oldest first: the event is "started"
        when a worker set the model to work on a job, "done" when it wrote the job's result."""
        events = []
        for worker in self.workers:
            for entry in self.log_entries(worker.name):
                message, job_id = entry.get("message", ""), entry.get("job_id")
                if job_id and message.startswith("→ job"):
                    events.append((entry["time"], "started", job_id))
                elif job_id and message.startswith("← job"):
                    events.append((entry["time"], "done", job_id))
        return sorted(events)

    # -- the API, as a user calls it ----------------------------------------------------------

    def submit(self, items: list[dict[str, Any]]) -> requests.Response:
        return self.http.post(f"{self.base}/v1/batch", json=items, timeout=30)

    def submit_jobs(self, count: int, size: int) -> dict[str, list[dict[str, float]]]:
        """Submit `count` jobs of `size` items (a few at once); {job id: items}, all 202."""

        def one(number: int) -> tuple[str, list[dict[str, float]]]:
            items = job_items(number, size)
            response = requests.post(f"{self.base}/v1/batch", json=items, timeout=30)
            assert response.status_code == 202, response.text
            return response.json()["job_id"], items

        with ThreadPoolExecutor(max_workers=8) as pool:
            return dict(pool.map(one, range(count)))

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.http.get(f"{self.base}/v1/batch/{job_id}", timeout=30)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    def wait_for(self, job_id: str, *, timeout: float) -> dict[str, Any]:
        """GET the job until it is SUCCESS, FAILURE or REVOKED; that answer."""
        body: dict[str, Any] = wait_until(
            lambda: (body := self.status(job_id))["status"] in TERMINAL and body,
            timeout=timeout,
            what=f"job {job_id} finished",
        )
        return body

    def full_result(self, job_id: str) -> dict[str, Any]:
        """GET the job, following result pages so `result` is whole."""
        body = self.status(job_id)
        page = body.pop("page", None)
        while page and page["next"]:
            response = self.http.get(f"{self.base}{page['next']}", timeout=30)
            assert response.status_code == 200, response.text
            more = response.json()
            body["result"] += more["result"]
            page = more.get("page")
        return body

    def predictions(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """What the production model answers for `items`, through the synchronous endpoint."""
        response = self.http.post(f"{self.base}/v1/predict", json=items, timeout=60)
        assert response.status_code == 200, response.text
        return [{"prediction": answer["prediction"]} for answer in response.json()]

    def assert_results_are_the_models(self, jobs: dict[str, list[dict[str, float]]]) -> None:
        """Each job (as `submit_jobs` made them) is SUCCESS with the production model's answers
        for its items, as the synchronous endpoint gives them."""
        answers = self.predictions(iris_rows())
        for number, (job_id, items) in enumerate(jobs.items()):
            body = self.full_result(job_id)
            assert body["status"] == "SUCCESS", body
            expected = [answers[(number + offset) % len(answers)] for offset in range(len(items))]
            assert body["result"] == expected, f"job {job_id}: the result is not the model's"

    # -- many jobs at once, from Redis --------------------------------------------------------

    def statuses(self, job_ids: list[str]) -> dict[str, str | None]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hget(self.store.key_for(job_id), "status")
        return {
            job_id: None if raw is None else raw.decode()
            for job_id, raw in zip(job_ids, pipe.execute(), strict=True)
        }

    def fields(self, job_ids: list[str], *names: str) -> dict[str, dict[str, str | None]]:
        pipe = self.redis.pipeline(transaction=False)
        for job_id in job_ids:
            pipe.hmget(self.store.key_for(job_id), list(names))
        return {
            job_id: {
                name: None if raw is None else raw.decode()
                for name, raw in zip(names, values, strict=True)
            }
            for job_id, values in zip(job_ids, pipe.execute(), strict=True)
        }

    def pending_jobs(self) -> list[str]:
        """Every job in Redis that is PENDING."""
        found = []
        for key in self.redis.scan_iter(match=self.store.key_for("*"), count=500):
            if self.redis.hget(key, "status") == b"PENDING":
                found.append(key.decode().removeprefix(self.store.key_for("")))
        return sorted(found)

    def pending_index(self) -> dict[str, str | None]:
        """The reconciler's index of jobs waiting for a first claim: {job id: its status}."""
        members = [m.decode() for m in self.redis.zrange(self.store.pending_key, 0, -1)]
        return self.statuses(members)

    def wait_finished(self, job_ids: list[str], *, timeout: float) -> Counter[str]:
        """Wait until every job is SUCCESS, FAILURE or REVOKED; how many ended in each."""

        def finished() -> Counter[str] | None:
            statuses = self.statuses(job_ids)
            done = Counter(s for s in statuses.values() if s in TERMINAL)
            return done if sum(done.values()) == len(job_ids) else None

        try:
            return wait_until(finished, timeout=timeout, what="every job finished", every=0.5)
        except AssertionError:
            left = Counter(self.statuses(job_ids).values())
            raise AssertionError(f"jobs not finished after {timeout:.0f}s: {dict(left)}") from None

    @contextlib.contextmanager
    def result_writes(self) -> Iterator[Counter[str]]:
        """Count, per job id, the outcomes Redis accepted while the block runs.

        Redis itself reports them (keyspace notifications, a separate connection), so the count
        does not depend on what a worker lived to log. A job's record gets a TTL (EXPIRE) in
        exactly one place: the finishing script, in the same atomic step that writes the result
        and SUCCESS (or FAILURE); a reprocessing re-run bumps `revision` instead, which the
        tests check separately. One EXPIRE on a job key is therefore one outcome written.
        """
        writes: Counter[str] = Counter()
        listener = redis.Redis.from_url(self.stack.redis_url)
        listener.config_set("notify-keyspace-events", "Kg")
        prefix = f"__keyspace@0__:{self.store.key_for('')}"
        pubsub = listener.pubsub(ignore_subscribe_messages=True)

        def on_event(message: dict[str, Any]) -> None:
            if message["data"] == b"expire":
                writes[message["channel"].decode().removeprefix(prefix)] += 1

        pubsub.psubscribe(**{f"{prefix}*": on_event})
        thread = pubsub.run_in_thread(sleep_time=0.05, daemon=True)
        try:
            yield writes
            time.sleep(0.5)  # the last notifications are on their way
        finally:
            thread.stop()
            thread.join(timeout=10)
            pubsub.close()
            listener.config_set("notify-keyspace-events", "")
            listener.close()
