"""Predicting a job's items chunk by chunk, so a bad item fails alone and progress shows."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from nimbus.errors import ValidationFailed
from nimbus.schema import InputSchema
from nimbus.storage import UnreadableItem

logger = logging.getLogger(__name__)

# An item's error message is capped: it is stored once per failed item.
_MAX_MESSAGE = 300
# What an estimator raises for an input it rejects. Anything else (MemoryError, OSError, ...)
# says nothing about the item: it fails the attempt, which is retried.
ITEM_ERRORS = (ValidationFailed, ValueError, TypeError, ArithmeticError)


class Model(Protocol):
    """What a chunk needs of a loaded model (nimbus.registry.LoadedModel)."""

    @property
    def schema(self) -> InputSchema: ...

    def predict(self, matrix: np.ndarray) -> list[Any]: ...


@dataclass
class ChunkResult:
    """Answers for one chunk, in item order; failed items carry an error instead."""

    answers: list[dict[str, Any]] = field(default_factory=list)
    errors: list[dict[str, Any]] = field(default_factory=list)  # {"index", "message"}


def chunks(items: Sequence[Any], size: int) -> Iterator[tuple[int, Sequence[Any]]]:
    """(offset, items) slices of at most `size` items."""
    for offset in range(0, len(items), size):
        yield offset, items[offset : offset + size]


def predict_chunk(model: Model, items: Sequence[Any], *, offset: int) -> ChunkResult:
    """Predict all items in one vectorised call; if that fails, find the items at fault.

    The fast path is one validation pass and one estimator call. Only when either raises does
    it go item by item, so one item the model rejects costs the others nothing. Errors that
    are not about an item (ITEM_ERRORS) propagate: the attempt fails and is retried.
    """
    try:
        predictions = model.predict(model.schema.rows_to_matrix(list(items)))
    except Exception as error:
        logger.info("chunk at %d: %s; isolating the items at fault", offset, _message(error))
    else:
        return ChunkResult(answers=[{"prediction": value} for value in predictions])
    result = ChunkResult()
    for index, item in enumerate(items, start=offset):
        if isinstance(item, UnreadableItem):
            result.answers.append({"prediction": None, "error": item.message})
            result.errors.append({"index": index, "message": item.message})
            continue
        try:
            (value,) = model.predict(model.schema.row_to_matrix(item))
        except ITEM_ERRORS as error:
            message = _message(error)
            result.answers.append({"prediction": None, "error": message})
            result.errors.append({"index": index, "message": message})
        else:
            result.answers.append({"prediction": value})
    return result


def _message(error: Exception) -> str:
    if isinstance(error, ValidationFailed):
        problems = error.details if isinstance(error.details, list) else []
        text = "; ".join(f"{p.get('field')}: {p.get('problem')}" for p in problems) or error.message
    else:
        text = f"{type(error).__name__}: {error}"
    return text[:_MAX_MESSAGE]
