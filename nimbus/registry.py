"""The served model: resolved in the MLflow registry, loaded through MLflow, cached on disk.

`ModelRegistry(client, "models:/iris@production")` resolves the alias to a version, downloads
that version's artifacts from the artifact store (GCS) once into `cache_dir/<name>/<version>`,
and loads the scikit-learn estimator with `mlflow.sklearn.load_model`. A process whose cache
already holds the version loads it without touching the registry's artifact store.

The fast form: after loading a linear model (nimbus.linear) through MLflow, its coefficients
go into the cache folder beside the MLflow files (`nimbus-linear.npz`) with a manifest
(`nimbus-fast.json`: their SHA-256, the MLmodel file's SHA-256, the input schema, the kind). A
later load of that version reads those two files with numpy and verifies the hash: a restart
imports neither MLflow, nor skops, nor scikit-learn, and is served from the same numbers.
A missing or damaged fast form only means a load through MLflow, which writes it again.

The client is `RestRegistryClient` in the services (two GETs of MLflow's REST API, no MLflow
import) or an `mlflow.MlflowClient`. Artifacts are read from the version's storage location
(`gs://...`) directly, as the tracking server runs with `--no-serve-artifacts`; the client
passed in is the only registry connection, so nothing here depends on MLflow's global
tracking URI.

`production()` follows the alias: a background watcher (`nimbus.model_watch`) swaps in the
version it names within `refresh_seconds` plus a load, without a restart or a failed request.
Methods here raise without logging; the watcher logs a failure once, not on every check.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import quote, urlencode

import numpy as np

from nimbus.errors import BadRequest, ConfigError, ModelUnavailable
from nimbus.linear import LinearPredictor
from nimbus.schema import InputSchema

# MLflow, scikit-learn and skops take seconds each to import. They are imported where they are
# needed (downloading a version, loading one the fast form does not cover), so a process whose
# cache holds the version's fast form serves its first prediction without importing any.

logger = logging.getLogger(__name__)

MLMODEL_FILE = "MLmodel"
# The fast form of a cached version, written beside its MLflow files after the first load
# (nimbus.linear): the coefficients, and a manifest with their hash, the schema and the kind.
FAST_ARRAYS_FILE = "nimbus-linear.npz"
FAST_MANIFEST_FILE = "nimbus-fast.json"
FAST_FORMAT = 1
DEFAULT_REFRESH_SECONDS = 2.0
RETRY_FAILED_AFTER_SECONDS = 30.0


class RegistryUnreachable(ModelUnavailable):
    """The registry did not answer an alias lookup, or answered with an error."""


class RegistryClient(Protocol):
    """What ModelRegistry asks of the registry: `mlflow.MlflowClient`, or `RestRegistryClient`
    (the same calls over MLflow's REST API, without importing MLflow)."""

    @property
    def tracking_uri(self) -> str: ...

    def get_model_version_by_alias(self, name: str, alias: str) -> Any: ...

    def get_model_version_download_uri(self, name: str, version: str) -> str: ...


class RegistryError(Exception):
    """An error answer of MLflow's REST API; `error_code` as MlflowException names it."""

    def __init__(self, message: str, error_code: str = "INTERNAL_ERROR") -> None:
        super().__init__(message)
        self.error_code = error_code


@dataclass(frozen=True)
class _Version:
    version: str


class RestRegistryClient:
    """The two registry calls serving needs, as plain HTTP GETs to MLflow's REST API.

    `mlflow.MlflowClient` costs seconds of imports at a cold start for what is one small GET
    (GetModelVersionByAlias) per check. A refused connection fails at once, with no retries:
    the watcher checks again at its next interval anyway. `timeout` defaults to
    MLFLOW_HTTP_REQUEST_TIMEOUT (as the MLflow client reads it), else 10 s.
    """

    def __init__(self, tracking_uri: str, *, timeout: float | None = None) -> None:
        if not tracking_uri.startswith(("http://", "https://")):
            raise ConfigError(
                f"The tracking URI must be an http(s):// MLflow server, got {tracking_uri!r}."
            )
        self.tracking_uri = tracking_uri.rstrip("/")
        if timeout is None:
            timeout = float(os.environ.get("MLFLOW_HTTP_REQUEST_TIMEOUT") or 10)
        self.timeout = timeout

    def get_model_version_by_alias(self, name: str, alias: str) -> _Version:
        body = self._get("registered-models/alias", name=name, alias=alias)
        return _Version(str(body["model_version"]["version"]))

    def get_model_version_download_uri(self, name: str, version: str) -> str:
        return str(
            self._get("model-versions/get-download-uri", name=name, version=version)["artifact_uri"]
        )

    def _get(self, endpoint: str, **params: str) -> dict[str, Any]:
        url = f"{self.tracking_uri}/api/2.0/mlflow/{endpoint}?{urlencode(params)}"
        request = urllib.request.Request(url, headers=_auth_headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return dict(json.loads(response.read()))
        except urllib.error.HTTPError as error:
            try:
                answer = json.loads(error.read())
            except ValueError:
                answer = {}
            raise RegistryError(
                f"{error.code} from {endpoint}: {answer.get('message', error.reason)}",
                str(answer.get("error_code", "INTERNAL_ERROR")),
            ) from None


def _auth_headers() -> dict[str, str]:
    """The credentials the MLflow client would send, from the same variables."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and password:
        import base64

        encoded = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {encoded}"}
    return {}


@dataclass(frozen=True)
class ModelRef:
    """A registered model version: what an alias resolves to."""

    name: str
    version: str

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


@dataclass(frozen=True)
class LoadedModel:
    """A loaded model version with the input schema from its signature."""

    name: str
    version: str
    estimator: Any
    schema: InputSchema
    is_classifier: bool

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.name, self.version)

    def predict_row(self, values: list[float]) -> int | float | str | None:
        """One row's prediction without numpy when the model can give it certainly (a linear
        classifier: `LinearPredictor.predict_row`), else None: then use `predict`."""
        predict_row = getattr(self.estimator, "predict_row", None)
        return None if predict_row is None else predict_row(values)

    def predict(self, matrix: np.ndarray) -> list[int | float]:
        """Predictions for the matrix's rows as plain Python values, in one estimator call."""
        if len(matrix) == 0:
            return []
        predictions = np.asarray(self.estimator.predict(matrix))
        if self.is_classifier:
            return predictions.tolist()
        return predictions.astype(np.float64, copy=False).tolist()

    def predict_proba(self, matrix: np.ndarray) -> list[dict[str, float]]:
        """Class probabilities per row, keyed by class label; classifiers only."""
        if not self.is_classifier or not hasattr(self.estimator, "predict_proba"):
            raise BadRequest(
                f"Model {self.name!r} version {self.version} is not a classifier with class "
                "probabilities; drop ?proba=true."
            )
        labels = [str(label) for label in np.asarray(self.estimator.classes_).tolist()]
        probabilities = np.asarray(self.estimator.predict_proba(matrix), dtype=np.float64)
        return [dict(zip(labels, row, strict=True)) for row in probabilities.tolist()]


def parse_model_uri(model_uri: str) -> tuple[str, str | None, str | None]:
    """(name, alias, version) from `models:/<name>@<alias>` or `models:/<name>/<version>`."""
    rest = model_uri.removeprefix("models:/")
    name, alias, version = "", None, None
    if model_uri.startswith("models:/"):
        if "@" in rest:
            name, alias = rest.split("@", 1)
        elif "/" in rest:
            name, version = rest.rsplit("/", 1)
    if not name or "/" in name or not (alias or (version and version.isdigit())):
        raise ConfigError(
            f"The model URI must look like models:/<name>@<alias> or models:/<name>/<version>, "
            f"got {model_uri!r}."
        )
    return name, alias, version


class ModelRegistry:
    """One served model URI: resolves it, loads versions, keeps the production one in memory
    and on the version the alias names.

    Thread-safe: concurrent first calls to `production()` load the model once. After that, a
    daemon thread checks the alias every `refresh_seconds`, loads a new version beside the
    served one and swaps the reference; `close()` stops it. A version that fails to load is
    tried again after `retry_failed_after` seconds, or at once when the alias moves.
    """

    def __init__(
        self,
        client: RegistryClient,
        model_uri: str,
        *,
        cache_dir: Path | None = None,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        retry_failed_after: float = RETRY_FAILED_AFTER_SECONDS,
        serving: bool = False,
    ) -> None:
        # model_watch imports this module for its types; importing it here avoids a cycle.
        from nimbus.model_watch import ModelWatch

        self.client = client
        # A service's registry: it loads through MLflow in a child process (see
        # `_prepare_in_child`), and freezes the heap after its first load (nimbus.model_watch).
        self.serving = serving
        self.model_uri = model_uri
        self.name, self.alias, self.version = parse_model_uri(model_uri)
        if cache_dir is None:
            # One folder per registry, removed with it (Cloud Run's /tmp is memory).
            cache_dir = Path(tempfile.mkdtemp(prefix="nimbus-models-"))
            weakref.finalize(self, shutil.rmtree, cache_dir, ignore_errors=True)
        self.cache_dir = cache_dir
        self._schemas: dict[ModelRef, InputSchema] = {}
        self._watch = ModelWatch(
            self, refresh_seconds=refresh_seconds, retry_failed_after=retry_failed_after
        )

    def resolve(self) -> ModelRef:
        """The version the model URI names now (an alias is looked up in the registry)."""
        if self.alias is None:
            assert self.version is not None
            return ModelRef(self.name, self.version)
        try:
            version = self.client.get_model_version_by_alias(self.name, self.alias).version
        except Exception as error:
            # MlflowException and RegistryError both name the error as MLflow's API does.
            if getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                raise ModelUnavailable(
                    f"The model registry has no model {self.name!r} with the alias "
                    f"{self.alias!r}. Register one (python -m mlflow_server.train) or set the "
                    f"alias, then retry."
                ) from error
            raise self._unavailable(f"resolve {self.model_uri}", RegistryUnreachable) from error
        return ModelRef(self.name, str(version))

    def load(self, ref: ModelRef) -> LoadedModel:
        """Load a version, from the disk cache when it holds a complete copy.

        From a cached version's fast form when it has one (numpy only); else through MLflow
        (skops), writing the fast form beside it when the estimator is a linear model that
        `nimbus.linear` predicts identically.
        """
        started = time.monotonic()
        isolated = self.serving and "mlflow" not in sys.modules
        if isolated:
            self._prepare_in_child(ref)
        try:
            model_dir, downloaded = self._local_copy(ref)
            fast = self._load_fast_form(ref, model_dir)
            if fast is not None:
                estimator, schema, classifier = fast
                source = "fast form"
            else:
                estimator, schema, classifier = self._load_with_mlflow(ref, model_dir)
                source = "downloaded" if downloaded else "from cache"
        except ModelUnavailable:
            raise
        except Exception as error:
            raise self._unavailable(f"load version {ref.version}") from error
        model = LoadedModel(
            name=ref.name,
            version=ref.version,
            estimator=estimator,
            schema=schema,
            is_classifier=classifier,
        )
        if isolated and "mlflow" not in sys.modules:
            self._loader.start()  # warm for the next version, in the background
        logger.info(
            "loaded %s version %s (%s) in %.2fs",
            ref.name, ref.version, source, time.monotonic() - started,
        )  # fmt: skip
        return model

    def _prepare_in_child(self, ref: ModelRef) -> None:
        """Download the version and write its fast form in the loader process, when the cache
        has no fast form of it yet.

        Loading through MLflow imports MLflow, skops and scikit-learn, which stay in memory
        for the life of the process (about 200 MiB, and every garbage collection walks their
        objects), all to end up with a few numbers when the model is linear. A serving
        process (`serving=True`) has a child process (`_LoaderProcess`) do that work; it
        then loads the fast form itself. The child is started after the first load and keeps
        those imports warm, so a hot swap costs a download and a load, not seconds of
        imports. Best effort: when the child fails or the model has no fast form, the load
        goes on in this process, which reports any error as it would have.
        """
        folder = self._cached_folder(ref)
        if folder is not None and self._fast_manifest(folder) is not None:
            return
        started = time.monotonic()
        problem = self._loader.prepare(ref)
        if problem is not None:
            logger.warning(
                "preparing %s version %s in the loader process failed (%s); loading it here",
                ref.name, ref.version, problem[:300],
            )  # fmt: skip
            return
        logger.info(
            "prepared %s version %s in the loader process in %.2fs",
            ref.name, ref.version, time.monotonic() - started,
        )  # fmt: skip

    @functools.cached_property
    def _loader(self) -> _LoaderProcess:
        loader = _LoaderProcess(self.client.tracking_uri, self.cache_dir)
        weakref.finalize(self, loader.close)
        return loader

    def _load_with_mlflow(self, ref: ModelRef, folder: Path) -> tuple[Any, InputSchema, bool]:
        import mlflow.sklearn
        from sklearn.base import is_classifier

        estimator = mlflow.sklearn.load_model(str(folder))
        schema = self._schema_from_folder(ref, folder)
        classifier = bool(is_classifier(estimator))
        fast = LinearPredictor.from_estimator(estimator)
        if fast is None or fast.is_classifier != classifier:
            return estimator, schema, classifier
        try:
            self._write_fast_form(folder, fast, schema)
        except OSError as error:  # a read-only cache still serves; it only loads slower
            logger.warning("cannot write the fast form of version %s: %s", ref.version, error)
        return fast, schema, classifier

    def _write_fast_form(self, folder: Path, fast: LinearPredictor, schema: InputSchema) -> None:
        """The coefficients, then the manifest naming their hash, each renamed into place:
        a manifest exists only beside the complete file it describes."""
        arrays = folder / FAST_ARRAYS_FILE
        staging = folder / f".{FAST_ARRAYS_FILE}.{os.getpid()}"
        fast.save(staging)
        digest = hashlib.sha256(staging.read_bytes()).hexdigest()
        os.replace(staging, arrays)
        manifest = {
            "format": FAST_FORMAT,
            "arrays": FAST_ARRAYS_FILE,
            "sha256": digest,
            "mlmodel_sha256": hashlib.sha256((folder / MLMODEL_FILE).read_bytes()).hexdigest(),
            "is_classifier": fast.is_classifier,
            "schema": schema.to_json(),
        }
        staging = folder / f".{FAST_MANIFEST_FILE}.{os.getpid()}"
        staging.write_text(json.dumps(manifest, indent=1) + "\n")
        os.replace(staging, folder / FAST_MANIFEST_FILE)

    def _fast_manifest(self, folder: Path) -> dict[str, Any] | None:
        """The fast form's manifest if it is one this code wrote for this MLmodel, else None."""
        try:
            manifest = json.loads((folder / FAST_MANIFEST_FILE).read_text())
            mlmodel = hashlib.sha256((folder / MLMODEL_FILE).read_bytes()).hexdigest()
        except (OSError, ValueError):
            return None
        if (
            not isinstance(manifest, dict)
            or manifest.get("format") != FAST_FORMAT
            or manifest.get("mlmodel_sha256") != mlmodel
        ):
            return None
        return manifest

    def _load_fast_form(
        self, ref: ModelRef, folder: Path
    ) -> tuple[LinearPredictor, InputSchema, bool] | None:
        """The version's fast form, verified against the hash its manifest records; None
        (and a load through MLflow, which writes it again) when absent or not intact."""
        manifest = self._fast_manifest(folder)
        if manifest is None:
            return None
        try:
            data = (folder / FAST_ARRAYS_FILE).read_bytes()
            if hashlib.sha256(data).hexdigest() != manifest.get("sha256"):
                raise ValueError("its hash does not match the manifest")
            fast = LinearPredictor.load(folder / FAST_ARRAYS_FILE)
            schema = InputSchema.from_json(manifest["schema"])
            classifier = bool(manifest["is_classifier"])
            if fast.is_classifier != classifier or fast.n_features_in_ != schema.width:
                raise ValueError("it does not match its manifest")
        except (OSError, ValueError, KeyError, TypeError) as error:
            logger.warning(
                "ignoring the fast form of %s version %s (%s); loading it through MLflow",
                ref.name, ref.version, error,
            )  # fmt: skip
            return None
        return fast, schema, classifier

    def current(self) -> LoadedModel | None:
        """The model being served now, without loading one: None before the first load."""
        return self._watch.served

    def production(self) -> LoadedModel:
        """The served model: resolved and loaded on the first call, then kept in memory on
        the version the alias names. Never waits for a check once a model is loaded."""
        return self._watch.model()

    def production_schema(self) -> InputSchema:
        """The served model's input schema; before any load, the schema of the version the
        alias names, read from its signature without loading it and kept current likewise."""
        return self._watch.schema()

    def refresh(self) -> None:
        """Check the alias now and swap in the version it names (what the watcher does)."""
        self._watch.refresh()

    def status(self) -> dict[str, Any]:
        """Readiness as JSON: `{"model": {"name", "version"} | None, "registry": "ok" |
        "unreachable", "checked_at": ISO time | None, "last_error": {"version", "message"} |
        None}`; `last_error` says why the version the alias names is not the one served."""
        return self._watch.status()

    def close(self) -> None:
        """Stop following the alias (the watcher thread ends); the served model stays."""
        self._watch.close()

    def schema(self, ref: ModelRef) -> InputSchema:
        """A version's input schema, from its MLmodel file alone; cached per version."""
        cached = self._schemas.get(ref)
        if cached is not None:
            return cached
        folder = self._cached_folder(ref)
        try:
            manifest = self._fast_manifest(folder) if folder is not None else None
            if manifest is not None:
                schema = InputSchema.from_json(manifest["schema"])
            elif folder is not None:
                schema = self._schema_from_folder(ref, folder)
            else:
                import mlflow.artifacts

                source = self._download_uri(ref).rstrip("/")
                with tempfile.TemporaryDirectory(prefix="nimbus-mlmodel-") as scratch:
                    local = mlflow.artifacts.download_artifacts(
                        artifact_uri=f"{source}/{MLMODEL_FILE}", dst_path=scratch
                    )
                    schema = self._schema_from_folder(ref, Path(local).parent)
        except ModelUnavailable:
            raise
        except Exception as error:
            raise self._unavailable(f"read the signature of version {ref.version}") from error
        self._schemas[ref] = schema
        return schema

    def _local_copy(self, ref: ModelRef) -> tuple[Path, bool]:
        """The version's folder in the cache and whether it was downloaded just now.

        The download lands in a hidden folder beside the final one and is renamed into place,
        so a folder under its version's name is always complete, also across processes.
        """
        folder = self._cached_folder(ref)
        if folder is not None:
            return folder, False
        source = self._download_uri(ref)
        final = self._version_folder(ref)
        final.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{ref.version}-", dir=final.parent))
        import mlflow.artifacts

        try:
            # MLflow puts the artifacts under dst_path/<last part of the URI> ("artifacts"),
            # and returns that path; that folder is the model.
            local = Path(
                mlflow.artifacts.download_artifacts(artifact_uri=source, dst_path=str(staging))
            )
            if not (local / MLMODEL_FILE).is_file():
                raise ModelUnavailable(
                    f"Version {ref.version} of model {ref.name!r} has no MLflow model in its "
                    "artifacts; register a model logged with mlflow.sklearn.log_model."
                )
            try:
                os.rename(local, final)
            except OSError:
                if self._cached_folder(ref) is None:
                    raise
                # Another process renamed its complete copy first; use that one.
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return final, True

    def _download_uri(self, ref: ModelRef) -> str:
        try:
            return str(self.client.get_model_version_download_uri(ref.name, ref.version))
        except Exception as error:
            if getattr(error, "error_code", None) == "RESOURCE_DOES_NOT_EXIST":
                raise ModelUnavailable(
                    f"The model registry has no version {ref.version} of model {ref.name!r}. "
                    "Check the model URI the service is configured with."
                ) from error
            raise

    def _version_folder(self, ref: ModelRef) -> Path:
        return self.cache_dir / quote(ref.name, safe="") / quote(ref.version, safe="")

    def _cached_folder(self, ref: ModelRef) -> Path | None:
        folder = self._version_folder(ref)
        return folder if (folder / MLMODEL_FILE).is_file() else None

    def _schema_from_folder(self, ref: ModelRef, folder: Path) -> InputSchema:
        from mlflow.models import Model

        signature = Model.load(str(folder / MLMODEL_FILE)).signature
        try:
            return InputSchema.from_signature(signature)
        except ValueError as error:
            raise ModelUnavailable(
                f"Version {ref.version} of model {ref.name!r} cannot be served: {error}"
            ) from None

    def _unavailable(
        self, action: str, kind: type[ModelUnavailable] = ModelUnavailable
    ) -> ModelUnavailable:
        """A short message for the caller; raise it `from` the cause, which the watcher logs."""
        return kind(
            f"The model {self.name!r} is unavailable: cannot {action} (the model registry or "
            "its artifact store could not be reached or returned an error). Retry later."
        )


class _LoaderProcess:
    """A child process that imports MLflow once, then downloads and loads the versions it is
    sent (one JSON line each), leaving their fast forms in the cache; it answers `ok` or the
    error on one line. It ends when its stdin closes, i.e. with the process that started it."""

    def __init__(self, tracking_uri: str, cache_dir: Path) -> None:
        self._argv = [sys.executable, "-c", _LOADER_CHILD, tracking_uri, str(cache_dir)]
        self._lock = threading.Lock()
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start the child if it is not running; returns at once (it imports on its own)."""
        with self._lock:
            self._running()

    def prepare(self, ref: ModelRef, *, timeout: float = 600.0) -> str | None:
        """Have the child load `ref`; None when it did, else what went wrong."""
        with self._lock:
            try:
                process = self._running()
                assert process.stdin is not None and process.stdout is not None
                process.stdin.write(json.dumps([ref.name, ref.version]).encode() + b"\n")
                process.stdin.flush()
                ready, _, _ = select.select([process.stdout], [], [], timeout)
                line = process.stdout.readline().decode(errors="replace").strip() if ready else ""
            except OSError as error:
                line = f"error {type(error).__name__}: {error}"
            if line == "ok":
                return None
            if not line.startswith("error "):  # no answer: the child died or hangs
                self._stop()
                return line or "the loader process gave no answer"
            return line.removeprefix("error ")

    def close(self) -> None:
        with self._lock:
            self._stop()

    def _running(self) -> subprocess.Popen[bytes]:
        process = self._process
        if process is None or process.poll() is not None:
            process = subprocess.Popen(
                self._argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            self._process = process
        return process

    def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait(timeout=10)


# The loader child: MLflow's imports first (what makes a cold load slow), then one version
# per line of stdin. argv: tracking URI, cache folder.
_LOADER_CHILD = """
import json, sys
from pathlib import Path
from nimbus.registry import ModelRef, ModelRegistry, RestRegistryClient
uri, cache = sys.argv[1:3]
if uri.startswith(("http://", "https://")):
    client = RestRegistryClient(uri)
else:
    from mlflow import MlflowClient
    client = MlflowClient(tracking_uri=uri)
import mlflow.artifacts, mlflow.models, mlflow.sklearn, sklearn.base
for line in sys.stdin:
    try:
        name, version = json.loads(line)
        ModelRegistry(client, f"models:/{name}/{version}", cache_dir=Path(cache)).load(
            ModelRef(name, version)
        )
    except Exception as error:
        answer = " ".join(f"error {type(error).__name__}: {error}".split())[:500]
    else:
        answer = "ok"
    sys.stdout.write(answer + "\\n")
    sys.stdout.flush()
"""
