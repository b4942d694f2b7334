"""JSON log lines in Cloud Logging's format: one object per line with `severity` and `message`."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime

import orjson

# Attributes every LogRecord has; anything else passed with `extra=` goes into the line.
_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}

# Fields every line logged while serving one request carries (its trace); gunicorn's threads
# each run one request at a time, and a ContextVar is per thread.
_REQUEST_FIELDS: ContextVar[dict[str, object] | None] = ContextVar(
    "nimbus_request_fields", default=None
)


@contextmanager
def request_fields(fields: dict[str, object]) -> Iterator[None]:
    """Add `fields` (e.g. `logging.googleapis.com/trace`) to every line logged inside."""
    token = _REQUEST_FIELDS.set(fields)
    try:
        yield
    finally:
        _REQUEST_FIELDS.reset(token)


class CloudLoggingFormatter(logging.Formatter):
    """Formats a record as one JSON object that Cloud Logging parses into a structured entry."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "severity": record.levelname,
            "message": record.getMessage(),
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "logger": record.name,
        }
        request = _REQUEST_FIELDS.get()
        if request:
            entry.update(request)
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                entry[key] = value
        if record.exc_info:
            entry["stack_trace"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure_logging(level: str = "INFO") -> None:
    """Send every logger's records to stderr as JSON lines; idempotent."""
    root = logging.getLogger()
    if any(isinstance(h.formatter, CloudLoggingFormatter) for h in root.handlers):
        root.setLevel(level.upper())
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(CloudLoggingFormatter())
    root.handlers = [handler]
    root.setLevel(level.upper())
    # The lines never show process or thread names: skip gathering them for every record.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    # The client libraries are chatty at INFO about retries we already report ourselves.
    for noisy in ("urllib3", "google", "grpc", "werkzeug", "alembic", "mlflow"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
