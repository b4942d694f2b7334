"""Linear models predicted with numpy alone: the same arithmetic as scikit-learn, without it.

A fitted `LogisticRegression`, `LinearRegression`, `Ridge`, `Lasso` or `ElasticNet` predicts
with one matrix product: `X @ coef_.T + intercept_`, then an argmax over the classes (or a
sign, for two) for a classifier. scikit-learn wraps that product in input validation
(finiteness, dtype, shape, parameter checks) that costs about ten times the product itself for
one row, and importing scikit-learn costs seconds at a cold start. Nimbus validates every input
against the model's signature before it gets here (`nimbus.schema`: a finite float64 matrix
with the signature's columns), so this class does the product, argmax and probabilities the
way scikit-learn does them, with the same numpy calls, and gives identical results
(tests/unit/test_linear.py compares them on many inputs).

`LinearPredictor.from_estimator` answers None for any other estimator (pipelines, trees, a
subclass, a multi-output regressor): those are served by scikit-learn itself.
`save`/`load` keep the coefficients in a `.npz` file (`allow_pickle=False`: numbers and, for
string labels, fixed-width strings; nothing is unpickled), so a process whose cache holds one
loads a model without importing scikit-learn, skops or MLflow.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

CLASSIFIER = "classifier"
REGRESSOR = "regressor"

# Exact classes (not subclasses: one could override predict), by module and name, so that
# checking an estimator needs no import of scikit-learn.
_CLASSIFIERS = frozenset({("sklearn.linear_model._logistic", "LogisticRegression")})
_REGRESSORS = frozenset(
    {
        ("sklearn.linear_model._base", "LinearRegression"),
        ("sklearn.linear_model._ridge", "Ridge"),
        ("sklearn.linear_model._coordinate_descent", "Lasso"),
        ("sklearn.linear_model._coordinate_descent", "ElasticNet"),
    }
)


class LinearPredictor:
    """`predict` (and for a classifier `predict_proba` and `classes_`) of a linear model."""

    def __init__(
        self,
        kind: str,
        coef: np.ndarray,
        intercept: np.ndarray,
        classes: np.ndarray | None = None,
    ) -> None:
        if kind not in {CLASSIFIER, REGRESSOR}:
            raise ValueError(f"kind must be {CLASSIFIER!r} or {REGRESSOR!r}, got {kind!r}")
        if kind == CLASSIFIER and (classes is None or coef.ndim != 2):
            raise ValueError("a linear classifier needs classes and a 2-d coef")
        if kind == REGRESSOR and coef.ndim != 1:
            raise ValueError("only single-output linear regressors are supported")
        self.kind = kind
        self.coef_ = coef
        # What scikit-learn multiplies by: coef_.T for a 2-d coef_, coef_ itself for 1-d.
        self._coef_t = coef.T if coef.ndim == 2 else coef
        self.intercept_ = intercept
        self.n_features_in_ = int(coef.shape[-1])
        if classes is not None:
            self.classes_ = classes
        # The same numbers as Python floats, for `predict_row`.
        self._rows: list[list[float]] = (
            coef.reshape(-1, self.n_features_in_).astype(np.float64).tolist()
            if kind == CLASSIFIER
            else []
        )
        self._offsets: list[float] = (
            np.broadcast_to(np.asarray(intercept, dtype=np.float64), (len(self._rows),)).tolist()
            if kind == CLASSIFIER
            else []
        )
        self._labels: list[Any] = classes.tolist() if classes is not None else []
        # A sum of n products computed in any order is within n·u·Σ|terms| of the exact sum
        # (u = 2**-53; Higham, Accuracy and Stability of Numerical Algorithms, §3.1). Twice
        # that, for the two sums compared, with room to spare.
        self._rounding = 8 * (self.n_features_in_ + 2) * 2.0**-53

    @property
    def is_classifier(self) -> bool:
        return self.kind == CLASSIFIER

    @classmethod
    def from_estimator(cls, estimator: Any) -> LinearPredictor | None:
        """The predictor for a fitted estimator of a supported class, else None."""
        key = (type(estimator).__module__, type(estimator).__name__)
        coef = getattr(estimator, "coef_", None)
        intercept = getattr(estimator, "intercept_", None)
        if not isinstance(coef, np.ndarray) or intercept is None:
            return None
        if getattr(estimator, "feature_names_in_", None) is not None:
            return None  # fitted on a frame: scikit-learn checks names we would not
        intercept = np.asarray(intercept)
        if key in _CLASSIFIERS:
            classes = getattr(estimator, "classes_", None)
            if not isinstance(classes, np.ndarray) or classes.dtype == object or coef.ndim != 2:
                return None
            return cls(CLASSIFIER, coef, intercept, classes)
        if key in _REGRESSORS and coef.ndim == 1:
            return cls(REGRESSOR, coef, intercept)
        return None

    def decision_function(self, matrix: np.ndarray) -> np.ndarray:
        """`matrix @ coef_.T + intercept_`, as scikit-learn computes it for dense input."""
        if matrix.ndim != 2 or matrix.shape[1] != self.n_features_in_:
            raise ValueError(
                f"X has {matrix.shape[-1]} features, but this model is expecting "
                f"{self.n_features_in_} features as input."
            )
        scores = matrix @ self._coef_t + self.intercept_
        if scores.ndim > 1 and scores.shape[1] == 1:
            return scores.reshape(-1)
        return scores

    def predict(self, matrix: np.ndarray) -> np.ndarray:
        scores = self.decision_function(matrix)
        if self.kind == REGRESSOR:
            return scores
        # Two classes: one score, positive for classes_[1]; more: the highest score.
        indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
        return self.classes_.take(indices, axis=0)

    def predict_row(self, values: list[float]) -> Any | None:
        """A classifier's label for one row, computed with Python floats when the answer is
        certain, else None (then `predict` decides).

        For one row, numpy's call overhead is most of the work. The scores here are summed in
        another order than the BLAS product `predict` uses, so they may differ from its scores
        in the last bits; the label is returned only when the winning score leads every other
        by more than both sums' worst rounding error, which makes it the label `predict` (and
        scikit-learn) gives. A near tie, or a score that overflows, is left to `predict`.
        """
        if self.kind != CLASSIFIER or len(values) != self.n_features_in_:
            return None
        scores = []
        bounds = []
        for weights, offset in zip(self._rows, self._offsets, strict=True):
            score = offset
            size = abs(offset)
            for value, weight in zip(values, weights, strict=True):
                term = value * weight
                score += term
                size += abs(term)
            scores.append(score)
            bounds.append(size * self._rounding)
        # A product that overflows makes its bound inf (and a score may be nan): no finite
        # lead exceeds it, so every comparison below declines.
        if len(scores) == 1:  # two classes: the sign of one score picks classes_[1] or [0]
            score, bound = scores[0], bounds[0]
            if not abs(score) > bound:
                return None
            return self._labels[1] if score > 0 else self._labels[0]
        best = max(range(len(scores)), key=scores.__getitem__)
        top, top_bound = scores[best], bounds[best]
        for index, score in enumerate(scores):
            if index != best and not top - score > top_bound + bounds[index]:
                return None
        return self._labels[best]

    def predict_proba(self, matrix: np.ndarray) -> np.ndarray:
        if self.kind != CLASSIFIER:
            raise AttributeError("predict_proba: not a classifier")
        scores = self.decision_function(matrix)
        if self.classes_.size <= 2:
            # scikit-learn's own: scipy's expit, [1 - p, p]. Imported here, for two classes.
            from scipy.special import expit

            probability = expit(scores, out=scores)
            return np.stack([1 - probability, probability], axis=1)
        # softmax as sklearn.utils.extmath.softmax computes it, in place.
        scores -= scores.max(axis=1).reshape((-1, 1))
        np.exp(scores, out=scores)
        scores /= scores.sum(axis=1).reshape((-1, 1))
        return scores

    def save(self, path: Path) -> None:
        """The coefficients as an uncompressed .npz file (no pickled objects)."""
        classes = self.classes_ if self.kind == CLASSIFIER else np.array([])
        with path.open("wb") as out:
            np.savez(
                out,
                kind=np.array(self.kind),
                coef=self.coef_,
                intercept=self.intercept_,
                classes=classes,
            )

    @classmethod
    def load(cls, path: Path) -> LinearPredictor:
        with np.load(path, allow_pickle=False) as saved:
            kind = str(saved["kind"])
            classes = saved["classes"] if kind == CLASSIFIER else None
            return cls(kind, saved["coef"], saved["intercept"], classes)
