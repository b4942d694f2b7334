"""Input validation from an MLflow signature: matrices for good input, every problem for bad."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mlflow.models import ModelSignature
from mlflow.types import ColSpec, Schema

from nimbus.errors import BadRequest, ValidationFailed
from nimbus.schema import Column, InputSchema, _Problems

IRIS = ModelSignature(
    inputs=Schema(
        [
            ColSpec("double", "sepal_length"),
            ColSpec("double", "sepal_width"),
            ColSpec("double", "petal_length"),
            ColSpec("double", "petal_width"),
        ]
    )
)
SETOSA = {"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}
VIRGINICA = {"petal_width": 2.3, "petal_length": 6.1, "sepal_width": 3.0, "sepal_length": 7}


@pytest.fixture
def iris() -> InputSchema:
    return InputSchema.from_signature(IRIS)


def problems_of(error: pytest.ExceptionInfo[ValidationFailed]) -> list[dict[str, object]]:
    return error.value.details


def test_schema_follows_the_signature(iris: InputSchema):
    assert iris.names == ("sepal_length", "sepal_width", "petal_length", "petal_width")
    assert iris.columns[0] == Column("sepal_length", "double", required=True)


def test_schema_round_trips_through_json(iris: InputSchema):
    text = iris.to_json()

    assert InputSchema.from_json(text) == iris
    assert orjson.loads(text)["columns"][0] == {
        "name": "sepal_length",
        "type": "double",
        "required": True,
    }


def test_good_rows_give_a_float_matrix_in_signature_order(iris: InputSchema):
    matrix = iris.rows_to_matrix([SETOSA, VIRGINICA])

    assert matrix.dtype == np.float64
    assert matrix.tolist() == [[5.1, 3.5, 1.4, 0.2], [7.0, 3.0, 6.1, 2.3]]


def test_one_object_gives_a_one_row_matrix(iris: InputSchema):
    assert iris.row_to_matrix(VIRGINICA).tolist() == [[7.0, 3.0, 6.1, 2.3]]


def test_an_empty_list_gives_an_empty_matrix(iris: InputSchema):
    assert iris.rows_to_matrix([]).shape == (0, 4)


def test_every_problem_is_reported_with_its_item(iris: InputSchema):
    rows = [
        SETOSA,
        {"sepal_length": "5.1", "sepal_width": None, "petal_length": 1.4, "colour": "blue"},
        ["not", "an", "object"],
        {**SETOSA, "petal_width": float("inf")},
        {**SETOSA, "sepal_width": True},
    ]

    with pytest.raises(ValidationFailed) as error:
        iris.rows_to_matrix(rows)

    assert problems_of(error) == [
        {"item": 1, "field": "sepal_length", "problem": "must be a number"},
        {"item": 1, "field": "sepal_width", "problem": "must be a number"},
        {"item": 1, "field": "petal_width", "problem": "missing"},
        {"item": 1, "field": "colour", "problem": "unknown field"},
        {"item": 2, "field": None, "problem": "must be an object"},
        {"item": 3, "field": "petal_width", "problem": "must be finite"},
        {"item": 4, "field": "sepal_width", "problem": "must be a number"},
    ]
    assert error.value.status == 422
    assert "7 problems" in error.value.message
    assert "sepal_length, sepal_width, petal_length, petal_width" in error.value.message


def test_errors_never_echo_the_values_sent(iris: InputSchema):
    secret = "4111-1111-1111-1111"
    rows = [{**SETOSA, "sepal_length": secret}, {**SETOSA, "petal_width": 98765 * 10**400}]

    with pytest.raises(ValidationFailed) as error:
        iris.rows_to_matrix(rows)

    body = orjson.dumps(error.value.to_body()).decode()
    assert problems_of(error)[1] == {"item": 1, "field": "petal_width", "problem": "out of range"}
    assert secret not in body
    assert "98765" not in body


def test_booleans_are_not_numbers(iris: InputSchema):
    with pytest.raises(ValidationFailed) as error:
        iris.row_to_matrix({**SETOSA, "petal_width": False})

    assert problems_of(error) == [{"field": "petal_width", "problem": "must be a number"}]


def test_infinity_from_json_is_rejected(iris: InputSchema):
    # Python's json (and so Flask's get_json) reads 1e400 as inf; orjson refuses it outright.
    body = json.loads(
        '{"sepal_length": 1e400, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": -1e400}'
    )

    with pytest.raises(ValidationFailed) as error:
        iris.row_to_matrix(body)

    assert problems_of(error) == [
        {"field": "sepal_length", "problem": "must be finite"},
        {"field": "petal_width", "problem": "must be finite"},
    ]


def test_an_unknown_field_is_a_problem(iris: InputSchema):
    with pytest.raises(ValidationFailed) as error:
        iris.row_to_matrix({**SETOSA, "species": 1})

    assert problems_of(error) == [{"field": "species", "problem": "unknown field"}]


def test_a_single_object_that_is_not_an_object(iris: InputSchema):
    with pytest.raises(ValidationFailed) as error:
        iris.row_to_matrix([5.1, 3.5, 1.4, 0.2])

    assert problems_of(error) == [{"field": None, "problem": "must be an object"}]


def test_a_batch_that_is_not_a_list_is_a_bad_request(iris: InputSchema):
    with pytest.raises(BadRequest):
        iris.rows_to_matrix(SETOSA)


def test_problems_are_capped_and_counted(iris: InputSchema):
    rows: list[dict[str, float]] = [{}] * 30  # four missing fields each

    with pytest.raises(ValidationFailed) as error:
        iris.rows_to_matrix(rows, max_problems=10)

    assert len(problems_of(error)) == 10
    assert problems_of(error)[-1] == {"item": 2, "field": "sepal_width", "problem": "missing"}
    assert "120 problems (the first 10 are listed)" in error.value.message


def test_integer_columns_need_integral_values():
    schema = InputSchema.from_signature(
        ModelSignature(inputs=Schema([ColSpec("long", "rooms"), ColSpec("double", "area")]))
    )

    matrix = schema.rows_to_matrix([{"rooms": 3, "area": 70}, {"rooms": 4.0, "area": 81.5}])
    with pytest.raises(ValidationFailed) as error:
        schema.rows_to_matrix([{"rooms": 3, "area": 70}, {"rooms": 2.5, "area": 1}])

    assert matrix.tolist() == [[3.0, 70.0], [4.0, 81.5]]
    assert problems_of(error) == [{"item": 1, "field": "rooms", "problem": "must be an integer"}]
    assert "rooms (integer)" in error.value.message


def test_optional_columns_may_be_left_out():
    schema = InputSchema.from_signature(
        ModelSignature(
            inputs=Schema([ColSpec("double", "a"), ColSpec("double", "b", required=False)])
        )
    )

    matrix = schema.rows_to_matrix([{"a": 1.0}, {"a": 2.0, "b": 3.0}])

    assert matrix[0, 0] == 1.0 and np.isnan(matrix[0, 1])
    assert matrix[1].tolist() == [2.0, 3.0]


def test_signatures_that_are_not_numeric_columns_are_refused():
    text = ModelSignature(inputs=Schema([ColSpec("string", "name")]))

    with pytest.raises(ValueError, match="numbers"):
        InputSchema.from_signature(text)
    with pytest.raises(ValueError, match="signature"):
        InputSchema.from_signature(None)


def test_a_large_batch_is_validated_in_one_pass(iris: InputSchema):
    rows = [dict(SETOSA) for _ in range(100_000)]
    rows[-1] = {**SETOSA, "petal_width": True}

    assert iris.rows_to_matrix(rows[:-1]).shape == (99_999, 4)
    with pytest.raises(ValidationFailed) as error:
        iris.rows_to_matrix(rows)

    assert problems_of(error) == [
        {"item": 99_999, "field": "petal_width", "problem": "must be a number"}
    ]


_VALUES = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.booleans(),
    st.none(),
    st.text(max_size=3),
)
_NAMES = st.sampled_from([*SETOSA, "species", ""])


@settings(deadline=None)  # a first example pays for imports; this test checks answers
@given(item=st.dictionaries(_NAMES, _VALUES, max_size=6))
def test_the_one_row_fast_path_agrees_with_the_item_by_item_check(item: dict[str, object]):
    iris = InputSchema.from_signature(IRIS)
    problems = _Problems(limit=100)
    slow = iris._item_values(item, None, problems)

    if problems.total:
        with pytest.raises(ValidationFailed):
            iris.row_to_matrix(item)
        assert iris.fast_values(item) is None
    else:
        assert iris.row_to_matrix(item).tolist() == [slow]
