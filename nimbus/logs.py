"""JSON log lines in Cloud Logging's format: one object per line with `severity` and `message`.

Lines go to stderr through `LineHandler`. The functions configure it with `buffer_seconds`
(`FUNCTION_BUFFER_SECONDS`): a line below WARNING then waits in memory at most that long (a
background thread writes what waits), a WARNING or worse is written at once with everything
before it, and the buffer is written at exit. Under load the request lines of many requests
leave in one write instead of one each, which a synchronous predict feels: a write per request
is a system call and a hand-over of the GIL between gunicorn's threads. What a SIGKILL of a
function process loses is its last fraction of a second of request lines. The worker writes
every line at once (its job events are few, and the last ones before a crash matter most).
"""

from __future__ import annotations

import io
import logging
import os
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import IO

import orjson

# Attributes every LogRecord has; anything else passed with `extra=` goes into the line.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Fields every line logged while serving one request carries (its trace); gunicorn's threads
# each run one request at a time, and a ContextVar is per thread.
_REQUEST_FIELDS: ContextVar[Mapping[str, object] | None] = ContextVar(
    "nimbus_request_fields", default=None
)

FUNCTION_BUFFER_SECONDS = 0.2


@contextmanager
def request_fields(fields: Mapping[str, object]) -> Iterator[None]:
    """Add `fields` (e.g. `logging.googleapis.com/trace`) to every line logged inside."""
    token = _REQUEST_FIELDS.set(fields)
    try:
        yield
    finally:
        _REQUEST_FIELDS.reset(token)


_second: tuple[int, str] = (-1, "")


def _timestamp(created: float) -> str:
    """RFC 3339 in UTC with microseconds, `2026-12-05T00:43:10.699739+00:00`; the part up to
    the second is formatted once per second (a datetime per line costs a busy predict)."""
    global _second
    whole = int(created)
    second, prefix = _second
    if whole != second:
        prefix = datetime.fromtimestamp(whole, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, prefix)
    return f"{prefix}.{int((created - whole) * 1_000_000):06d}+00:00"


def _entry(severity: str, message: str, created: float, logger: str) -> dict[str, object]:
    """A line's leading fields, then those of the request being served (its trace)."""
    entry: dict[str, object] = {
        "severity": severity,
        "message": message,
        "time": _timestamp(created),
        "logger": logger,
    }
    request = _REQUEST_FIELDS.get()
    if request:
        entry.update(request)
    return entry


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one JSON object that Cloud Logging parses into a structured entry."""

    def format(self, record: logging.LogRecord) -> str:
        return self.format_bytes(record).decode()

    def format_bytes(self, record: logging.LogRecord) -> bytes:
        """The line as UTF-8 bytes, without the newline."""
        entry = _entry(record.levelname, record.getMessage(), record.created, record.name)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str)


class LineHandler(logging.Handler):
    """Writes formatted lines to a binary stream; see the module docstring for when."""

    def __init__(self, stream: IO[bytes], *, flush_seconds: float = 0.0) -> None:
        super().__init__()
        self.stream = stream
        self.flush_seconds = flush_seconds
        self._pending: list[bytes] = []
        self._wake = threading.Event()
        self._flusher_pid = 0  # the process whose flusher thread runs, 0 for none yet

    def emit(self, record: logging.LogRecord) -> None:
        try:
            formatter = self.formatter
            if isinstance(formatter, CloudLoggingFormatter):
                line = formatter.format_bytes(record)
            else:
                line = self.format(record).encode("utf-8", "backslashreplace")
            self._add(line, record.levelno)
        except Exception:
            self.handleError(record)

    def emit_line(self, line: bytes, levelno: int = logging.INFO) -> None:
        """Write one line formatted elsewhere (see `log_line`)."""
        self.acquire()
        try:
            self._add(line, levelno)
        finally:
            self.release()

    def _add(self, line: bytes, levelno: int) -> None:  # the handler's lock is held
        self._pending.append(line + b"\n")
        if levelno >= logging.WARNING or self.flush_seconds <= 0:
            self._write_pending()
        elif self._flusher_pid != os.getpid():  # first line, or first after a fork
            self._start_flusher()

    def flush(self) -> None:
        self.acquire()
        try:
            self._write_pending()
        finally:
            self.release()

    def close(self) -> None:
        self.flush()
        self._wake.set()
        super().close()

    def _write_pending(self) -> None:  # the handler's lock is held
        if not self._pending:
            return
        data = b"".join(self._pending)
        self._pending.clear()
        try:
            self.stream.write(data)
            self.stream.flush()
        except (OSError, ValueError):  # stderr closed or gone: nowhere left to say so
            pass

    def _start_flusher(self) -> None:
        self._flusher_pid = os.getpid()
        self._wake = threading.Event()
        threading.Thread(target=self._flush_loop, name="log-flusher", daemon=True).start()

    def _flush_loop(self) -> None:
        wake = self._wake
        while not wake.wait(self.flush_seconds):
            self.flush()


def log_line(logger: logging.Logger, message: str, fields: dict[str, object]) -> None:
    """`logger.info(message, extra=fields)`: the same JSON line. When the line would reach only
    the handler `configure_logging` installed (as in the functions), it is built and handed to
    that handler directly, without a LogRecord: a request line per request is the one log
    call on predict's hot path."""
    handler = _only_handler(logger)
    if handler is None:
        logger.info("%s", message, extra=fields)
        return
    entry = _entry("INFO", message, time.time(), logger.name)
    entry.update(fields)
    try:
        line = orjson.dumps(entry, default=str)
    except TypeError:  # orjson's JSONEncodeError is one; let the logging module report it
        logger.info("%s", message, extra=fields)
        return
    handler.emit_line(line)


def _only_handler(logger: logging.Logger) -> LineHandler | None:
    """The LineHandler that alone receives `logger`'s INFO records, if that is the case."""
    if not logger.isEnabledFor(logging.INFO):
        return None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters or current.disabled:
            return None
        if current.handlers:
            if current.parent is not None or len(current.handlers) != 1:
                return None  # handlers below the root: their business
            handler = current.handlers[0]
            if not isinstance(handler, LineHandler):
                return None
            direct = (
                type(handler) is LineHandler
                and not handler.filters
                and handler.level <= logging.INFO
                and type(handler.formatter) is CloudLoggingFormatter
            )
            return handler if direct else None
        if not current.propagate:
            return None
        current = current.parent
    return None


def _stderr_bytes() -> IO[bytes]:
    """stderr's byte stream (its text wrapper's buffer), or a writer on file descriptor 2."""
    buffer = getattr(sys.stderr, "buffer", None)
    if isinstance(buffer, io.BufferedIOBase):
        return buffer  # type: ignore[return-value]
    return open(2, "wb", closefd=False)  # lives as long as the process


def configure_logging(level: str = "INFO", *, buffer_seconds: float = 0.0) -> None:
    """Send every logger's records to stderr as JSON lines; idempotent. With `buffer_seconds`,
    lines below WARNING wait in memory up to that long (see the module docstring)."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        root.setLevel(level.upper())
        return
    sys.stderr.flush()  # what was written as text before goes first
    handler = LineHandler(_stderr_bytes(), flush_seconds=buffer_seconds)
    handler.setFormatter(CloudLoggingFormatter())
    root.handlers = [handler]
    os.register_at_fork(before=handler.flush)  # a forked child must not write them again
    root.setLevel(level.upper())
    # The lines never show process or thread names or the caller's file and line: skip
    # gathering them for every record (the logging HOWTO's "Optimization" section).
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None
    # The client libraries are chatty at INFO about retries we already report ourselves.
    for noisy in ("urllib3", "google", "grpc", "werkzeug", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
