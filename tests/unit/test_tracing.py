"""Trace ids read from W3C traceparent and X-Cloud-Trace-Context, and the Cloud Logging field."""

from __future__ import annotations

import pytest

from nimbus.tracing import parse_cloud_trace_context, parse_traceparent, trace_field

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE_ID}-00f067aa0ba902b7-01",
        f"00-{TRACE_ID}-00f067aa0ba902b7-00",
        f" 00-{TRACE_ID}-00f067aa0ba902b7-01 ",
        f"01-{TRACE_ID}-00f067aa0ba902b7-01-what-a-later-version-adds",
    ],
)
def test_traceparent_gives_its_trace_id(value: str):
    assert parse_traceparent(value) == TRACE_ID


@pytest.mark.parametrize(
    "value",
    [
        None,
        "",
        "garbage",
        f"00-{TRACE_ID.upper()}-00f067aa0ba902b7-01",  # the spec wants lowercase
        f"00-{'0' * 32}-00f067aa0ba902b7-01",  # all-zero trace id
        f"00-{TRACE_ID}-{'0' * 16}-01",  # all-zero span id
        f"ff-{TRACE_ID}-00f067aa0ba902b7-01",  # version ff is invalid
        f"00-{TRACE_ID}-00f067aa0ba902b7-01-extra",  # version 00 has four fields
        f"00-{TRACE_ID[:-1]}-00f067aa0ba902b7-01",
    ],
)
def test_a_malformed_traceparent_gives_none(value: str | None):
    assert parse_traceparent(value) is None


@pytest.mark.parametrize(
    "value",
    [f"{TRACE_ID}/1;o=1", f"{TRACE_ID}/12345", TRACE_ID, f"{TRACE_ID.upper()}/1;o=0"],
)
def test_cloud_trace_context_gives_its_trace_id(value: str):
    assert parse_cloud_trace_context(value) == TRACE_ID


@pytest.mark.parametrize(
    "value", [None, "", "nope/1;o=1", f"{'0' * 32}/1;o=1", f"{TRACE_ID}/x;o=1", f"{TRACE_ID}1/1"]
)
def test_a_malformed_cloud_trace_context_gives_none(value: str | None):
    assert parse_cloud_trace_context(value) is None


def test_trace_field_names_the_trace_in_cloud_loggings_format():
    assert trace_field("nimbus-local", TRACE_ID) == {
        "logging.googleapis.com/trace": f"projects/nimbus-local/traces/{TRACE_ID}"
    }
    assert trace_field("nimbus-local", None) == {}
    assert trace_field("", TRACE_ID) == {}
