from __future__ import annotations

import hashlib

import pytest
from flask import Flask, request

from nimbus.auth import ApiKeys, digest, key_entry, new_key, presented_key
from nimbus.tracing import parse_cloud_trace_context, parse_traceparent, trace_field


def test_a_new_key_is_random_and_its_entry_holds_only_its_digest():
    first, second = new_key(), new_key()

    entry = key_entry("alice", first)

    assert first != second and len(first) > 40
    assert entry == f"alice:{hashlib.sha256(first.encode()).hexdigest()}"
    assert first not in entry


def test_keys_are_matched_by_digest():
    alice, bob = new_key(), new_key()
    keys = ApiKeys.parse(f" {key_entry('alice', alice)} ,{key_entry('bob', bob)},")

    assert keys.enabled
    assert keys.name_for(alice) == "alice"
    assert keys.name_for(bob) == "bob"
    assert keys.name_for(alice + "x") is None
    assert keys.name_for(digest(alice)) is None  # the stored digest is not a key
    assert keys.name_for(None) is None
    assert not ApiKeys.parse("").enabled


def test_a_key_name_is_checked():
    with pytest.raises(ValueError, match="letters"):
        key_entry("a b", new_key())


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Authorization": "Bearer k1"}, "k1"),
        ({"Authorization": "bearer  k1 "}, "k1"),
        ({"X-API-Key": "k2"}, "k2"),
        ({"Authorization": "Bearer k1", "X-API-Key": "k2"}, "k1"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, None),
        ({"Authorization": "Bearer "}, None),
        ({}, None),
    ],
)
def test_the_key_comes_from_either_header(headers, expected):
    with Flask("t").test_request_context("/", headers=headers):
        assert presented_key(request) == expected


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"00-{TRACE}-00f067aa0ba902b7-01", TRACE),
        (f" 00-{TRACE}-00f067aa0ba902b7-00 ", TRACE),
        (f"00-{'0' * 32}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE}-{'0' * 16}-01", None),
        (f"ff-{TRACE}-00f067aa0ba902b7-01", None),
        (f"00-{TRACE.upper()}-00f067aa0ba902b7-01", None),
        ("garbage", None),
        ("", None),
        (None, None),
    ],
)
def test_parse_traceparent(value, expected):
    assert parse_traceparent(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (f"{TRACE}/1;o=1", TRACE),
        (f"{TRACE.upper()}/123456789", TRACE),
        (TRACE, TRACE),
        ("nope/1;o=1", None),
        (None, None),
    ],
)
def test_parse_cloud_trace_context(value, expected):
    assert parse_cloud_trace_context(value) == expected


def test_trace_field_names_the_project():
    assert trace_field("p1", TRACE) == {
        "logging.googleapis.com/trace": f"projects/p1/traces/{TRACE}"
    }
    assert trace_field("p1", None) == {}


def test_nimbus_keys_new_prints_a_key_and_the_entry_that_accepts_it():
    from click.testing import CliRunner

    from nimbus.cli import main

    result = CliRunner().invoke(main, ["keys", "new", "alice"])

    assert result.exit_code == 0, result.output
    lines = dict(line.split(":", 1) for line in result.stdout.splitlines() if ":" in line)
    key, entry = lines["key"].strip(), lines["entry"].strip()
    assert ApiKeys.parse(entry).name_for(key) == "alice"
    assert CliRunner().invoke(main, ["keys", "new", "not a name"]).exit_code == 2
