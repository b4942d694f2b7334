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

Every state change is one Lua script, so a reader never sees a half-written outcome and two
workers never both win. Only terminal jobs get a TTL: Redis runs `noeviction`, so unfinished
jobs must stay until someone finishes them. Connection errors propagate untouched
(redis.exceptions.ConnectionError / TimeoutError); callers answer 503.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

import orjson
import redis

from nimbus.errors import Conflict

logger = logging.getLogger(__name__)

KEY_PREFIX = "nimbus:"
DEFAULT_FINISHED_TTL = 7 * 24 * 3600

# Timestamps come from `TIME` on the server, so lease clocks do not depend on worker clocks.
# Effects replication (the default since Redis 5) makes TIME safe inside writing scripts.
_CLOCK = """
local function clock()
  local t = redis.call('TIME')
  return tonumber(t[1]) + tonumber(t[2]) / 1000000
end
local function stamp(seconds) return string.format('%.6f', seconds) end
"""

# KEYS[1] job; ARGV: inputs, items. Never overwrites: returns false if the id exists.
_CREATE = (
    _CLOCK
    + """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local now = stamp(clock())
redis.call('HSET', KEYS[1], 'status', 'PENDING', 'inputs', ARGV[1], 'items', ARGV[2],
  'created_at', now, 'updated_at', now, 'attempts', 0, 'epoch', 0)
return now
"""
)

# KEYS[1] job; ARGV: owner, lease seconds. Takes a PENDING job, or a STARTED one whose lease
# ran out (its worker died); anything else is refused with the reason.
_CLAIM = (
    _CLOCK
    + """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return {'unknown'} end
local now = clock()
if status == 'STARTED' then
  local lease = tonumber(redis.call('HGET', KEYS[1], 'lease_expires_at') or '0') or 0
  if lease > now then return {'leased'} end
elseif status ~= 'PENDING' then
  return {'finished'}
end
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
redis.call('HSET', KEYS[1], 'status', 'STARTED', 'owner', ARGV[1],
  'lease_expires_at', stamp(now + tonumber(ARGV[2])), 'updated_at', stamp(now))
redis.call('HSETNX', KEYS[1], 'started_at', stamp(now))
return {'claimed', epoch, attempts, redis.call('HGET', KEYS[1], 'inputs') or '[]'}
"""
)

# KEYS[1] job; ARGV: owner, epoch, lease seconds. Only the current holder may extend.
_EXTEND = (
    _CLOCK
    + """
local job = redis.call('HMGET', KEYS[1], 'status', 'owner', 'epoch')
if job[1] ~= 'STARTED' or job[2] ~= ARGV[1] or job[3] ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], 'lease_expires_at', stamp(clock() + tonumber(ARGV[3])))
return 1
"""
)

# KEYS[1] job; ARGV: terminal status, epoch ('' = any holder, PENDING too), ttl, then
# field/value pairs to write. The outcome, the status and the TTL land in one step.
# Returns false for an unknown job, else {1 if changed, the status after the call}.
_FINISH = (
    _CLOCK
    + """
local job = redis.call('HMGET', KEYS[1], 'status', 'epoch')
local status = job[1]
if not status then return false end
if ARGV[2] == '' then
  if status ~= 'PENDING' and status ~= 'STARTED' then return {0, status} end
elseif status ~= 'STARTED' or job[2] ~= ARGV[2] then
  return {0, status}
end
local now = stamp(clock())
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'finished_at', now, 'updated_at', now,
  unpack(ARGV, 4))
redis.call('HDEL', KEYS[1], 'lease_expires_at')
redis.call('EXPIRE', KEYS[1], ARGV[3])
return {1, ARGV[1]}
"""
)


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

    @property
    def is_terminal(self) -> bool:
        """True once the job can no longer change."""
        return self.status.is_terminal

    def to_public(self) -> dict[str, Any]:
        """The body of GET /v1/batch/<job_id>: the seed's fields first, unset times left out."""
        body: dict[str, Any] = {"job_id": self.id, "status": self.status.value}
        if self.status is JobStatus.SUCCESS and self.result is not None:
            body["result"] = self.result
        if self.status is JobStatus.FAILURE and self.error is not None:
            body["error"] = self.error
        if self.model is not None:
            body["model"] = self.model
        body["items"] = self.items
        body["attempts"] = self.attempts
        for name in ("created_at", "updated_at", "started_at", "finished_at"):
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
        self._create = connection.register_script(_CREATE)
        self._claim = connection.register_script(_CLAIM)
        self._extend = connection.register_script(_EXTEND)
        self._finish = connection.register_script(_FINISH)

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

    def create(self, inputs: list[dict[str, Any]], *, job_id: str | None = None) -> Job:
        """Save a new PENDING job; raises Conflict rather than overwrite an existing id."""
        job_id = job_id if job_id is not None else str(uuid.uuid4())
        created = self._create(keys=[self._key(job_id)], args=[orjson.dumps(inputs), len(inputs)])
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
        )

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
        )

    def claim(self, job_id: str, *, owner: str, lease_seconds: float) -> Claim | ClaimRefused:
        """Take a PENDING job, or a STARTED one whose lease expired, for `lease_seconds`."""
        _check_lease(lease_seconds)
        reply = self._claim(keys=[self._key(job_id)], args=[owner, lease_seconds])
        verdict = _text(reply[0])
        if verdict != "claimed":
            return ClaimRefused(verdict)
        _, epoch, attempts, inputs = reply
        return Claim(
            job_id=job_id, epoch=int(epoch), attempts=int(attempts), inputs=orjson.loads(inputs)
        )

    def extend_lease(self, job_id: str, *, owner: str, epoch: int, lease_seconds: float) -> bool:
        """Push the lease `lease_seconds` past now; False if the job is no longer ours."""
        _check_lease(lease_seconds)
        return bool(self._extend(keys=[self._key(job_id)], args=[owner, epoch, lease_seconds]))

    def complete(
        self,
        job_id: str,
        *,
        epoch: int,
        result: list[dict[str, Any]],
        model: dict[str, Any] | None = None,
    ) -> bool:
        """Write the result and SUCCESS together; False (nothing written) if `epoch` is stale."""
        fields: list[str | bytes] = ["result", orjson.dumps(result)]
        if model is not None:
            fields += ["model", orjson.dumps(model)]
        changed, _ = self._finish_job(job_id, JobStatus.SUCCESS, epoch, fields)
        return changed

    def fail(self, job_id: str, *, epoch: int | None, error: dict[str, Any]) -> bool:
        """Mark the job FAILURE with `error`; epoch=None (reconcilers) also fails PENDING jobs."""
        changed, _ = self._finish_job(
            job_id, JobStatus.FAILURE, epoch, ["error", orjson.dumps(error)]
        )
        return changed

    def cancel(self, job_id: str) -> JobStatus | None:
        """Revoke a PENDING or STARTED job; the status after the call, None if unknown."""
        _, status = self._finish_job(job_id, JobStatus.REVOKED, None, [])
        return status

    def _finish_job(
        self,
        job_id: str,
        status: JobStatus,
        epoch: int | None,
        fields: list[str | bytes],
    ) -> tuple[bool, JobStatus | None]:
        args = [status.value, "" if epoch is None else epoch, self.finished_ttl, *fields]
        reply = self._finish(keys=[self._key(job_id)], args=args)
        if reply is None:
            return False, None
        return bool(reply[0]), JobStatus(_text(reply[1]))

    def _key(self, job_id: str) -> bytes:
        # Ids arrive from URLs and the CLI; surrogatepass keeps an odd one from raising
        # UnicodeEncodeError, so it is simply an unknown job.
        return self.key_for(job_id).encode("utf-8", "surrogatepass")


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
)


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
