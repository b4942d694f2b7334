"""Large batch jobs: items read from GCS, predictions written to GCS, through the real stack."""

from __future__ import annotations

from collections.abc import Iterator

import orjson
import pytest
import requests
from google.cloud import storage

from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA, IRIS_VIRGINICA
from tests.e2e.test_guide import wait_for_status

pytestmark = pytest.mark.e2e

BUCKET = "nimbus-models"
FIELDS = list(IRIS_SETOSA)


@pytest.fixture
def bucket(stack: Stack) -> Iterator[storage.Bucket]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STORAGE_EMULATOR_HOST", stack.env()["STORAGE_EMULATOR_HOST"])
        yield storage.Client(project="nimbus-local").bucket(BUCKET)


def submit(stack: Stack, **body: object) -> requests.Response:
    return requests.post(f"{stack.gateway_url}/v1/batch", json=body, timeout=30)


def read_results(bucket: storage.Bucket, uri: str) -> list[dict]:
    name = uri.removeprefix(f"gs://{BUCKET}/")
    return [orjson.loads(line) for line in bucket.blob(name).download_as_bytes().splitlines()]


def test_a_jsonl_job_streams_its_predictions_to_gcs(stack: Stack, bucket: storage.Bucket):
    items = [IRIS_SETOSA, IRIS_VIRGINICA] * 12_500
    lines = [orjson.dumps(item) for item in items]
    lines[7] = b"{not json"
    lines[9] = orjson.dumps({**IRIS_SETOSA, "sepal_length": "long"})
    bucket.blob("in/items.jsonl").upload_from_string(b"\n".join(lines) + b"\n")

    job = submit(stack, input_uri=f"gs://{BUCKET}/in/items.jsonl", output_uri=f"gs://{BUCKET}/out/")

    assert job.status_code == 202, job.text
    done = wait_for_status(stack.gateway_url, job.json()["job_id"], {"SUCCESS", "FAILURE"}, 120)
    assert done["status"] == "SUCCESS", done
    assert "result" not in done
    assert done["result_uri"] == f"gs://{BUCKET}/out/{done['job_id']}.jsonl"
    assert done["progress"] == {"done": 25_000, "total": 25_000}
    assert [error["index"] for error in done["errors"]] == [7, 9]
    results = read_results(bucket, done["result_uri"])
    assert [row["index"] for row in results] == list(range(25_000))
    assert [row["prediction"] for row in results if row["index"] not in (7, 9)] == [
        0 if i % 2 == 0 else 2 for i in range(25_000) if i not in (7, 9)
    ]
    assert "not valid JSON" in results[7]["error"] and results[7]["prediction"] is None


def test_a_csv_job_reads_numbers_from_text(stack: Stack, bucket: storage.Bucket):
    rows = [",".join(FIELDS)] + [
        ",".join(str(item[name]) for name in FIELDS) for item in [IRIS_VIRGINICA, IRIS_SETOSA] * 3
    ]
    bucket.blob("in/items.csv").upload_from_string("\n".join(rows) + "\n")

    job = submit(stack, input_uri=f"gs://{BUCKET}/in/items.csv", output_uri=f"gs://{BUCKET}/out/")
    done = wait_for_status(stack.gateway_url, job.json()["job_id"], {"SUCCESS", "FAILURE"}, 60)

    assert done["status"] == "SUCCESS", done
    assert [row["prediction"] for row in read_results(bucket, done["result_uri"])] == [2, 0] * 3


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (
            {"input_uri": f"gs://{BUCKET}/in/missing.jsonl", "output_uri": f"gs://{BUCKET}/o/"},
            "input_uri",
        ),
        ({"input_uri": "s3://elsewhere/x.jsonl", "output_uri": f"gs://{BUCKET}/o/"}, "input_uri"),
        (
            {"input_uri": f"gs://{BUCKET}/in/items.parquet", "output_uri": f"gs://{BUCKET}/o/"},
            "input_uri",
        ),
        (
            {"input_uri": f"gs://{BUCKET}/in/items.csv", "output_uri": f"gs://{BUCKET}/o"},
            "output_uri",
        ),
        ({"input_uri": f"gs://{BUCKET}/in/items.csv"}, "output_uri"),
    ],
)
def test_a_bad_large_job_is_422_naming_the_field(stack: Stack, bucket: storage.Bucket, body, field):
    bucket.blob("in/items.csv").upload_from_string(",".join(FIELDS) + "\n1,2,3,4\n")

    response = submit(stack, **body)

    assert response.status_code == 422, response.text
    assert response.json()["error"]["details"][0]["field"] == field


def test_too_many_inline_items_point_to_input_uri(stack: Stack):
    response = requests.post(
        f"{stack.gateway_url}/v1/batch", json=[IRIS_SETOSA] * 100_001, timeout=60
    )

    assert response.status_code == 413
    assert "input_uri" in response.json()["error"]["message"]
