"""HTTP plumbing shared by the three functions: reading JSON bodies, answering, error mapping."""

from __future__ import annotations

import functools
import json
import logging
import re
import sys
from collections.abc import Callable
from typing import Any

import orjson
from flask import Request, Response
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge

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

# Model inputs are objects of numbers (depth 1) or lists of them (2); orjson itself stops at 1024.
DEFAULT_MAX_DEPTH = 32


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
    response = Response(payload, status, content_type="application/json")
    if headers:
        response.headers.update(headers)
    return response


def error_response(error: NimbusError) -> Response:
    """The error in the one shape, with the headers its status calls for."""
    headers = error.headers()
    if error.status != 413:
        return json_response(error.to_body(), error.status, headers)
    # functions-framework reads the whole body after every response that is not streamed; a
    # streamed 413 leaves the refused body unread (gunicorn discards it in small pieces).
    payload = orjson.dumps(error.to_body())
    response = Response(iter([payload]), status=413, mimetype="application/json")
    response.headers.update(headers)
    return response


def http_exception_response(error: HTTPException) -> Response:
    """werkzeug's own HTTP errors, raised before a function runs (functions-framework answers
    /robots.txt and /favicon.ico with a 404), in the one error shape."""
    status = error.code or 500
    code = (error.name or "error").lower().replace(" ", "_")
    message = error.description or error.name or "HTTP error"
    return json_response(error_body(code, message), status)


def read_json(request: Request, *, max_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """The request body parsed as JSON, or a 4xx NimbusError saying what is wrong with it.

    Besides the size, it refuses what a JSON parser would quietly accept: nesting deeper than
    `max_depth`, and an object that names a key twice (orjson would keep the last one).
    """
    # A missing Content-Type is accepted (clients that send bytes as they are); a wrong one is
    # not. The usual one is compared as it is; anything else is parsed (parameters, case).
    content_type = request.environ.get("CONTENT_TYPE")
    mimetype = "" if content_type == "application/json" else request.mimetype
    if mimetype and mimetype != "application/json" and not mimetype.endswith("+json"):
        raise UnsupportedMediaType(
            f"Content-Type {mimetype!r} is not supported: send the body as JSON with "
            "'Content-Type: application/json'."
        )
    raw = read_body(request, max_bytes=max_bytes)
    if not raw.strip():
        raise BadRequest("The request body is empty: send a JSON document.")
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise _invalid_json(raw, exc, max_depth) from None
    depth, members = _shape(document, raw, max_depth)
    if depth > max_depth:
        raise _too_deep(max_depth)
    # Every ':' outside a string starts one member; if the raw text has more ':' than the
    # parsed objects have members, a key was repeated (or a string holds a ':'): look closer.
    if members and raw.count(b":") > members:
        _refuse_duplicate_keys(raw)
    return document


def read_body(request: Request, *, max_bytes: int) -> bytes:
    """The raw body, at most `max_bytes` of it: a longer one is refused (413) unread."""
    # Flask 3.1: werkzeug refuses a longer Content-Length before reading anything, and reads a
    # chunked body only up to the limit (one byte past it tells us there was more), so a 40 MB
    # upload never sits in memory.
    request.max_content_length = max_bytes + 1
    try:
        raw = request.get_data(cache=True)
    except RequestEntityTooLarge:
        raise PayloadTooLarge(too_large_message(max_bytes)) from None
    if len(raw) > max_bytes:
        raise PayloadTooLarge(too_large_message(max_bytes))
    return raw


def too_large_message(max_bytes: int) -> str:
    return (
        f"The request body is larger than {max_bytes} bytes (NIMBUS_MAX_BODY_BYTES). For a "
        'large batch, upload the items to GCS and submit {"input_uri": "gs://…", '
        '"output_uri": "gs://…/"}.'
    )


def _too_deep(max_depth: int) -> BadRequest:
    return BadRequest(
        f"The JSON document is nested more than {max_depth} levels deep (NIMBUS_MAX_JSON_DEPTH); "
        "model inputs are objects of numbers.",
    )


# The key a value belongs to, at the end of the text before the value: `"name" :`.
_KEY_BEFORE = re.compile(rb'"((?:[^"\\]|\\.){1,200})"\s*:\s*$')


def _invalid_json(raw: bytes, exc: orjson.JSONDecodeError, max_depth: int) -> BadRequest:
    """A 400 that says what is wrong, naming the field when the fault is one value."""
    # orjson points at the bad character: past a leading '-' for -Infinity.
    end = exc.pos - 1 if raw[exc.pos - 1 : exc.pos] == b"-" else exc.pos
    found = _KEY_BEFORE.search(raw, max(0, end - 256), end)
    name = None if found is None else found.group(1)[:64].decode("utf-8", "replace")
    where = "" if name is None else f"field {name!r}: "
    reason = exc.msg
    if "depth limit" in reason:
        return _too_deep(max_depth)
    if "infinity" in reason:
        return BadRequest(
            f"{where}a number is out of range: JSON numbers must fit a 64-bit float "
            "(about ±1.8e308); integers of hundreds of digits do not.",
            details=None if name is None else [{"field": name, "problem": "out of range"}],
        )
    if "UTF-8" in reason:
        return BadRequest("The request body is not valid JSON: it is not UTF-8 text.")
    hint = ""
    if raw[end : end + 4].lstrip(b"-")[:3] in {b"NaN", b"Inf"}:
        hint = " NaN and Infinity are not JSON numbers."
    return BadRequest(
        f"The request body is not valid JSON ({where}{_short_reason(exc)}).{hint}",
    )


def _short_reason(exc: orjson.JSONDecodeError) -> str:
    # orjson's message names the position; the document itself is never echoed back.
    return f"{exc.msg} at line {exc.lineno} column {exc.colno}"


def _shape(document: Any, raw: bytes, max_depth: int) -> tuple[int, int]:
    """(nesting depth, object members) of a parsed document; the depth stops counting past
    `max_depth`. The two shapes Nimbus takes, an object of scalars and a list of them, are
    recognised by counting brackets in the raw text: a nested container would need one more."""
    kind = type(document)
    if kind is dict and raw.count(b"{") == 1 and b"[" not in raw:
        return 1, len(document)
    if (
        kind is list
        and raw.count(b"[") == 1
        and raw.count(b"{") == len(document)
        and set(map(type, document)) <= {dict}
    ):
        return (2 if document else 1), sum(map(len, document))
    if kind is not dict and kind is not list:
        return 0, 0
    depth = members = 0
    stack: list[tuple[Any, int]] = [(document, 1)]
    while stack:
        node, level = stack.pop()
        depth = max(depth, level)
        if level > max_depth:
            break
        children = node.values() if type(node) is dict else node
        if type(node) is dict:
            members += len(node)
        stack.extend((child, level + 1) for child in children if type(child) in _CONTAINERS)
    return depth, members


_CONTAINERS = frozenset({dict, list})


def _refuse_duplicate_keys(raw: bytes) -> None:
    """400 naming the first key an object repeats; the slow exact check, for the rare body
    whose strings hold ':' (its depth is already known to be small)."""

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        found = dict(items)
        if len(found) < len(items):
            seen: set[str] = set()
            for name, _ in items:
                if name in seen:
                    raise BadRequest(
                        f"The key {name[:64]!r} appears twice in one object; send each field once.",
                        details=[{"field": name[:64], "problem": "duplicate key"}],
                    )
                seen.add(name)
        return found

    json.loads(raw, object_pairs_hook=pairs)


def answers_errors(view: Callable[..., Response]) -> Callable[..., Response]:
    """Turn every exception a view raises into the one error shape; never a traceback."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Response:
        return answer(lambda: view(*args, **kwargs), view.__name__)

    return wrapper


def answer(call: Callable[[], Response], name: str) -> Response:
    """`call()`, with every exception it raises turned into the one error shape."""
    try:
        return call()
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
        logger.exception("unhandled error in %s", name)
        return json_response(
            error_body("internal", "An internal error occurred; it has been logged."), 500
        )
