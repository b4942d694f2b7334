"""The job store: batch job records in Redis and the moves between their states.

One hash per job at `key_for(job_id)`, e.g. `nimbus:job:<uuid4>`:

    status            PENDING | STARTED | SUCCESS | FAILURE | REVOKED
    inputs            orjson list of dicts, as submitted (loaded only when asked for)
    items             len(inputs)
    created_at, updated_at, started_at, finished_at, lease_expires_at
                      epoch seconds with microseconds, "%.6f", from Redis's own clock
    attempts          claims so far
    owner             the worker that holds (or last held) the job
    epoch             fencing token: bumped by every claim; only its holder may finish the job
    result            orjson list of dicts (SUCCESS)
    error             orjson {"code", "message"} (FAILURE)
    model             orjson {"name", "version"} of the model that produced the result
    model_version     that version as plain text, for the claim script to compare
    done              items predicted so far (progress)
    errors            orjson [{"index", "message"}] for items the model rejected (SUCCESS)
    last_error        orjson {"code", "message"} of the last failed attempt
    revision          how often a replay re-ran the job with a newer model; reprocessed_at
    reprocessing      "1" while a SUCCESS job re-runs; its old result stays readable
    input_uri, output_uri   gs:// locations of a large job's items and predictions
    republished, lapsed_republished
                      how often the reconciler published the job again: while it waited for
                      a first claim, and after a lease ran out
    submitted_by      the API key name that submitted the job ("anonymous" without keys)

Every state change is one Lua script (`nimbus.job_scripts`), so a reader never sees a
half-written outcome and two workers never both win. Two indexes serve the reconciler:
`nimbus:pending` holds jobs not yet claimed, scored by when to look at them next (their
creation, later pushed on by each republish), and `nimbus:leases` holds claimed jobs, scored
by their lease's deadline. `nimbus:recent:<submitter>` lists each submitter's newest jobs
(GET /v1/batch). `nimbus:expired:<id>` outlives a finished record. Only terminal jobs get a
TTL: Redis runs `noeviction`, so unfinished jobs must stay until someone finishes them.
Connection errors propagate untouched
(redis.exceptions.ConnectionError / TimeoutError); callers answer 503.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import redis

from nimbus import job_scripts
from nimbus.auth import ANONYMOUS
from nimbus.errors import Conflict

logger = logging.getLogger(__name__)

KEY_PREFIX = "nimbus:"
DEFAULT_FINISHED_TTL = 7 * 24 * 3600

MAX_STORED_ITEM_ERRORS = 1000

# The longest wait between two republishes of one job by the reconciler.
MAX_REPUBLISH_BACKOFF = 3600.0

# Finished records outlive their TTL as a tombstone this long, to answer "expired".
TOMBSTONE_SECONDS = 30 * 24 * 3600


class JobStatus(StrEnum):
    """A batch job's state, in Celery's words (the seed's API uses them)."""

    PENDING = "PENDING"
    STARTED = "STARTED"
    SUCCESS = "SUCCESS"
    FAILURE = "FAILURE"
    REVOKED = "REVOKED"

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change: SUCCESS, FAILURE or REVOKED."""
        return self in _TERMINAL


_TERMINAL = frozenset({JobStatus.SUCCESS, JobStatus.FAILURE, JobStatus.REVOKED})


class ClaimRefused(StrEnum):
    """Why `JobStore.claim` did not hand out a job."""

    UNKNOWN = "unknown"  # no such job (never created, or expired)
    FINISHED = "finished"  # SUCCESS, FAILURE or REVOKED already
    LEASED = "leased"  # another worker holds a live lease


@dataclass(frozen=True)
class Claim:
    """A worker's hold on a job: pass `epoch` back to finish it."""

    job_id: str
    epoch: int
    attempts: int
    inputs: list[dict[str, Any]]
    reprocess: bool = False  # a finished job re-run because the production model changed
    input_uri: str | None = None  # a large job's items, in GCS (inputs is empty then)
    output_uri: str | None = None
    # Redis's clock, both: their gap is the job's time in the queue. Not part of equality.
    created_at: float | None = field(default=None, compare=False)
    claimed_at: float | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Job:
    """One job record as read from Redis; `inputs`/`result` are None when not loaded."""

    id: str
    status: JobStatus
    created_at: float
    updated_at: float
    items: int = 0
    attempts: int = 0
    epoch: int = 0
    started_at: float | None = None
    finished_at: float | None = None
    owner: str | None = None
    lease_expires_at: float | None = None
    inputs: list[dict[str, Any]] | None = None
    result: list[dict[str, Any]] | None = None
    error: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    done: int = 0
    revision: int = 0
    reprocessed_at: float | None = None
    reprocessing: bool = False
    item_errors: list[dict[str, Any]] | None = None
    last_error: dict[str, Any] | None = None
    input_uri: str | None = None
    output_uri: str | None = None
    result_uri: str | None = None
    errors_total: int = 0
    submitted_by: str | None = None

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change."""
        return self.status.is_terminal

    def to_public(self) -> dict[str, Any]:
        """The body of GET /v1/batch/<job_id>: the seed's fields first, unset times left out."""
        body: dict[str, Any] = {"job_id": self.id, "status": self.status.value}
        if self.status is JobStatus.SUCCESS and self.result is not None and self.input_uri is None:
            body["result"] = self.result
        if self.status is JobStatus.FAILURE and self.error is not None:
            body["error"] = self.error
        if self.status is JobStatus.SUCCESS and self.result_uri is not None:
            body["result_uri"] = self.result_uri
        if self.status is JobStatus.SUCCESS and self.item_errors:
            body["errors"] = self.item_errors
            if self.errors_total > len(self.item_errors):
                body["errors_total"] = self.errors_total
        if self.model is not None:
            body["model"] = self.model
        if self.input_uri is not None:
            body["input_uri"] = self.input_uri
            body["output_uri"] = self.output_uri
        body["items"] = self.items
        done = (
            self.items if self.status is JobStatus.SUCCESS and not self.reprocessing else self.done
        )
        # A large job's item count is known once its input has been read through.
        total = None if self.input_uri is not None and not self.is_terminal else self.items
        body["progress"] = {"done": done, "total": total}
        body["attempts"] = self.attempts
        if self.last_error is not None and not self.is_terminal:
            body["last_error"] = self.last_error
        if self.revision or self.reprocessing:
            body["revision"] = self.revision
            body["reprocessing"] = self.reprocessing
        for name in ("created_at", "updated_at", "started_at", "finished_at", "reprocessed_at"):
            seconds = getattr(self, name)
            if seconds is not None:
                body[name] = _iso8601(seconds)
        return body


class JobStore:
    """Batch job records in Redis; every state change is atomic and fenced by `epoch`."""

    def __init__(
        self,
        connection: redis.Redis,
        *,
        prefix: str = KEY_PREFIX,
        finished_ttl: int = DEFAULT_FINISHED_TTL,
    ) -> None:
        if finished_ttl < 1:
            raise ValueError(f"finished_ttl must be at least 1 second, got {finished_ttl}")
        self.connection = connection
        self.prefix = prefix
        self.finished_ttl = finished_ttl
        # register_script sends EVALSHA and falls back to EVAL once, after a restart or flush.
        self._create = connection.register_script(job_scripts.CREATE)
        self._claim = connection.register_script(job_scripts.CLAIM)
        self._extend = connection.register_script(job_scripts.EXTEND)
        self._release = connection.register_script(job_scripts.RELEASE)
        self._finish = connection.register_script(job_scripts.FINISH)
        self._requeue = connection.register_script(job_scripts.REQUEUE)
        self._requeue_lapsed = connection.register_script(job_scripts.REQUEUE_LAPSED)
        self.pending_key = f"{prefix}pending"
        self.leases_key = f"{prefix}leases"

    def _recent_key(self, submitted_by: str) -> bytes:
        return _arg(f"{self.prefix}recent:{submitted_by}")

    def key_for(self, job_id: str) -> str:
        """The Redis key of a job's hash."""
        return f"{self.prefix}job:{job_id}"

    def is_reachable(self) -> bool:
        """True if Redis answers a PING: for readiness checks, which must not raise."""
        try:
            return bool(self.connection.ping())
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as error:
            logger.warning("redis unreachable: %s", error)
            return False

    def record_worker(self, name: str, info: dict[str, Any], *, ttl: int) -> None:
        """A worker's heartbeat (what it serves, when it last said so); gone after `ttl` s."""
        self.connection.set(f"{self.prefix}worker:{name}", orjson.dumps(info), ex=ttl)

    def workers(self) -> dict[str, dict[str, Any]]:
        """The live workers' last heartbeats, by worker name."""
        found: dict[str, dict[str, Any]] = {}
        pattern = f"{self.prefix}worker:*"
        for key in self.connection.scan_iter(match=pattern, count=100):
            raw = self.connection.get(key)
            if raw is not None:
                name = (key.decode() if isinstance(key, bytes) else key).split(":", 2)[-1]
                found[name] = orjson.loads(raw)
        return found

    def create(
        self,
        inputs: list[dict[str, Any]],
        *,
        job_id: str | None = None,
        input_uri: str | None = None,
        output_uri: str | None = None,
        submitted_by: str = ANONYMOUS,
    ) -> Job:
        """Save a new PENDING job; raises Conflict rather than overwrite an existing id.

        A large job names its items by `input_uri` (gs://) instead, with `inputs` empty. The job
        joins `submitted_by`'s recent jobs in the same step.
        """
        job_id = job_id if job_id is not None else str(uuid.uuid4())
        extra: list[str] = ["submitted_by", submitted_by]
        if input_uri is not None:
            extra += ["input_uri", input_uri, "output_uri", output_uri or ""]
        created = self._create(
            keys=[*self._keys(job_id), self._recent_key(submitted_by)],
            args=[_arg(job_id), orjson.dumps(inputs), len(inputs), *extra],
        )
        if created is None:
            raise Conflict(f"Job {job_id} already exists; submit again without a job id.")
        now = float(_text(created))
        return Job(
            id=job_id,
            status=JobStatus.PENDING,
            created_at=now,
            updated_at=now,
            items=len(inputs),
            inputs=inputs,
            input_uri=input_uri,
            output_uri=output_uri,
            submitted_by=submitted_by,
        )

    def recent(self, submitted_by: str, *, limit: int) -> list[Job]:
        """`submitted_by`'s newest jobs first, at most `limit`, without inputs or results;
        jobs whose record has expired are dropped from the index on the way."""
        index = self._recent_key(submitted_by)
        found: list[Job] = []
        start = 0
        while len(found) < limit:
            ids = self.connection.zrevrange(index, start, start + limit - len(found) - 1)
            if not ids:
                break
            start += len(ids)
            expired = []
            for job_id in map(_text, ids):
                job = self.fetch(job_id, with_result=False)
                if job is None:
                    expired.append(_arg(job_id))
                else:
                    found.append(job)
            if expired:
                self.connection.zrem(index, *expired)
                start -= len(expired)
        return found

    def fetch(
        self, job_id: str, *, with_inputs: bool = False, with_result: bool = True
    ) -> Job | None:
        """The job's record, or None if there is no such job; inputs only when asked for."""
        # HMGET of named fields, not HGETALL: a status poll must not haul 100k inputs.
        names = [*_SMALL_FIELDS]
        if with_inputs:
            names.append("inputs")
        if with_result:
            names.append("result")
        values = self.connection.hmget(self._key(job_id), names)
        record = dict(zip(names, values, strict=True))
        if record["status"] is None:
            return None
        return Job(
            id=job_id,
            status=JobStatus(_text(record["status"])),
            created_at=_float(record["created_at"]) or 0.0,
            updated_at=_float(record["updated_at"]) or 0.0,
            items=int(record["items"] or 0),
            attempts=int(record["attempts"] or 0),
            epoch=int(record["epoch"] or 0),
            started_at=_float(record["started_at"]),
            finished_at=_float(record["finished_at"]),
            owner=_text(record["owner"]),
            lease_expires_at=_float(record["lease_expires_at"]),
            inputs=_json(record.get("inputs")),
            result=_json(record.get("result")),
            error=_json(record["error"]),
            model=_json(record["model"]),
            done=int(record["done"] or 0),
            revision=int(record["revision"] or 0),
            reprocessed_at=_float(record["reprocessed_at"]),
            reprocessing=record["reprocessing"] is not None,
            item_errors=_json(record["errors"]),
            last_error=_json(record["last_error"]),
            input_uri=_text(record["input_uri"]) or None,
            output_uri=_text(record["output_uri"]) or None,
            result_uri=_text(record["result_uri"]) or None,
            errors_total=int(record["errors_total"] or 0),
            submitted_by=_text(record["submitted_by"]),
        )

    def is_expired(self, job_id: str) -> bool:
        """True if the job existed, finished, and its record has since expired."""
        return bool(self.connection.exists(self._tombstone(job_id)))

    def claim(
        self,
        job_id: str,
        *,
        owner: str,
        lease_seconds: float,
        model_version: str | None = None,
    ) -> Claim | ClaimRefused:
        """Take a PENDING job, or a STARTED one whose lease expired, for `lease_seconds`.

        With `model_version` (the version the worker serves), a SUCCESS job whose result came
        from another version is taken too, to be reprocessed: that is what a replay does.
        """
        _check_lease(lease_seconds)
        reply = self._claim(
            keys=self._lease_keys(job_id),
            args=[owner, lease_seconds, model_version or "", _arg(job_id)],
        )
        verdict = _text(reply[0])
        if verdict != "claimed":
            return ClaimRefused(verdict)
        _, epoch, attempts, inputs, reprocess, input_uri, output_uri, created, now = reply
        return Claim(
            job_id=job_id,
            epoch=int(epoch),
            attempts=int(attempts),
            inputs=orjson.loads(inputs),
            reprocess=bool(int(reprocess)),
            input_uri=_text(input_uri) or None,
            output_uri=_text(output_uri) or None,
            created_at=_float(created or None),
            claimed_at=_float(now),
        )

    def extend_lease(
        self,
        job_id: str,
        *,
        owner: str,
        epoch: int,
        lease_seconds: float,
        done: int | None = None,
    ) -> bool:
        """Push the lease `lease_seconds` past now and record progress; False if the job is no
        longer ours (revoked, or taken over after our lease ran out): stop working on it."""
        _check_lease(lease_seconds)
        args: list[str | int | float | bytes] = [
            owner,
            epoch,
            lease_seconds,
            "" if done is None else done,
            _arg(job_id),
        ]
        return bool(self._extend(keys=self._lease_keys(job_id), args=args))

    def release(
        self, job_id: str, *, owner: str, epoch: int, error: dict[str, Any] | None = None
    ) -> bool:
        """Give a held job back after a failed attempt so its redelivery can claim it at once;
        `error` is kept as the job's last_error."""
        fields: list[str | bytes] = [] if error is None else ["last_error", orjson.dumps(error)]
        return bool(
            self._release(keys=self._lease_keys(job_id), args=[owner, epoch, _arg(job_id), *fields])
        )

    def complete(
        self,
        job_id: str,
        *,
        epoch: int,
        result: list[dict[str, Any]],
        model: dict[str, Any] | None = None,
        item_errors: list[dict[str, Any]] | None = None,
        items: int | None = None,
        result_uri: str | None = None,
    ) -> bool:
        """Write the result and SUCCESS together; False (nothing written) if `epoch` is stale.

        For a job being reprocessed, the new result replaces the old one and `revision` goes up.
        A large job's result is an object in GCS: pass `result_uri` and its `items` count.
        """
        count = len(result) if items is None else items
        fields: list[str | bytes] = ["result", orjson.dumps(result), "done", str(count)]
        fields += ["items", str(count)]
        if result_uri is not None:
            fields += ["result_uri", result_uri]
        if model is not None:
            fields += ["model", orjson.dumps(model), "model_version", str(model["version"])]
        if item_errors:
            # Kept whole up to a point: a million bad rows must not make a 100 MB record.
            fields += ["errors", orjson.dumps(item_errors[:MAX_STORED_ITEM_ERRORS])]
            fields += ["errors_total", str(len(item_errors))]
        changed, _ = self._finish_job(job_id, JobStatus.SUCCESS, epoch, fields)
        return changed

    def fail(
        self,
        job_id: str,
        *,
        epoch: int | None,
        error: dict[str, Any],
        unless_leased: bool = False,
    ) -> bool:
        """Mark the job FAILURE with `error`; epoch=None (reconcilers) also fails PENDING jobs,
        and STARTED ones: all of them, or with `unless_leased` only those whose lease ran out
        (a dead-lettered copy must not end the job a live worker is running)."""
        fence: int | str | None = "-" if epoch is None and unless_leased else epoch
        changed, _ = self._finish_job(
            job_id, JobStatus.FAILURE, fence, ["error", orjson.dumps(error)]
        )
        return changed

    def cancel(self, job_id: str) -> JobStatus | None:
        """Revoke a PENDING or STARTED job; the status after the call, None if unknown."""
        _, status = self._finish_job(job_id, JobStatus.REVOKED, None, [])
        return status

    def pending_before(self, seconds_ago: float, *, limit: int = 1000) -> list[str]:
        """Ids of jobs still waiting for a first claim that were queued over `seconds_ago`
        (or, once republished, whose republish was that long ago plus its backoff)."""
        return self._due(self.pending_key, seconds_ago, limit)

    def requeued(
        self, job_id: str, *, backoff: float = 0.0, max_backoff: float = MAX_REPUBLISH_BACKOFF
    ) -> int:
        """Note that a waiting job's message was published again; how often that has happened,
        0 (and nothing noted) if the job no longer waits for a first claim.

        `pending_before(backoff)` offers the job again min(backoff * 2^n, max_backoff) seconds
        after its n-th republish: a long queue gets a few duplicates, not one per pass.
        """
        reply = self._requeue(
            keys=[self._key(job_id), self.pending_key],
            args=[_arg(job_id), max(0.0, backoff), max_backoff],
        )
        return int(reply)

    def lapsed_leases(self, seconds_ago: float = 0.0, *, limit: int = 1000) -> list[str]:
        """Ids of claimed jobs whose lease ran out over `seconds_ago` and that nobody has
        taken since (or, once republished, whose backoff has passed too)."""
        return self._due(self.leases_key, seconds_ago, limit)

    def lapsed_requeued(
        self, job_id: str, *, backoff: float, max_backoff: float = MAX_REPUBLISH_BACKOFF
    ) -> int:
        """Note that the message of a job whose lease ran out was published again; how often
        that has happened, 0 if the job is held again or done. `lapsed_leases()` offers it
        again min(backoff * 2^(n-1), max_backoff) seconds after the n-th time."""
        reply = self._requeue_lapsed(
            keys=[self._key(job_id), self.leases_key],
            args=[_arg(job_id), max(0.0, backoff), max_backoff],
        )
        return int(reply)

    def _due(self, index: str, seconds_ago: float, limit: int) -> list[str]:
        now_seconds, now_micros = self.connection.time()
        cutoff = now_seconds + now_micros / 1e6 - seconds_ago
        found = self.connection.zrangebyscore(index, "-inf", cutoff, start=0, num=limit)
        return [_text(job_id) for job_id in found]

    def eviction_policy(self) -> str | None:
        """The server's maxmemory-policy, or None where CONFIG is not allowed (Memorystore)."""
        try:
            reply = self.connection.config_get("maxmemory-policy")
        except redis.exceptions.ResponseError:
            return None
        policy = reply.get("maxmemory-policy") or reply.get(b"maxmemory-policy")  # type: ignore[call-overload]
        return None if policy is None else str(_text(policy))

    def _finish_job(
        self,
        job_id: str,
        status: JobStatus,
        epoch: int | str | None,
        fields: list[str | bytes],
    ) -> tuple[bool, JobStatus | None]:
        args = [
            status.value,
            "" if epoch is None else epoch,
            self.finished_ttl,
            _arg(job_id),
            *fields,
        ]
        reply = self._finish(keys=self._lease_keys(job_id), args=args)
        if reply is None:
            return False, None
        return bool(reply[0]), JobStatus(_text(reply[1]))

    def _keys(self, job_id: str) -> list[bytes | str]:
        """KEYS for every script: the job, the pending index, the expiry tombstone."""
        return [self._key(job_id), self.pending_key, self._tombstone(job_id)]

    def _lease_keys(self, job_id: str) -> list[bytes | str]:
        """KEYS for the scripts that take, renew or end a claim: `_keys` and the lease index."""
        return [*self._keys(job_id), self.leases_key]

    def _tombstone(self, job_id: str) -> bytes:
        return _arg(f"{self.prefix}expired:{job_id}")

    def _key(self, job_id: str) -> bytes:
        # Ids arrive from URLs and the CLI; surrogatepass keeps an odd one from raising
        # UnicodeEncodeError, so it is simply an unknown job.
        return _arg(self.key_for(job_id))


_SMALL_FIELDS = (
    "status",
    "items",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "attempts",
    "owner",
    "epoch",
    "lease_expires_at",
    "error",
    "model",
    "done",
    "revision",
    "reprocessed_at",
    "reprocessing",
    "errors",
    "last_error",
    "input_uri",
    "output_uri",
    "result_uri",
    "errors_total",
    "submitted_by",
)


def _arg(job_id: str) -> bytes:
    # Ids arrive from URLs and the CLI; surrogatepass keeps an odd one from raising.
    return job_id.encode("utf-8", "surrogatepass")


def _check_lease(lease_seconds: float) -> None:
    if lease_seconds <= 0:
        raise ValueError(f"lease_seconds must be positive, got {lease_seconds}")


def _text(value: Any) -> Any:
    # The caller picks decode_responses; accept bytes and str alike.
    return value.decode() if isinstance(value, bytes) else value


def _float(value: bytes | str | None) -> float | None:
    # float() reads ASCII bytes directly.
    return None if value is None else float(value)


def _json(value: bytes | str | None) -> Any:
    # orjson reads bytes directly: no decoded copy of a 100k-item result.
    return None if value is None else orjson.loads(value)


def _iso8601(seconds: float) -> str:
    moment = datetime.fromtimestamp(seconds, tz=UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
