"""HTTP plumbing shared by the three functions: reading JSON bodies, answering, error mapping."""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from typing import Any

import orjson
from flask import Request, Response

from nimbus.errors import (
    BadRequest,
    NimbusError,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
    error_body,
)

logger = logging.getLogger(__name__)

HEALTH_BODY = {"status": "NimbusAPI is running."}


def _unavailable() -> tuple[type[BaseException], ...]:
    """Redis' connection errors, the ones a caller can do something about (retry later), so
    they become 503s. Looked up when an error is handled, not imported: predict never uses
    Redis, and importing it costs a cold start most of a second. An error of a module that was
    never imported cannot be raised."""
    module = sys.modules.get("redis.exceptions")
    if module is None:
        return ()
    return (module.ConnectionError, module.TimeoutError)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """A JSON response encoded with orjson (numpy scalars included)."""
    payload = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    response = Response(payload, status=status, mimetype="application/json")
    if headers:
        response.headers.update(headers)
    return response


def error_response(error: NimbusError) -> Response:
    headers = {"Allow": error.details["allow"]} if error.status == 405 and error.details else None
    return json_response(error.to_body(), error.status, headers)


def read_json(request: Request, *, max_bytes: int) -> Any:
    """The request body parsed as JSON, or a 4xx NimbusError saying what is wrong with it."""
    mimetype = request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not supported: send the body as JSON with "
            "'Content-Type: application/json'."
        )
    declared = request.content_length
    if declared is not None and declared > max_bytes:
        raise PayloadTooLarge(_too_large_message(max_bytes))
    # Read one byte past the limit so a body without Content-Length cannot stream forever.
    raw = request.stream.read(max_bytes + 1)
    if len(raw) > max_bytes:
        raise PayloadTooLarge(_too_large_message(max_bytes))
    if not raw.strip():
        raise BadRequest("The request body is empty: send a JSON document.")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(
            f"The request body is not valid JSON ({_short_reason(exc)}). NaN and Infinity are not "
            "JSON numbers; strings must be UTF-8."
        ) from None


def _too_large_message(max_bytes: int) -> str:
    return (
        f"The request body is larger than {max_bytes} bytes (NIMBUS_MAX_BODY_BYTES). For a "
        'large batch, upload the items to GCS and submit {"input_uri": "gs://…", '
        '"output_uri": "gs://…/"}.'
    )


def _short_reason(exc: orjson.JSONDecodeError) -> str:
    # orjson's message names the position; the document itself is never echoed back.
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def answers_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    """Turn every exception a view raises into the one error shape; never a traceback."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        try:
            return view(*args, **kwargs)
        except NimbusError as error:
            if error.status >= 500:
                logger.warning("%s: %s", error.code, error.message)
            return error_response(error)
        except _unavailable() as exc:
            logger.warning("redis unavailable: %s", exc)
            return error_response(
                ServiceUnavailable(
                    "The job store (Redis) cannot be reached; retry in a few seconds.",
                    code="store_unavailable",
                )
            )
        except Exception:
            logger.exception("unhandled error in %s", view.__name__)
            return json_response(
                error_body("internal", "An internal error occurred; it has been logged."), 500
            )

    return wrapper
