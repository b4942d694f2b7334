from __future__ import annotations

import io
import logging
import time
from collections.abc import Iterator

import orjson
import pytest

from nimbus.logs import CloudLoggingFormatter, LineHandler, _timestamp, log_line, request_fields


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


@pytest.fixture
def isolated_logger() -> Iterator[tuple[logging.Logger, io.BytesIO, LineHandler]]:
    """A logger tree of its own whose root-like top holds one LineHandler, as the root does
    in a function process."""
    stream = io.BytesIO()
    handler = LineHandler(stream, flush_seconds=30)
    handler.setFormatter(CloudLoggingFormatter())
    manager = logging.Manager(logging.RootLogger(logging.INFO))
    root = manager.root
    root.addHandler(handler)
    logger = manager.getLogger("nimbus.request")
    logger.manager = manager
    yield logger, stream, handler
    handler.close()


def lines(stream: io.BytesIO) -> list[dict]:
    return [orjson.loads(line) for line in stream.getvalue().splitlines()]


def test_info_lines_wait_for_a_flush_and_a_warning_takes_them_along(isolated_logger):
    logger, stream, handler = isolated_logger

    logger.info("first")
    logger.info("second")
    waiting = stream.getvalue()
    logger.warning("trouble")

    assert waiting == b""
    assert [line["message"] for line in lines(stream)] == ["first", "second", "trouble"]
    logger.info("third")
    handler.close()
    assert lines(stream)[-1]["message"] == "third"


def test_the_flusher_writes_waiting_lines_within_its_interval():
    stream = io.BytesIO()
    handler = LineHandler(stream, flush_seconds=0.05)
    handler.setFormatter(CloudLoggingFormatter())
    try:
        handler.handle(logging.LogRecord("t", logging.INFO, __file__, 1, "hi", None, None))
        deadline = time.monotonic() + 5
        while not stream.getvalue() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert orjson.loads(stream.getvalue())["message"] == "hi"
    finally:
        handler.close()


def test_a_direct_line_is_the_line_the_logging_module_would_write(isolated_logger):
    logger, stream, handler = isolated_logger
    fields = {"method": "POST", "status": 200, "httpRequest": {"status": 200}}
    trace = {"logging.googleapis.com/trace": "projects/p/traces/t"}

    with request_fields(trace):
        log_line(logger, "POST /v1/predict 200", fields)  # straight to the handler
        logger.info("%s", "POST /v1/predict 200", extra=fields)  # through a LogRecord
    handler.flush()

    direct, recorded = lines(stream)
    assert direct.keys() == recorded.keys()
    assert {**direct, "time": None} == {**recorded, "time": None}
    assert direct["time"] <= recorded["time"] and direct["time"].endswith("+00:00")


def test_a_direct_line_goes_through_logging_when_another_handler_listens(isolated_logger):
    logger, stream, handler = isolated_logger
    seen: list[logging.LogRecord] = []
    listener = logging.Handler()
    listener.emit = seen.append  # type: ignore[method-assign]
    logger.manager.root.addHandler(listener)

    log_line(logger, "GET /ready 200", {"status": 200})
    handler.flush()

    assert [record.status for record in seen] == [200]  # type: ignore[attr-defined]
    assert lines(stream)[0]["status"] == 200


def test_timestamps_are_rfc3339_utc_with_microseconds():
    assert _timestamp(1700000000.25) == "2023-11-14T22:13:20.250000+00:00"
    assert _timestamp(1700000000.0) == "2023-11-14T22:13:20.000000+00:00"
    assert _timestamp(1700000001.5) == "2023-11-14T22:13:21.500000+00:00"
