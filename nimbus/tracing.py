"""Trace context from request headers, for Cloud Logging's `logging.googleapis.com/trace`.

Two headers carry it: W3C `traceparent` (`00-<32 hex trace id>-<16 hex span id>-<flags>`) and
Google's older `X-Cloud-Trace-Context` (`<32 hex trace id>/<decimal span id>;o=1`).
"""

from __future__ import annotations

import re

_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_CLOUD_TRACE = re.compile(r"([0-9a-fA-F]{32})(?:/(\d{1,20}))?(?:;o=[01])?")
_ZERO_TRACE = "0" * 32


def parse_traceparent(value: str | None) -> str | None:
    """The trace id of a W3C `traceparent` header, or None if it is absent or malformed."""
    if not value:
        return None
    found = _TRACEPARENT.fullmatch(value.strip())
    if found is None or found.group(1) == "ff" or found.group(2) == _ZERO_TRACE:
        return None
    if found.group(3) == "0" * 16:
        return None
    return found.group(2)


def parse_cloud_trace_context(value: str | None) -> str | None:
    """The trace id of an `X-Cloud-Trace-Context` header, or None."""
    if not value:
        return None
    found = _CLOUD_TRACE.fullmatch(value.strip())
    if found is None or found.group(1) == _ZERO_TRACE:
        return None
    return found.group(1).lower()


def trace_field(project: str, trace_id: str | None) -> dict[str, str]:
    """The log-entry field that links a line to its trace; empty without a trace id."""
    if not trace_id:
        return {}
    return {"logging.googleapis.com/trace": f"projects/{project}/traces/{trace_id}"}
