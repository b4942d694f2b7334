"""The served model: resolved in the MLflow registry, loaded through MLflow, cached on disk.

`ModelRegistry(client, "models:/iris@production")` resolves the alias to a version, downloads
that version's artifacts from the artifact store (GCS) once into `cache_dir/<name>/<version>`,
and loads the scikit-learn estimator with `mlflow.sklearn.load_model`. A process whose cache
already holds the version loads it without touching the registry's artifact store.

Artifacts are read from the version's storage location (`gs://...`) directly, as the tracking
server runs with `--no-serve-artifacts`; the client passed in is the only registry connection,
so nothing here depends on MLflow's global tracking URI.

`production()` follows the alias: a background watcher (`nimbus.model_watch`) swaps in the
version it names within `refresh_seconds` plus a load, without a restart or a failed request.
Methods here raise without logging; the watcher logs a failure once, not on every check.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import Model
from sklearn.base import is_classifier

from nimbus.errors import BadRequest, ConfigError, ModelUnavailable
from nimbus.schema import InputSchema

logger = logging.getLogger(__name__)

MLMODEL_FILE = "MLmodel"
DEFAULT_REFRESH_SECONDS = 2.0
RETRY_FAILED_AFTER_SECONDS = 30.0


class RegistryUnreachable(ModelUnavailable):
    """The registry did not answer an alias lookup, or answered with an error."""


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
        client: MlflowClient,
        model_uri: str,
        *,
        cache_dir: Path | None = None,
        refresh_seconds: float = DEFAULT_REFRESH_SECONDS,
        retry_failed_after: float = RETRY_FAILED_AFTER_SECONDS,
    ) -> None:
        # model_watch imports this module for its types; importing it here avoids a cycle.
        from nimbus.model_watch import ModelWatch

        self.client = client
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
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
                raise ModelUnavailable(
                    f"The model registry has no model {self.name!r} with the alias "
                    f"{self.alias!r}. Register one (python -m mlflow_server.train) or set the "
                    f"alias, then retry."
                ) from error
            raise self._unavailable(f"resolve {self.model_uri}", RegistryUnreachable) from error
        except Exception as error:
            raise self._unavailable(f"resolve {self.model_uri}", RegistryUnreachable) from error
        return ModelRef(self.name, str(version))

    def load(self, ref: ModelRef) -> LoadedModel:
        """Load a version, from the disk cache when it holds a complete copy."""
        started = time.monotonic()
        try:
            model_dir, downloaded = self._local_copy(ref)
            estimator = mlflow.sklearn.load_model(str(model_dir))
            schema = self._schema_from_folder(ref, model_dir)
        except ModelUnavailable:
            raise
        except Exception as error:
            raise self._unavailable(f"load version {ref.version}") from error
        model = LoadedModel(
            name=ref.name,
            version=ref.version,
            estimator=estimator,
            schema=schema,
            is_classifier=bool(is_classifier(estimator)),
        )
        logger.info(
            "loaded %s version %s (%s) in %.2fs",
            ref.name, ref.version, "downloaded" if downloaded else "from cache",
            time.monotonic() - started,
        )  # fmt: skip
        return model

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
            if folder is not None:
                schema = self._schema_from_folder(ref, folder)
            else:
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
        except MlflowException as error:
            if error.error_code == "RESOURCE_DOES_NOT_EXIST":
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
