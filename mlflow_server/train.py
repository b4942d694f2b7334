"""Train a scikit-learn model on a bundled dataset and register it in the MLflow registry.

`python -m mlflow_server.train --tracking-uri http://127.0.0.1:5000` trains the iris classifier,
registers it as `iris` and points the `production` alias at the new version. Datasets ship with
scikit-learn, so training never downloads anything.
"""

from __future__ import annotations

import argparse
import logging
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import mlflow
import numpy as np
import pandas as pd
import sklearn
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge

logger = logging.getLogger(__name__)

PRODUCTION_ALIAS = "production"


@dataclass(frozen=True)
class Dataset:
    """A bundled dataset with the feature names the model's signature will carry."""

    features: pd.DataFrame
    target: np.ndarray
    make_estimator: Callable[[], sklearn.base.BaseEstimator]
    score_name: str


def load_dataset(name: str) -> Dataset:
    """`iris` (3-class classification) or `diabetes` (regression), from scikit-learn's files."""
    if name == "iris":
        iris = load_iris()
        columns = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
        return Dataset(
            features=pd.DataFrame(iris.data, columns=columns),
            target=iris.target,
            # lbfgs is deterministic; 1000 iterations converge on unscaled iris.
            make_estimator=lambda: LogisticRegression(max_iter=1000),
            score_name="training_accuracy",
        )
    if name == "diabetes":
        diabetes = load_diabetes()
        columns = ["age", "sex", "bmi", "bp", "s1", "s2", "s3", "s4", "s5", "s6"]
        return Dataset(
            features=pd.DataFrame(diabetes.data, columns=columns),
            target=diabetes.target,
            make_estimator=lambda: Ridge(alpha=0.1),
            score_name="training_r2",
        )
    raise ValueError(f"Unknown dataset {name!r}: choose iris or diabetes.")


def train_and_register(
    tracking_uri: str,
    *,
    dataset: str = "iris",
    model_name: str | None = None,
    alias: str | None = PRODUCTION_ALIAS,
) -> str:
    """Train on `dataset`, register it as `model_name` (default: the dataset's name), move
    `alias` (if any) to the new version and return that version."""
    data = load_dataset(dataset)
    model_name = model_name or dataset
    client = MlflowClient(tracking_uri=tracking_uri)
    experiment_id = _experiment_id(client, f"nimbus-{dataset}")

    started = time.monotonic()
    estimator = data.make_estimator()
    # Fitted on the bare array, so the estimator has no `feature_names_in_`: the services
    # predict on numpy rows in signature order, warning-free and without pandas.
    matrix = data.features.to_numpy(dtype=np.float64)
    estimator.fit(matrix, data.target)
    score = float(estimator.score(matrix, data.target))
    # The signature comes from the named frame: column names and double types are what
    # nimbus.schema validates requests against.
    signature = infer_signature(data.features, estimator.predict(matrix))

    # The fluent logging API works on the global tracking URI; set it for this call only.
    previous_uri = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(tracking_uri)
    try:
        with (
            mlflow.start_run(experiment_id=experiment_id, run_name=f"train-{model_name}") as run,
            warnings.catch_warnings(),
        ):
            # MLflow checks the input example by predicting on the named frame; the estimator
            # was fitted on the bare array on purpose, so sklearn's complaint is noise here.
            warnings.filterwarnings("ignore", message="X has feature names", category=UserWarning)
            # pandas 3 deprecation inside MLflow's input-example code; not ours to fix.
            warnings.filterwarnings("ignore", message="Operation with range is deprecated")
            mlflow.log_params({"dataset": dataset, "estimator": type(estimator).__name__})
            mlflow.log_metric(data.score_name, score)
            info = mlflow.sklearn.log_model(
                estimator,
                name="model",
                signature=signature,
                input_example=data.features.head(2),
                registered_model_name=model_name,
                # skops (MLflow's default) loads without unpickling arbitrary code; it is
                # a dependency of full mlflow only, so the serving side must pin it too.
                serialization_format=mlflow.sklearn.SERIALIZATION_FORMAT_SKOPS,
                # Listing them skips MLflow's requirement inference, which imports the
                # model in a subprocess and adds seconds to every training.
                pip_requirements=mlflow.sklearn.get_default_pip_requirements(include_skops=True),
            )
    finally:
        mlflow.set_tracking_uri(previous_uri)

    version = str(info.registered_model_version)
    if alias:
        client.set_registered_model_alias(model_name, alias, version)
    logger.info(
        "registered %s version %s (run %s, %s %.3f) as @%s in %.1fs",
        model_name, version, run.info.run_id, data.score_name, score, alias or "-",
        time.monotonic() - started,
    )  # fmt: skip
    return version


def ensure_production_model(
    tracking_uri: str, *, model_name: str = "iris", dataset: str = "iris"
) -> str:
    """The version `<model_name>@production` points at, training one first if there is none."""
    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        version = client.get_model_version_by_alias(model_name, PRODUCTION_ALIAS).version
    except MlflowException as error:
        if error.error_code != "RESOURCE_DOES_NOT_EXIST":
            raise
    else:
        logger.info("%s@%s is version %s already", model_name, PRODUCTION_ALIAS, version)
        return str(version)
    return train_and_register(tracking_uri, dataset=dataset, model_name=model_name)


def _experiment_id(client: MlflowClient, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return str(experiment.experiment_id)
    return str(client.create_experiment(name))


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m mlflow_server.train`: prints the registered (or existing) version."""
    from nimbus.config import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m mlflow_server.train",
        description="Train a model on a bundled dataset and register it in MLflow.",
    )
    parser.add_argument("--tracking-uri", default=settings.tracking_uri)
    parser.add_argument("--dataset", choices=["iris", "diabetes"], default="iris")
    parser.add_argument("--name", help="Registered model name (default: the dataset's name).")
    parser.add_argument("--alias", default=PRODUCTION_ALIAS)
    parser.add_argument(
        "--if-missing",
        action="store_true",
        help="Train only if <name>@production does not exist yet (idempotent).",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    model_name = args.name or args.dataset
    if args.if_missing:
        if args.alias != PRODUCTION_ALIAS:
            parser.error("--if-missing checks the production alias; drop --alias.")
        version = ensure_production_model(
            args.tracking_uri, model_name=model_name, dataset=args.dataset
        )
    else:
        version = train_and_register(
            args.tracking_uri, dataset=args.dataset, model_name=model_name, alias=args.alias
        )
    print(version)


if __name__ == "__main__":
    main()
