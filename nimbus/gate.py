"""What every request passes before its handler, and the one log line it leaves after.

In order: the body-size backstop (413), the API key (401) unless the route is public, the
caller's rate limit (429). Then the handler runs, and one JSON line records the method, path,
status, latency, key name, job id and trace.
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from contextlib import nullcontext

from flask import Request, Response

from nimbus.auth import ApiKeys, presented_key
from nimbus.errors import PayloadTooLarge, TooManyRequests, Unauthorized
from nimbus.http import error_response, read_body, too_large_message
from nimbus.logs import log_line, request_fields
from nimbus.ratelimit import RateLimiter
from nimbus.tracing import parse_cloud_trace_context, parse_traceparent, trace_field

logger = logging.getLogger("nimbus.request")

_MAX_LOGGED_PATH = 256


class Gate:
    """Body size, authentication and rate limit for one function; see the module docstring."""

    def __init__(
        self,
        *,
        project: str,
        max_body_bytes: int,
        keys: ApiKeys,
        limiter: RateLimiter | None = None,
    ) -> None:
        self.project = project
        self.max_body_bytes = max_body_bytes
        self.keys = keys
        self.limiter = limiter

    def serve(
        self, request: Request, route: Callable[[], Response], *, job_id: str | None = None
    ) -> Response:
        """Run `route` (which answers errors itself) and log the request's line."""
        started = time.perf_counter()
        trace = trace_field(self.project, trace_id(request))
        with request_fields(trace) if trace else nullcontext():
            response = self._unread_body_backstop(request, route())
        latency_ms = round((time.perf_counter() - started) * 1000, 2)
        if job_id is None and response.status_code == 202:
            job_id = _job_id_from_location(response)
        path = request.path[:_MAX_LOGGED_PATH]
        method = request.method
        status = response.status_code
        fields = {
            "method": method,
            "path": path,
            "status": status,
            "latency_ms": latency_ms,
            "key": request.environ.get("REMOTE_USER"),
        }
        if job_id:
            fields["job_id"] = job_id
        fields.update(trace)
        fields["httpRequest"] = {
            "requestMethod": method,
            "requestUrl": path,
            "status": status,
            "latency": f"{latency_ms / 1000:.6f}s",
            "remoteIp": client_address(request),
        }
        log_line(logger, f"{method} {path} {status}", fields)
        return response

    def admit(self, request: Request, *, public: bool) -> None:
        """Raise the 413, 401 or 429 this request gets before its handler runs."""
        request.max_content_length = self.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > self.max_body_bytes:
            raise PayloadTooLarge(too_large_message(self.max_body_bytes))
        if public:
            return
        caller = None
        if self.keys.enabled:
            caller = self.keys.name_for(presented_key(request))
            if caller is None:
                raise Unauthorized(
                    "An API key is required: send it as 'Authorization: Bearer <key>' or "
                    "'X-API-Key: <key>' (the CLI: --api-key or NIMBUS_API_KEY)."
                    if presented_key(request) is None
                    else "The API key is not valid: it is not among the configured keys."
                )
            # WSGI's own slot for the authenticated user; handlers read request.remote_user.
            request.environ["REMOTE_USER"] = caller
        if self.limiter is not None:
            wait = self.limiter.retry_after(caller or f"ip:{client_address(request)}")
            if wait is not None:
                raise TooManyRequests(
                    f"Rate limit of {self.limiter.per_minute} requests per minute reached "
                    f"(NIMBUS_RATE_LIMIT); retry in {wait} s.",
                    retry_after=wait,
                )

    def _unread_body_backstop(self, request: Request, response: Response) -> Response:
        """functions-framework reads the whole body after a non-streamed response; a chunked
        body (no Content-Length) the handler did not read is read here, bounded, instead."""
        if response.is_streamed or request.content_length is not None:
            return response
        try:
            read_body(request, max_bytes=self.max_body_bytes)
        except PayloadTooLarge as error:
            return error_response(error)
        return response


def trace_id(request: Request) -> str | None:
    """The request's trace id, from `traceparent` (W3C) or `X-Cloud-Trace-Context`."""
    environ = request.environ  # the WSGI names of the two headers: a dict lookup each
    return parse_traceparent(environ.get("HTTP_TRACEPARENT")) or parse_cloud_trace_context(
        environ.get("HTTP_X_CLOUD_TRACE_CONTEXT")
    )


def traceparent(request: Request) -> str | None:
    """A W3C `traceparent` to pass on (e.g. to Pub/Sub): the request's own if it sent one,
    else one built from its X-Cloud-Trace-Context trace id with a new span id."""
    header = request.headers.get("traceparent")
    if parse_traceparent(header):
        return str(header).strip()
    trace = parse_cloud_trace_context(request.headers.get("X-Cloud-Trace-Context"))
    if trace is None:
        return None
    return f"00-{trace}-{secrets.token_hex(8)}-01"


def client_address(request: Request) -> str:
    """The caller's address: the last X-Forwarded-For hop (added by the proxy in front,
    which a caller cannot forge), else the peer address."""
    forwarded = request.environ.get("HTTP_X_FORWARDED_FOR")
    if forwarded:
        return forwarded.rsplit(",", 1)[-1].strip()[:64]
    return request.environ.get("REMOTE_ADDR") or "unknown"


def _job_id_from_location(response: Response) -> str | None:
    location = response.headers.get("Location", "")
    return location.rsplit("/", 1)[-1] if location.startswith("/v1/batch/") else None
