"""nimbus.linear predicts exactly what scikit-learn predicts, for every supported model."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_diabetes, load_iris
from sklearn.linear_model import ElasticNet, Lasso, LinearRegression, LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.tree import DecisionTreeClassifier

from nimbus.linear import LinearPredictor


def _inputs(train: np.ndarray, seed: int) -> np.ndarray:
    """Many rows: the training rows, rows around them, far outside them, and single rows."""
    rng = np.random.default_rng(seed)
    spread = train.std(axis=0) + 1e-9
    return np.vstack(
        [
            train,
            train + rng.normal(scale=spread, size=train.shape),
            rng.normal(scale=spread * 50, size=(2000, train.shape[1])),
            rng.uniform(-1e6, 1e6, size=(500, train.shape[1])),
            np.zeros((1, train.shape[1])),
        ]
    )


def _classifiers() -> list[tuple[str, LogisticRegression, np.ndarray]]:
    iris = load_iris()
    x, y = iris.data.astype(np.float64), iris.target
    binary = y < 2
    return [
        ("iris", LogisticRegression(max_iter=1000).fit(x, y), x),
        ("iris-strong-reg", LogisticRegression(C=0.01, max_iter=1000).fit(x, y), x),
        ("binary", LogisticRegression(max_iter=1000).fit(x[binary], y[binary]), x),
        ("string-labels", LogisticRegression(max_iter=1000).fit(x, iris.target_names[y]), x),
        ("no-intercept", LogisticRegression(fit_intercept=False, max_iter=1000).fit(x, y), x),
    ]


def _regressors() -> list[tuple[str, object, np.ndarray]]:
    diabetes = load_diabetes()
    x, y = diabetes.data.astype(np.float64), diabetes.target
    return [
        ("linear", LinearRegression().fit(x, y), x),
        ("ridge", Ridge(alpha=0.1).fit(x, y), x),
        ("lasso", Lasso(alpha=0.01).fit(x, y), x),
        ("elasticnet", ElasticNet(alpha=0.01).fit(x, y), x),
    ]


@pytest.mark.parametrize("name, estimator, train", _classifiers(), ids=lambda v: str(v)[:20])
def test_classifier_predictions_are_identical(
    name: str, estimator: LogisticRegression, train: np.ndarray, tmp_path: Path
) -> None:
    predictor = LinearPredictor.from_estimator(estimator)
    assert predictor is not None and predictor.is_classifier
    path = tmp_path / "model.npz"
    predictor.save(path)
    reloaded = LinearPredictor.load(path)
    matrix = _inputs(train, seed=len(name))
    for fast in (predictor, reloaded):
        np.testing.assert_array_equal(fast.predict(matrix), estimator.predict(matrix))
        np.testing.assert_array_equal(fast.predict_proba(matrix), estimator.predict_proba(matrix))
        np.testing.assert_array_equal(fast.classes_, estimator.classes_)
        for row in matrix[:: max(1, len(matrix) // 200)]:  # one row at a time, as predict does
            one = row.reshape(1, -1)
            np.testing.assert_array_equal(fast.predict(one), estimator.predict(one))
            np.testing.assert_array_equal(fast.predict_proba(one), estimator.predict_proba(one))


@pytest.mark.parametrize("name, estimator, train", _regressors(), ids=lambda v: str(v)[:20])
def test_regressor_predictions_are_identical(
    name: str, estimator: object, train: np.ndarray, tmp_path: Path
) -> None:
    predictor = LinearPredictor.from_estimator(estimator)
    assert predictor is not None and not predictor.is_classifier
    path = tmp_path / "model.npz"
    predictor.save(path)
    reloaded = LinearPredictor.load(path)
    matrix = _inputs(train, seed=len(name))
    for fast in (predictor, reloaded):
        np.testing.assert_array_equal(fast.predict(matrix), estimator.predict(matrix))  # type: ignore[attr-defined]
        one = matrix[:1]
        np.testing.assert_array_equal(fast.predict(one), estimator.predict(one))  # type: ignore[attr-defined]


def test_other_estimators_are_left_to_scikit_learn() -> None:
    iris = load_iris()
    x, y = iris.data, iris.target
    assert LinearPredictor.from_estimator(DecisionTreeClassifier().fit(x, y)) is None
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    assert LinearPredictor.from_estimator(pipeline) is None
    assert LinearPredictor.from_estimator(LogisticRegression()) is None  # not fitted

    class Custom(LogisticRegression):
        pass

    assert LinearPredictor.from_estimator(Custom(max_iter=1000).fit(x, y)) is None
    multi_output = LinearRegression().fit(x, np.column_stack([y, y]))
    assert LinearPredictor.from_estimator(multi_output) is None


def test_wrong_width_is_a_value_error() -> None:
    iris = load_iris()
    predictor = LinearPredictor.from_estimator(
        LogisticRegression(max_iter=1000).fit(iris.data, iris.target)
    )
    assert predictor is not None
    with pytest.raises(ValueError, match="features"):
        predictor.predict(np.zeros((1, 3)))


def _near_ties(estimator: LogisticRegression, train: np.ndarray, seed: int) -> np.ndarray:
    """Rows on (or a hair off) a decision boundary: where two scores tie to the last bits."""
    rng = np.random.default_rng(seed)
    coef = np.atleast_2d(estimator.coef_)
    intercept = np.atleast_1d(estimator.intercept_)
    rows = []
    for row in train[rng.choice(len(train), 300)]:
        # Move the row along the line between two classes' weight vectors until they tie.
        a, b = rng.choice(len(coef), 2, replace=False) if len(coef) > 1 else (0, 0)
        direction = coef[a] - coef[b] if len(coef) > 1 else coef[0]
        gap = (row @ direction) + (intercept[a] - intercept[b] if len(coef) > 1 else intercept[0])
        on_boundary = row - gap * direction / (direction @ direction)
        for nudge in (0.0, 1e-15, -1e-15, 1e-12, 1e-9):
            rows.append(on_boundary + nudge * direction)
    return np.array(rows)


@pytest.mark.parametrize("name, estimator, train", _classifiers(), ids=lambda v: str(v)[:20])
def test_one_row_in_python_is_scikit_learns_label_or_nothing(
    name: str, estimator: LogisticRegression, train: np.ndarray
) -> None:
    predictor = LinearPredictor.from_estimator(estimator)
    assert predictor is not None
    ordinary = _inputs(train, seed=len(name))
    ties = _near_ties(estimator, train, seed=len(name))
    answered = {"ordinary": 0, "ties": 0}
    for kind, matrix in (("ordinary", ordinary), ("ties", ties)):
        expected = estimator.predict(matrix).tolist()
        for row, label in zip(matrix.tolist(), expected, strict=True):
            fast = predictor.predict_row(row)
            if fast is not None:
                assert fast == label and type(fast) is type(label), (row, fast, label)
                answered[kind] += 1
    assert answered["ordinary"] > 0.99 * len(ordinary)  # the fast answer is the usual one
    assert answered["ties"] < len(ties)  # and near a tie, predict decides
    assert predictor.predict_row([1.0] * (predictor.n_features_in_ - 1)) is None


def test_scores_past_the_float_range_get_no_one_row_answer() -> None:
    predictor = LinearPredictor(
        "classifier", np.array([[2.0, 2.0], [1.0, -1.0], [0.0, 1.0]]), np.zeros(3), np.arange(3)
    )
    assert predictor.predict_row([1.0, 0.0]) == 0
    assert predictor.predict_row([1e308, 1e308]) is None  # 2e308 is inf
    assert predictor.predict_row([1e308, -1e308]) is None


def test_a_regressor_has_no_one_row_shortcut() -> None:
    diabetes = load_diabetes()
    predictor = LinearPredictor.from_estimator(
        LinearRegression().fit(diabetes.data, diabetes.target)
    )
    assert predictor is not None
    assert predictor.predict_row(diabetes.data[0].tolist()) is None
