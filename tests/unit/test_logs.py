from __future__ import annotations

import logging

import orjson

from nimbus.logs import CloudLoggingFormatter, request_fields


def format_line(message: str, **extra: object) -> dict:
    record = logging.makeLogRecord({"name": "nimbus.api", "levelname": "INFO", "msg": message})
    record.__dict__.update(extra)
    return orjson.loads(CloudLoggingFormatter().format(record))


def test_every_line_logged_during_a_request_carries_its_trace():
    trace = {"logging.googleapis.com/trace": "projects/p/traces/4bf92f3577b34da6a3ce929d0e0e4736"}

    with request_fields(dict(trace)):
        inside = format_line("job accepted", job_id="j1")
    outside = format_line("later")

    assert inside["logging.googleapis.com/trace"] == trace["logging.googleapis.com/trace"]
    assert inside["job_id"] == "j1" and inside["severity"] == "INFO"
    assert "logging.googleapis.com/trace" not in outside
