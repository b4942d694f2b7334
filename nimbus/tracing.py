"""Trace context in and out: read a trace id from the headers or message attributes that carry
it, and name it the way Cloud Logging links a log line to its trace.

Two carriers, both ending in the same 32-hex-digit trace id:

    traceparent (W3C)        00-<32 hex trace id>-<16 hex span id>-<2 hex flags>
    X-Cloud-Trace-Context    <32 hex trace id>/<decimal span id>;o=<0|1>

batch_submit puts the request's trace context in the job message's `traceparent` attribute;
the worker reads it back, so a job's log lines share the trace of the request that made it.
"""

from __future__ import annotations

import re

TRACEPARENT_ATTRIBUTE = "traceparent"
TRACE_LOG_FIELD = "logging.googleapis.com/trace"

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_CLOUD_TRACE_CONTEXT = re.compile(r"([0-9a-fA-F]{32})(?:/([0-9]*))?(?:;o=([0-9]+))?")
_INVALID_TRACE_ID = "0" * 32


def parse_traceparent(value: str | None) -> str | None:
    """The trace id of a W3C `traceparent` value, or None if it is missing or malformed.

    Follows the spec's rules: lowercase hex only; version ff and all-zero ids are invalid;
    version 00 has exactly four fields, later versions may append more.
    """
    if not value:
        return None
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, span_id, _flags, rest = match.groups()
    if version == "ff" or (version == "00" and rest):
        return None
    if trace_id == _INVALID_TRACE_ID or span_id == "0" * 16:
        return None
    return trace_id


def parse_cloud_trace_context(value: str | None) -> str | None:
    """The trace id of an `X-Cloud-Trace-Context` value (`TRACE_ID/SPAN_ID;o=1`), lowercased,
    or None if it is missing or malformed."""
    if not value:
        return None
    match = _CLOUD_TRACE_CONTEXT.fullmatch(value.strip())
    if match is None:
        return None
    trace_id = match.group(1).lower()
    return None if trace_id == _INVALID_TRACE_ID else trace_id


def trace_field(project: str, trace_id: str | None) -> dict[str, str]:
    """The log-line field that ties an entry to its trace in Cloud Logging, ready to merge
    into a JSON line (or pass as `extra=`); empty without a trace id or project."""
    if not trace_id or not project:
        return {}
    return {TRACE_LOG_FIELD: f"projects/{project}/traces/{trace_id}"}
