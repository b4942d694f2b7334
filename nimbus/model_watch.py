"""Hot swap: keep a process's served model on the version the registry alias names.

How a process learns of a move: it polls. After the first load, a daemon thread resolves the
alias every `refresh_seconds` (NIMBUS_MODEL_REFRESH_SECONDS, default 2): one small
GetModelVersionByAlias call. When the version differs, it loads the new one beside the served
one (the served one keeps answering meanwhile), then replaces the served reference in one
assignment. A request reads that reference once and a `LoadedModel` never changes, so every
request, and every batch job, runs start to end on one version, and none fails during a swap.

Why every process polls on its own rather than being told (a registry webhook, a Redis key
or channel): Cloud Run instances have no address of their own and come and go at will, so
nothing could deliver a push to each of them; a Redis key would be one more dependency on the
predict path that still has to be read by polling. Polling needs no list of instances, keeps
no state outside the process, and a process that was asleep catches up by itself. It costs
one small read of the registry per process per interval (0.5 requests/s at the default); with
hundreds of instances, raise the interval if the tracking server feels it.

Timing: a move is served within `refresh_seconds` + one resolve + the new version's load (a
fraction of a second for the iris model from GCS; the disk cache skips the download of a
version loaded before), so under 5 s at the default. Cloud Run gives an instance CPU only
while it handles a request, so the watcher's timed wait may not run between requests; every
`model()` and `schema()` call therefore wakes the watcher when the last check is older than
the interval, without waiting for it. After an idle spell the first request is answered by
the version loaded before, and the requests after the load by the new one.

Failures: a version that cannot be loaded (artifacts missing, not an MLflow model, no usable
signature) is logged once, shown by `status()["last_error"]`, and not tried again for
`retry_failed_after` seconds unless the alias moves; the served version stays. A registry that
does not answer leaves the served version in place too, and `status()["registry"]` says
"unreachable". That includes a check still running after STALLED_CHECK_SECONDS: a healthy
registry answers in milliseconds, while the MLflow client retries a refused connection with
backoff for as long as MLFLOW_HTTP_REQUEST_MAX_RETRIES allows (minutes by default).
"""

from __future__ import annotations

import gc
import logging
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

from nimbus.errors import ModelUnavailable
from nimbus.registry import (
    RETRY_FAILED_AFTER_SECONDS,
    LoadedModel,
    ModelRef,
    RegistryUnreachable,
)

if TYPE_CHECKING:
    from nimbus.registry import ModelRegistry
    from nimbus.schema import InputSchema

logger = logging.getLogger(__name__)

# A check that has not answered after this long counts as an unreachable registry.
STALLED_CHECK_SECONDS = 3.0
# A readiness body quotes the cause of a failure; keep it to a few lines.
_MAX_MESSAGE = 500

T = TypeVar("T")


@dataclass(frozen=True)
class LoadFailure:
    """Why the version the alias names is not served (`ref` is None when it names none)."""

    ref: ModelRef | None
    message: str  # with its cause, for logs and readiness
    public_message: str  # what a request that finds no model is told
    failed_at: float  # time.monotonic()

    def to_json(self) -> dict[str, str | None]:
        return {"version": self.ref.version if self.ref else None, "message": self.message}


class ModelWatch:
    """A registry's served model and input schema, kept on the version its alias names.

    Requests never wait for a check: once a model is served, `model()` and `schema()` only
    read one reference. The lock is held by the first load and by each check, one at a time.
    """

    def __init__(
        self,
        registry: ModelRegistry,
        *,
        refresh_seconds: float,
        retry_failed_after: float = RETRY_FAILED_AFTER_SECONDS,
    ) -> None:
        if refresh_seconds <= 0:
            raise ValueError(f"refresh_seconds must be positive, got {refresh_seconds}.")
        self.registry = registry
        self.refresh_seconds = refresh_seconds
        self.retry_failed_after = retry_failed_after
        self._lock = threading.Lock()
        self._model: LoadedModel | None = None
        # For processes that validate only (batch_submit): the schema without the estimator.
        self._schema: tuple[ModelRef, InputSchema] | None = None
        self._failure: LoadFailure | None = None
        self._reachable = True
        self._checked_at: datetime | None = None
        self._last_check = float("-inf")  # time.monotonic() when the last resolve ended
        self._resolving_since: float | None = None
        self._wake = threading.Event()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    def model(self) -> LoadedModel:
        """The served model: resolved and loaded on the first call, then kept current."""
        model = self._model
        if model is not None:
            self._nudge()
            return model
        with self._lock:
            if self._model is None:
                ref = self._resolve()
                self._model = self._load(ref, self.registry.load)
                self._start_watcher()
                if self.registry.serving:
                    # What is in memory now lives as long as the process: keep the garbage
                    # collector from walking it again on every full collection, which would
                    # show as a pause in a request's latency.
                    gc.freeze()
            return self._model

    def schema(self) -> InputSchema:
        """The served model's input schema; with no model loaded, the schema of the version
        the alias names, read from its signature alone and kept current the same way."""
        model = self._model
        if model is not None:
            self._nudge()
            return model.schema
        known = self._schema
        if known is not None:
            self._nudge()
            return known[1]
        with self._lock:
            if self._model is not None:
                return self._model.schema
            if self._schema is None:
                ref = self._resolve()
                self._schema = (ref, self._load(ref, self.registry.schema))
                self._start_watcher()
            return self._schema[1]

    def refresh(self) -> None:
        """Resolve the alias once; load a version it newly names and swap it in.

        What the watcher thread does every interval; never raises for a registry or a version
        that fails, which only show in `status()`.
        """
        with self._lock:
            try:
                ref = self._resolve()
            except ModelUnavailable:
                return
            served = self._model
            if served is not None:
                if served.ref == ref:
                    self._failure = None
                    return
                try:
                    model = self._load(ref, self.registry.load)
                except ModelUnavailable:
                    return
                self._model = model  # the swap: requests read this reference once
                logger.info(
                    "hot swap: serving %s version %s (was %s)",
                    ref.name, ref.version, served.version,
                )  # fmt: skip
                return
            known = self._schema
            if known is not None and known[0] != ref:
                try:
                    self._schema = (ref, self._load(ref, self.registry.schema))
                except ModelUnavailable:
                    return
                logger.info("validating against %s version %s", ref.name, ref.version)
            elif known is not None:
                self._failure = None

    def status(self) -> dict[str, Any]:
        """What readiness shows: the served model, whether the registry answers, when it was
        last asked, and why the version the alias names is not served, if it is not."""
        self._nudge()
        model = self._model
        resolving_since = self._resolving_since
        stalled = (
            resolving_since is not None
            and time.monotonic() - resolving_since > STALLED_CHECK_SECONDS
        )
        failure = self._failure
        checked_at = self._checked_at
        return {
            "model": {"name": model.name, "version": model.version} if model else None,
            "registry": "ok" if self._reachable and not stalled else "unreachable",
            "checked_at": checked_at.isoformat(timespec="milliseconds") if checked_at else None,
            "last_error": failure.to_json() if failure else None,
        }

    def close(self) -> None:
        """Stop the watcher thread; the served model stays, but follows the alias no more."""
        self._closed.set()
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=5)

    @property
    def served(self) -> LoadedModel | None:
        """The model served now, without loading one."""
        return self._model

    @property
    def is_watching(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _resolve(self) -> ModelRef:
        """The version the alias names now; records whether the registry answered."""
        self._resolving_since = time.monotonic()
        try:
            ref = self.registry.resolve()
        except RegistryUnreachable as error:
            self._mark_reachable(False, error)
            raise
        except ModelUnavailable as error:  # the registry answered: no such model or alias
            self._mark_reachable(True)
            self._record_failure(None, error)
            raise
        finally:
            self._resolving_since = None
            self._last_check = time.monotonic()
            self._checked_at = datetime.now(UTC)
        self._mark_reachable(True)
        return ref

    def _load(self, ref: ModelRef, load: Callable[[ModelRef], T]) -> T:
        """`load(ref)`, unless that version failed less than `retry_failed_after` ago."""
        failure = self._failure
        if (
            failure is not None
            and failure.ref == ref
            and time.monotonic() - failure.failed_at < self.retry_failed_after
        ):
            raise ModelUnavailable(failure.public_message)
        try:
            loaded = load(ref)
        except ModelUnavailable as error:
            self._record_failure(ref, error)
            raise
        self._failure = None
        return loaded

    def _record_failure(self, ref: ModelRef | None, error: ModelUnavailable) -> None:
        """Keep the failure for `status()`; log it when it is news, not on every check."""
        message = _describe(error)
        previous = self._failure
        is_news = previous is None or (previous.ref, previous.message) != (ref, message)
        serving = self._serving()
        if ref is None:
            logger.log(
                logging.ERROR if is_news else logging.DEBUG,
                "%s names no version (%s): %s", self.registry.model_uri, serving, message,
            )  # fmt: skip
        else:
            logger.log(
                logging.ERROR if is_news else logging.DEBUG,
                "cannot load %s version %s (%s): %s", ref.name, ref.version, serving, message,
                exc_info=error if is_news else None,
            )  # fmt: skip
        self._failure = LoadFailure(ref, message, error.message, time.monotonic())

    def _mark_reachable(self, reachable: bool, error: ModelUnavailable | None = None) -> None:
        if reachable and not self._reachable:
            logger.info("model registry %s answers again", self.registry.client.tracking_uri)
        elif not reachable and self._reachable:
            logger.warning(
                "model registry %s unreachable (%s): %s",
                self.registry.client.tracking_uri, self._serving(),
                _describe(error) if error else "no answer",
            )  # fmt: skip
        self._reachable = reachable

    def _serving(self) -> str:
        model = self._model
        return f"still serving version {model.version}" if model else "no model loaded"

    def _nudge(self) -> None:
        """Wake the watcher when its last check is overdue: Cloud Run may have throttled it."""
        if (
            self._resolving_since is None
            and time.monotonic() - self._last_check > self.refresh_seconds
        ):
            self._wake.set()

    def _start_watcher(self) -> None:
        if self.registry.alias is None or self._thread is not None or self._closed.is_set():
            return  # a pinned version never moves
        self._thread = threading.Thread(
            target=_watch,
            args=(weakref.ref(self), self._wake, self._closed, self.refresh_seconds),
            name=f"nimbus-model-watch-{self.registry.name}",
            daemon=True,
        )
        self._thread.start()


def _watch(
    watch_ref: weakref.ref[ModelWatch],
    wake: threading.Event,
    closed: threading.Event,
    interval: float,
) -> None:
    """The watcher thread: a check every interval, or sooner when woken.

    It holds its ModelWatch only weakly, so a registry that is dropped without `close()` is
    still collected, and the thread ends at its next wake-up.
    """
    while not closed.is_set():
        wake.wait(interval)
        wake.clear()
        watch = watch_ref()
        if watch is None or closed.is_set():
            return
        try:
            watch.refresh()
        except Exception:
            logger.exception("model watcher: unexpected error; checking again in %.1fs", interval)
        del watch


def _describe(error: ModelUnavailable) -> str:
    """The error's message and its cause, short enough for a readiness body."""
    cause = error.__cause__
    text = error.message
    if cause is not None:
        cause_text = " ".join(str(cause).split()) or "no message"
        text = f"{text} Cause: {type(cause).__name__}: {cause_text}"
    return text if len(text) <= _MAX_MESSAGE else text[: _MAX_MESSAGE - 1] + "…"
