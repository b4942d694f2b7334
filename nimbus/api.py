"""What each function does with a request, apart from how its clients are built.

The functions' `main.py` files build the clients once per process and call these; tests call
them with real clients of their own.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from flask import Request, Response

from nimbus.auth import ANONYMOUS
from nimbus.errors import (
    BadRequest,
    Conflict,
    MethodNotAllowed,
    NimbusError,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    ValidationFailed,
)
from nimbus.gate import traceparent
from nimbus.http import HEALTH_BODY, answer, json_response, read_json
from nimbus.jobs import JobStatus
from nimbus.storage import check_large_job

if TYPE_CHECKING:
    from google.cloud.storage import Client as StorageClient

    from nimbus.bus import JobBus
    from nimbus.config import Settings
    from nimbus.gate import Gate
    from nimbus.jobs import Job, JobStore
    from nimbus.registry import ModelRegistry

logger = logging.getLogger(__name__)

MODEL_HEADER = "X-Nimbus-Model"
PUBLIC_PATHS = frozenset({"/", "/ready", "/healthz"})  # liveness and readiness: no key
Handler = Callable[[], Response]


def dispatch(
    request: Request, routes: dict[str, dict[str, Handler]], gate: Gate | None = None
) -> Response:
    """Call the handler for (path, method), or answer 404/405 in the error shape.

    With a `gate`, the request first passes its checks (body size, API key, rate limit) and
    leaves one log line; health and readiness (GET / and /ready) need no key.
    """
    path = request.path.rstrip("/") or "/"

    def route() -> Response:
        if gate is not None:
            public = request.method in {"GET", "HEAD"} and path in PUBLIC_PATHS
            gate.admit(request, public=public)
        methods = routes.get(path)
        if methods is None:
            raise NotFound(f"No route for {request.path[:256]}.")
        handler = methods.get(request.method)
        if handler is None:
            allow = ", ".join(sorted(methods))
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {request.path[:256]}; use {allow}.",
                details={"allow": allow},
            )
        return handler()

    if gate is None:
        return answer(route, "dispatch")
    candidate = job_id_from_path(request.path)
    job_id = candidate if candidate is not None and _is_job_id(candidate) else None
    return gate.serve(request, lambda: answer(route, "dispatch"), job_id=job_id)


def health() -> Response:
    """Liveness: the process answers. It checks no dependency, so a restart never cascades."""
    return json_response(HEALTH_BODY)


# -- predict ----------------------------------------------------------------------------------


def predict(request: Request, registry: ModelRegistry, settings: Settings) -> Response:
    """One JSON object in, one answer out; a JSON list of objects in, a list in the same order.

    `?proba=true` adds class probabilities (classifiers only).
    """
    body = read_json(request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth)
    with_proba = _flag(request, "proba")
    model = registry.production()
    model_body = {"name": model.name, "version": model.version}
    headers = {MODEL_HEADER: f"{model.name}/{model.version}"}
    if isinstance(body, dict):
        values = model.schema.fast_values(body)
        if values is not None and not with_proba:  # the common call: one well-formed row
            label = model.predict_row(values)  # answered without numpy by a linear classifier
            if label is not None:
                return json_response({"prediction": label, "model": model_body}, headers=headers)
        matrix = model.schema.row_to_matrix(body, values)
    elif isinstance(body, list):
        if not body:
            raise ValidationFailed(
                "The list of rows is empty: send at least one.", code="empty_input"
            )
        if len(body) > settings.max_predict_rows:
            raise PayloadTooLarge(
                f"{len(body)} rows in one predict request; at most {settings.max_predict_rows} "
                "are accepted (NIMBUS_MAX_PREDICT_ROWS). Submit larger sets as a batch job "
                "(POST /v1/batch)."
            )
        matrix = model.schema.rows_to_matrix(body)
    else:
        example = ", ".join(f'"{name}": ...' for name in model.schema.names)
        raise BadRequest(
            f"Send one JSON object with the model's input fields, or a list of them: {{{example}}}."
        )
    predictions = model.predict(matrix)
    answers: list[dict[str, Any]] = [
        {"prediction": value, "model": model_body} for value in predictions
    ]
    if with_proba:
        for answer, probabilities in zip(answers, model.predict_proba(matrix), strict=True):
            answer["probabilities"] = probabilities
    return json_response(answers[0] if isinstance(body, dict) else answers, headers=headers)


def _flag(request: Request, name: str) -> bool:
    """A yes/no query parameter: true/1/yes or false/0/no (absent: false); else a 400."""
    if not request.environ.get("QUERY_STRING"):
        return False  # the usual request: no query string to parse
    raw = request.args.get(name)
    if raw is None:
        return False
    value = raw.strip().lower()
    if value in {"true", "1", "yes"}:
        return True
    if value in {"false", "0", "no", ""}:
        return False
    raise BadRequest(f"Query parameter {name!r} must be true or false, got {raw[:20]!r}.")


def predict_ready(registry: ModelRegistry) -> Response:
    """200 once the production model is loaded (loading it if need be), 503 with why not.

    The body adds the registry's state (`ModelRegistry.status()`): a model served from memory
    while the registry is unreachable, or while the version the alias names fails to load,
    is still ready, and says so.
    """
    try:
        model = registry.production()
    except NimbusError as error:
        return json_response({"status": "unready", **error.to_body(), **registry.status()}, 503)
    body = {"status": "ready", **registry.status()}
    body["model"] = {"name": model.name, "version": model.version}  # the one the header names
    return json_response(body, headers={MODEL_HEADER: f"{model.name}/{model.version}"})


# -- batch ------------------------------------------------------------------------------------


def submit_batch(
    request: Request,
    store: JobStore,
    bus: JobBus,
    registry: ModelRegistry,
    settings: Settings,
    storage: Callable[[], StorageClient],
) -> Response:
    """Validate the items, record the job, queue it; 202 with its id once Pub/Sub holds it.

    Items come inline (a JSON array), or for a large job as
    `{"input_uri": "gs://…/items.jsonl|.csv", "output_uri": "gs://…/"}`.
    """
    body = read_json(request, max_bytes=settings.max_body_bytes, max_depth=settings.max_json_depth)
    submitted_by = request.remote_user or ANONYMOUS
    if isinstance(body, dict) and "input_uri" in body:
        unknown = sorted(set(body) - {"input_uri", "output_uri"})
        if unknown:
            raise ValidationFailed(
                "A large job takes input_uri and output_uri only.",
                details=[{"field": name[:64], "problem": "unknown field"} for name in unknown],
            )
        check_large_job(storage(), body["input_uri"], body.get("output_uri"))
        job = store.create(
            [],
            input_uri=body["input_uri"],
            output_uri=body["output_uri"],
            submitted_by=submitted_by,
        )
    else:
        job = store.create(_inline_items(body, registry, settings), submitted_by=submitted_by)
    # The worker's log lines join the request's trace through the message's attributes.
    trace = traceparent(request)
    try:
        bus.publish_job(job.id, **({"traceparent": trace} if trace else {}))
    except ServiceUnavailable:
        # Never leave a job PENDING that no worker will ever see: the caller got a 503 and
        # will submit again, so this record ends here.
        store.fail(
            job.id,
            epoch=None,
            error={"code": "queue_unavailable", "message": "The job could not be queued."},
        )
        raise
    logger.info(
        "job %s accepted: %s",
        job.id,
        job.input_uri or f"{job.items} items",
        extra={"job_id": job.id, "key": submitted_by},
    )
    return json_response(
        {"job_id": job.id, "status": "PENDING"}, 202, headers={"Location": f"/v1/batch/{job.id}"}
    )


def _inline_items(body: Any, registry: ModelRegistry, settings: Settings) -> list[Any]:
    """The items of an inline batch, each checked against the production model's signature."""
    if not isinstance(body, list):
        raise BadRequest(
            "Send a JSON array of items, each an object of the model's input fields, or "
            '{"input_uri": "gs://…", "output_uri": "gs://…/"} for a large job.'
        )
    if not body:
        raise ValidationFailed("The batch is empty: send at least one item.", code="empty_batch")
    if len(body) > settings.max_batch_items:
        raise PayloadTooLarge(
            f"The batch has {len(body)} items; at most {settings.max_batch_items} are accepted "
            "inline (NIMBUS_MAX_BATCH_ITEMS). For more, upload them to GCS as .jsonl or .csv "
            'and submit {"input_uri": "gs://…", "output_uri": "gs://…/"}.'
        )
    registry.production_schema().rows_to_matrix(body)
    return body


def submit_ready(store: JobStore, bus: JobBus, registry: ModelRegistry) -> Response:
    """200 when Redis and Pub/Sub answer and the production model's signature is known (items
    are validated against it); asking also warms all three for the first submit."""
    problems: dict[str, str] = {}
    if not store.is_reachable():
        problems["redis"] = "unreachable"
    if not bus.is_reachable():
        problems["pubsub"] = "unreachable"
    try:
        registry.production_schema()
    except NimbusError as error:
        problems["model_signature"] = error.message
    if problems:
        return json_response({"status": "unready", "dependencies": problems}, 503)
    return json_response({"status": "ready"})


def batch_status(request: Request, job_id: str, store: JobStore, settings: Settings) -> Response:
    """The job's record as the caller may see it; a long result comes a page at a time
    (`?offset=&limit=`); 404 for an id that is not a job, saying so if it expired."""
    _require_job_id(job_id)
    offset = _int_arg(request, "offset", 0, maximum=None)
    limit = _int_arg(
        request, "limit", settings.result_page_items, maximum=settings.result_page_items
    )
    job = store.fetch(job_id)
    if job is None or not _visible(job, request):
        raise _job_not_found(job_id, store if job is None else None)
    body = job.to_public()
    result = body.get("result")
    if result is not None and (offset or len(result) > limit):
        body["result"] = result[offset : offset + limit]
        following = offset + limit
        body["page"] = {
            "offset": offset,
            "limit": limit,
            "total": len(result),
            "next": f"/v1/batch/{job_id}?offset={following}&limit={limit}"
            if following < len(result)
            else None,
        }
    return json_response(body)


def cancel_batch(request: Request, job_id: str, store: JobStore) -> Response:
    """DELETE /v1/batch/<id>: revoke a job that has not finished; 409 if it has."""
    _require_job_id(job_id)
    job = store.fetch(job_id, with_result=False)
    if job is None or not _visible(job, request):
        raise _job_not_found(job_id, store if job is None else None)
    status = job.status if job.is_terminal else store.cancel(job_id)
    if job.is_terminal or status is not JobStatus.REVOKED:
        # It finished before (or while) we asked; a second DELETE of a revoked job lands here.
        finished = (status or job.status).value
        raise Conflict(
            f"Job {job_id} already finished ({finished}); only PENDING or STARTED jobs "
            "can be cancelled.",
            code="job_finished",
        )
    logger.info("job %s revoked", job_id, extra={"job_id": job_id})
    return json_response({"job_id": job_id, "status": status.value})


def _require_job_id(job_id: str) -> None:
    if not _is_job_id(job_id):
        raise NotFound(
            f"No job {job_id[:64]!r}: job ids are the UUIDs that POST /v1/batch answers.",
            code="job_not_found",
        )


def _visible(job: Job, request: Request) -> bool:
    """With API keys on, a job is the submitting key's alone (OWASP API1): to any other key
    it answers exactly as an unknown id does. Without keys every job is everyone's."""
    return request.remote_user is None or job.submitted_by == request.remote_user


def _job_not_found(job_id: str, store: JobStore | None) -> NotFound:
    if store is not None and store.is_expired(job_id):
        return NotFound(
            f"Job {job_id} finished and has expired: finished jobs are kept for "
            f"{store.finished_ttl // 3600} hours (NIMBUS_FINISHED_TTL).",
            code="job_expired",
        )
    return NotFound(f"No job {job_id}: it was never submitted here.", code="job_not_found")


def _int_arg(request: Request, name: str, default: int, *, maximum: int | None) -> int:
    raw = request.args.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise BadRequest(
            f"Query parameter {name!r} must be an integer, got {raw[:20]!r}."
        ) from None
    low = 1 if name == "limit" else 0
    if value < low or (maximum is not None and value > maximum):
        bound = f"between {low} and {maximum}" if maximum is not None else f"at least {low}"
        raise BadRequest(f"Query parameter {name!r} must be {bound}, got {value}.")
    return value


def list_batches(request: Request, store: JobStore) -> Response:
    """GET /v1/batch?limit=20: the caller's recent jobs, newest first, without results."""
    limit = _int_arg(request, "limit", DEFAULT_LIST_LIMIT, maximum=MAX_LIST_LIMIT)
    jobs = store.recent(request.remote_user or ANONYMOUS, limit=limit)
    return json_response({"jobs": [_summary(job) for job in jobs]})


DEFAULT_LIST_LIMIT = 20
MAX_LIST_LIMIT = 100
_SUMMARY_FIELDS = (
    "job_id",
    "status",
    "progress",
    "items",
    "model",
    "input_uri",
    "output_uri",
    "result_uri",
    "error",
    "attempts",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
)


def _summary(job: Job) -> dict[str, Any]:
    """One line of the jobs list: the job's public record without its result and errors."""
    public = job.to_public()
    return {name: public[name] for name in _SUMMARY_FIELDS if name in public}


def status_ready(store: JobStore) -> Response:
    if not store.is_reachable():
        return json_response({"status": "unready", "dependencies": {"redis": "unreachable"}}, 503)
    return json_response({"status": "ready"})


def job_id_from_path(path: str) -> str | None:
    """The job id in `/v1/batch/<id>` (gateway) or `/<id>` (the function's own URL)."""
    parts = [part for part in path.split("/") if part]
    if len(parts) == 3 and parts[:2] == ["v1", "batch"]:
        return parts[2]
    if len(parts) == 1 and parts[0] not in {"ready", "healthz"}:
        return parts[0]
    return None


def _is_job_id(value: str) -> bool:
    try:
        return str(uuid.UUID(value)) == value.lower() and len(value) == 36
    except ValueError:
        return False
