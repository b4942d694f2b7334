"""API keys, per-key job visibility, the recent-jobs list, the rate limit and request logs,
through the real functions against the stack's Redis and Pub/Sub."""

from __future__ import annotations

import logging
import time
import uuid

import pytest
import redis

from nimbus.auth import key_entry, new_key
from nimbus.jobs import JobStore
from nimbus.ratelimit import RateLimiter
from nimbus.stack import Stack, free_port
from tests.conftest import IRIS_SETOSA
from tests.functions.conftest import MakeClient
from tests.functions.test_predict import assert_error

ALICE, BOB = new_key(), new_key()
KEYS = f"{key_entry('alice', ALICE)},{key_entry('bob', BOB)}"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(function_client: MakeClient):
    """The three functions with API keys for alice and bob configured."""
    return {
        name: function_client(name, NIMBUS_API_KEYS=KEYS)
        for name in ("predict", "batch_submit", "batch_status")
    }


def test_without_a_key_every_endpoint_but_health_is_401(keyed):
    job_path = f"/v1/batch/{uuid.uuid4()}"
    refused = [
        keyed["predict"].post("/v1/predict", json=IRIS_SETOSA),
        keyed["predict"].post("/", json=IRIS_SETOSA),
        keyed["batch_submit"].post("/v1/batch", json=[IRIS_SETOSA]),
        keyed["batch_submit"].delete(job_path),
        keyed["batch_status"].get(job_path),
        keyed["batch_status"].get("/v1/batch"),
        keyed["predict"].get("/nowhere"),  # unknown paths too: nothing is revealed
        keyed["predict"].post("/v1/predict", json=IRIS_SETOSA, headers=bearer("nimbus_wrong")),
        keyed["predict"].post("/v1/predict", json=IRIS_SETOSA, headers={"X-API-Key": ""}),
    ]

    for response in refused:
        assert_error(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    for name, client in keyed.items():
        assert client.get("/").status_code == 200, name
        assert client.get("/ready").status_code == 200, name


def test_a_key_is_accepted_in_either_header(keyed):
    by_bearer = keyed["predict"].post("/v1/predict", json=IRIS_SETOSA, headers=bearer(ALICE))
    by_header = keyed["predict"].post("/v1/predict", json=IRIS_SETOSA, headers={"X-API-Key": BOB})

    assert by_bearer.status_code == 200
    assert by_header.status_code == 200


def test_a_job_is_visible_only_to_the_key_that_submitted_it(keyed, store):
    submitted = keyed["batch_submit"].post("/v1/batch", json=[IRIS_SETOSA], headers=bearer(ALICE))
    job_id = submitted.get_json()["job_id"]
    unknown = str(uuid.uuid4())

    own = keyed["batch_status"].get(f"/v1/batch/{job_id}", headers=bearer(ALICE))
    other = keyed["batch_status"].get(f"/v1/batch/{job_id}", headers=bearer(BOB))
    never = keyed["batch_status"].get(f"/v1/batch/{unknown}", headers=bearer(BOB))
    cancel = keyed["batch_submit"].delete(f"/v1/batch/{job_id}", headers=bearer(BOB))

    assert submitted.status_code == 202
    assert own.status_code == 200 and own.get_json()["job_id"] == job_id
    # Bob learns nothing: the same answer as for an id that never existed.
    other_error = assert_error(other, 404, "job_not_found")
    never_error = assert_error(never, 404, "job_not_found")
    assert other_error["message"].replace(job_id, "ID") == never_error["message"].replace(
        unknown, "ID"
    )
    assert_error(cancel, 404, "job_not_found")
    assert store.fetch(job_id).submitted_by == "alice"
    assert store.fetch(job_id).status.value != "REVOKED"


def test_the_list_shows_only_the_callers_jobs_newest_first(keyed):
    submit, status = keyed["batch_submit"], keyed["batch_status"]
    alices = [
        submit.post("/v1/batch", json=[IRIS_SETOSA], headers=bearer(ALICE)).get_json()["job_id"]
        for _ in range(3)
    ]
    bobs = submit.post("/v1/batch", json=[IRIS_SETOSA], headers=bearer(BOB)).get_json()["job_id"]

    alice_list = status.get("/v1/batch?limit=2", headers=bearer(ALICE)).get_json()["jobs"]
    alice_all = status.get("/v1/batch?limit=100", headers=bearer(ALICE)).get_json()["jobs"]
    bob_list = status.get("/v1/batch", headers={"X-API-Key": BOB}).get_json()["jobs"]

    assert [job["job_id"] for job in alice_list] == alices[::-1][:2]
    assert set(alices) <= {job["job_id"] for job in alice_all}
    assert bobs not in {job["job_id"] for job in alice_all}
    assert bobs in {job["job_id"] for job in bob_list}
    assert not set(alices) & {job["job_id"] for job in bob_list}
    first = alice_list[0]
    assert {"job_id", "status", "progress", "items", "created_at"} <= set(first)
    assert "result" not in first


def test_the_list_without_keys_and_its_bad_arguments(function_client: MakeClient, store):
    status = function_client("batch_status")
    job = store.create([IRIS_SETOSA])

    jobs = status.get("/v1/batch").get_json()["jobs"]

    assert job.id in [listed["job_id"] for listed in jobs]
    assert jobs == sorted(jobs, key=lambda listed: listed["created_at"], reverse=True)
    for query in ["limit=0", "limit=101", "limit=x", "limit=" + "9" * 5000]:
        assert_error(status.get(f"/v1/batch?{query}"), 400, "bad_request")
    assert_error(status.post("/v1/batch", json=[]), 405, "method_not_allowed")


def test_expired_jobs_drop_out_of_the_list(store):
    owner = f"expiry-{uuid.uuid4().hex[:8]}"
    short_lived = JobStore(store.connection, finished_ttl=1)
    kept = short_lived.create([IRIS_SETOSA], submitted_by=owner)
    gone = short_lived.create([IRIS_SETOSA], submitted_by=owner)
    short_lived.fail(gone.id, epoch=None, error={"code": "x", "message": "x"})
    deadline = time.monotonic() + 10
    while store.fetch(gone.id) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.1)

    listed = store.recent(owner, limit=10)

    assert [job.id for job in listed] == [kept.id]
    assert store.connection.zcard(f"nimbus:recent:{owner}") == 1


def test_the_recent_index_is_bounded(store):
    from nimbus.job_scripts import RECENT_JOBS_KEPT

    owner = f"bound-{uuid.uuid4().hex[:8]}"
    pipe = store.connection.pipeline()
    for index in range(RECENT_JOBS_KEPT):
        pipe.zadd(f"nimbus:recent:{owner}", {f"old-{index}": index})
    pipe.execute()

    newest = store.create([IRIS_SETOSA], submitted_by=owner)

    assert store.connection.zcard(f"nimbus:recent:{owner}") == RECENT_JOBS_KEPT
    assert [job.id for job in store.recent(owner, limit=1)] == [newest.id]


def test_the_rate_limit_answers_429_with_retry_after(function_client: MakeClient):
    client = function_client("predict", NIMBUS_RATE_LIMIT="3")
    caller = {"X-Forwarded-For": f"10.9.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}"}

    # A fixed one-minute window: a test that straddles two windows may need up to twice the
    # limit before it is refused, never more.
    statuses = []
    for _ in range(7):
        response = client.post("/v1/predict", json=IRIS_SETOSA, headers=caller)
        statuses.append(response.status_code)
        if response.status_code == 429:
            break

    assert statuses[-1] == 429 and statuses.count(200) >= 3, statuses
    error = assert_error(response, 429, "rate_limited")
    assert 1 <= int(response.headers["Retry-After"]) <= 60
    assert error["details"]["retry_after"] == int(response.headers["Retry-After"])
    assert client.get("/").status_code == 200  # health is never limited
    other = {"X-Forwarded-For": "10.255.0.1"}
    assert client.post("/v1/predict", json=IRIS_SETOSA, headers=other).status_code in {200, 429}


def test_the_rate_limit_counts_per_key(function_client: MakeClient):
    limiter_key = f"nimbus_{uuid.uuid4().hex}"  # a fresh key: a count of its own
    client = function_client(
        "predict",
        NIMBUS_API_KEYS=f"{KEYS},{key_entry('carol', limiter_key)}",
        NIMBUS_RATE_LIMIT="2",
    )

    statuses = [
        client.post("/v1/predict", json=IRIS_SETOSA, headers=bearer(limiter_key)).status_code
        for _ in range(5)
    ]

    assert 429 in statuses and statuses.index(429) >= 2, statuses


def test_the_rate_limit_fails_open_when_redis_is_down(function_client: MakeClient, caplog):
    client = function_client(
        "predict", NIMBUS_RATE_LIMIT="1", NIMBUS_REDIS_URL=f"redis://127.0.0.1:{free_port()}/0"
    )

    listen(caplog)

    statuses = [client.post("/v1/predict", json=IRIS_SETOSA).status_code for _ in range(4)]

    assert statuses == [200] * 4
    warnings = [r for r in caplog.records if "rate limit not enforced" in r.getMessage()]
    assert len(warnings) == 1  # logged once, then not retried for a while


def test_the_limiter_alone(stack: Stack):
    connection = redis.Redis.from_url(stack.redis_url)
    limiter = RateLimiter(connection, per_minute=2, prefix=f"test:{uuid.uuid4().hex}:")

    answers = [limiter.retry_after("someone") for _ in range(6)]

    refused = [answer for answer in answers if answer is not None]
    assert answers[:2] == [None, None] or answers[2:4] == [None, None]
    assert refused and all(1 <= seconds <= 60 for seconds in refused)
    assert limiter.retry_after("someone-else") is None


TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"


def listen(caplog) -> None:
    """Keep caplog's handler on the root logger: a function's first import configures
    logging, which replaces the root's handlers."""
    caplog.set_level(logging.INFO)
    if caplog.handler not in logging.getLogger().handlers:
        logging.getLogger().addHandler(caplog.handler)


def request_lines(caplog) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == "nimbus.request"]


def test_one_log_line_per_request_with_key_job_and_trace(keyed, caplog):
    listen(caplog)
    traceparent = f"00-{TRACE}-00f067aa0ba902b7-01"

    submitted = keyed["batch_submit"].post(
        "/v1/batch",
        json=[IRIS_SETOSA],
        headers={**bearer(ALICE), "traceparent": traceparent},
    )
    job_id = submitted.get_json()["job_id"]
    keyed["batch_status"].get(
        f"/v1/batch/{job_id}",
        headers={**bearer(ALICE), "X-Cloud-Trace-Context": f"{TRACE}/1;o=1"},
    )
    keyed["predict"].post("/v1/predict", json=IRIS_SETOSA)

    submit_line, status_line, refused_line = request_lines(caplog)[-3:]
    assert (submit_line.method, submit_line.path, submit_line.status) == ("POST", "/v1/batch", 202)
    assert submit_line.key == "alice" and submit_line.job_id == job_id
    assert isinstance(submit_line.latency_ms, float)
    assert (status_line.status, status_line.job_id) == (200, job_id)
    assert (refused_line.status, refused_line.key) == (401, None)
    from nimbus.logs import CloudLoggingFormatter

    formatted = CloudLoggingFormatter().format(submit_line)
    assert '"severity":"INFO"' in formatted and '"latency_ms"' in formatted
    trace = f"projects/nimbus-local/traces/{TRACE}"
    assert getattr(submit_line, "logging.googleapis.com/trace") == trace
    assert getattr(status_line, "logging.googleapis.com/trace") == trace


def test_the_trace_travels_in_the_pubsub_message(keyed, stack: Stack):
    from google.cloud import pubsub_v1

    subscriber = pubsub_v1.SubscriberClient()
    subscription = f"projects/{stack.settings.project}/subscriptions/trace-{uuid.uuid4().hex}"
    subscriber.create_subscription(name=subscription, topic=stack.settings.topic_path)
    try:
        traceparent = f"00-{TRACE}-00f067aa0ba902b7-01"
        job_id = (
            keyed["batch_submit"]
            .post(
                "/v1/batch", json=[IRIS_SETOSA], headers={**bearer(BOB), "traceparent": traceparent}
            )
            .get_json()["job_id"]
        )

        found = {}
        deadline = time.monotonic() + 30
        while job_id not in found:
            assert time.monotonic() < deadline, "the job's message never arrived"
            pulled = subscriber.pull(subscription=subscription, max_messages=50, timeout=10)
            for message in pulled.received_messages:
                found[message.message.attributes["job_id"]] = dict(message.message.attributes)

        assert found[job_id]["traceparent"] == traceparent
    finally:
        subscriber.delete_subscription(subscription=subscription)
        subscriber.close()


def test_the_gateway_routes_the_list_to_batch_status(stack: Stack):
    import json
    import urllib.request

    with urllib.request.urlopen(f"{stack.gateway_url}/v1/batch?limit=5", timeout=30) as response:
        body = json.loads(response.read())

    assert isinstance(body["jobs"], list) and len(body["jobs"]) <= 5
