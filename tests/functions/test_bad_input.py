"""The bad-input battery: whatever a caller sends, each function answers a 4xx in the one error
shape (never a 500 or a traceback), and still serves the next request.

Most cases go through functions-framework's test client; the ones that depend on the HTTP
server in front (gunicorn, as `functions-framework` runs it) go over a socket to the stack's own
function processes.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
import uuid

import pytest
from flask.testing import FlaskClient

from nimbus.stack import Stack
from tests.conftest import IRIS_SETOSA
from tests.functions.conftest import MakeClient
from tests.functions.test_predict import assert_error

ROW = b'{"sepal_length": 5.1, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}'

# (name, body, content type, status, field named in details or None)
BAD_BODIES = [
    ("not json", b"{not json", "application/json", 400, None),
    ("html", b"<html><body>hi</body></html>", "application/json", 400, None),
    ("empty", b"", "application/json", 400, None),
    ("whitespace", b"  \n ", "application/json", 400, None),
    ("truncated", ROW[:-10], "application/json", 400, None),
    ("trailing garbage", ROW + b" {}", "application/json", 400, None),
    ("NaN", b'{"sepal_length": NaN}', "application/json", 400, None),
    ("Infinity", b'{"sepal_length": Infinity}', "application/json", 400, None),
    ("-Infinity", b'[{"sepal_length": -Infinity}]', "application/json", 400, None),
    (
        "1e400",
        b'{"sepal_length": 1e400, "sepal_width": 1}',
        "application/json",
        400,
        "sepal_length",
    ),
    ("-1e400", b'{"sepal_width": -1e400}', "application/json", 400, "sepal_width"),
    (
        "5000 digits",
        b'{"petal_width": ' + b"9" * 5000 + b"}",
        "application/json",
        400,
        "petal_width",
    ),
    (
        "5000 negative digits",
        b'[{"petal_width": -' + b"7" * 5000 + b"}]",
        "application/json",
        400,
        "petal_width",
    ),
    ("100000 deep arrays", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, None),
    (
        "100000 deep objects",
        b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
        "application/json",
        400,
        None,
    ),
    ("100000 open arrays", b"[" * 100_000, "application/json", 400, None),
    ("40 deep", b"[" * 40 + b"]" * 40, "application/json", 400, None),
    (
        "duplicate key",
        b'{"sepal_length": 5.1, "sepal_length": 9, "sepal_width": 3.5, "petal_length": 1.4, "petal_width": 0.2}',
        "application/json",
        400,
        "sepal_length",
    ),
    (
        "duplicate key in a row",
        b"[" + ROW + b', {"petal_width": 1, "petal_width": 2}]',
        "application/json",
        400,
        "petal_width",
    ),
    (
        "duplicate key beside a colon string",
        b'{"note": "a:b", "note": 1}',
        "application/json",
        400,
        "note",
    ),
    ("bad utf-8", b'{"sepal_length": "\xff\xfe"}', "application/json", 400, None),
    ("lone surrogate escape", b'{"sepal_length": "\\ud800"}', "application/json", 400, None),
    ("utf-16", '{"sepal_length": 5.1}'.encode("utf-16"), "application/json", 400, None),
    ("a string", b'"petals"', "application/json", 400, None),
    ("a number", b"42", "application/json", 400, None),
    ("null", b"null", "application/json", 400, None),
    ("true", b"true", "application/json", 400, None),
    ("form", b"sepal_length=5.1", "application/x-www-form-urlencoded", 415, None),
    ("text", ROW, "text/plain", 415, None),
    ("multipart", b"--x\r\n\r\n--x--", "multipart/form-data; boundary=x", 415, None),
    ("xml", b"<a/>", "application/xml", 415, None),
]

# (name, item, field named) for items that are JSON but not the model's inputs: 422.
BAD_ITEMS = [
    ("string value", {**IRIS_SETOSA, "sepal_length": "5.1"}, "sepal_length"),
    ("bool value", {**IRIS_SETOSA, "sepal_width": True}, "sepal_width"),
    ("null value", {**IRIS_SETOSA, "petal_length": None}, "petal_length"),
    ("list value", {**IRIS_SETOSA, "petal_width": [0.2]}, "petal_width"),
    ("object value", {**IRIS_SETOSA, "petal_width": {"v": 0.2}}, "petal_width"),
    ("missing field", {k: v for k, v in IRIS_SETOSA.items() if k != "sepal_width"}, "sepal_width"),
    ("extra field", {**IRIS_SETOSA, "colour": "blue"}, "colour"),
    ("long extra field", {**IRIS_SETOSA, "x" * 10_000: 1}, "x" * 64),
    ("empty object", {}, "sepal_length"),
]


def assert_still_serves(name: str, client: FlaskClient) -> None:
    """The function answers a good request right after a bad one."""
    if name == "predict":
        response = client.post("/v1/predict", json=IRIS_SETOSA)
        assert response.status_code == 200, response.get_data(as_text=True)
    elif name == "batch_submit":
        response = client.post("/v1/batch", json=[IRIS_SETOSA])
        assert response.status_code == 202, response.get_data(as_text=True)
    else:
        assert client.get("/").status_code == 200


@pytest.fixture(scope="module")
def clients(stack_env: dict[str, str]) -> dict[str, FlaskClient]:
    from tests.functions.conftest import close_registries, load_function

    with pytest.MonkeyPatch.context() as patch:
        for key, value in stack_env.items():
            patch.setenv(key, value)
        loaded = {name: load_function(name) for name in ("predict", "batch_submit", "batch_status")}
        try:
            yield {name: client for name, (client, _) in loaded.items()}
        finally:
            close_registries([clients for _, clients in loaded.values()])


@pytest.mark.parametrize(
    ("function", "path"), [("predict", "/v1/predict"), ("batch_submit", "/v1/batch")]
)
@pytest.mark.parametrize(
    ("case", "body", "content_type", "status", "field"), BAD_BODIES, ids=[c[0] for c in BAD_BODIES]
)
def test_bad_bodies(clients, function, path, case, body, content_type, status, field):
    client = clients[function]

    response = client.post(path, data=body, content_type=content_type)

    error = assert_error(response, status)
    if field is not None:
        assert {problem["field"] for problem in error.get("details") or []} == {field}, error
        assert field in error["message"]
    assert_still_serves(function, client)


@pytest.mark.parametrize(("case", "item", "field"), BAD_ITEMS, ids=[c[0] for c in BAD_ITEMS])
def test_items_that_are_not_the_models_inputs(clients, case, item, field):
    for function, path, body in [
        ("predict", "/v1/predict", item),
        ("predict", "/v1/predict", [IRIS_SETOSA, item]),
        ("batch_submit", "/v1/batch", [IRIS_SETOSA, item]),
    ]:
        error = assert_error(clients[function].post(path, json=body), 422, "validation_failed")

        assert field in {problem["field"] for problem in error["details"]}
        assert_still_serves(function, clients[function])


def test_empty_and_oversized_batches(function_client: MakeClient):
    client = function_client("batch_submit", NIMBUS_MAX_BATCH_ITEMS="5")
    predict = function_client("predict", NIMBUS_MAX_PREDICT_ROWS="5")

    assert_error(client.post("/v1/batch", json=[]), 422, "empty_batch")
    assert_error(client.post("/v1/batch", json=[IRIS_SETOSA] * 6), 413, "payload_too_large")
    assert_error(predict.post("/v1/predict", json=[]), 422, "empty_input")
    assert_error(predict.post("/v1/predict", json=[IRIS_SETOSA] * 6), 413, "payload_too_large")
    assert_still_serves("batch_submit", client)
    assert_still_serves("predict", predict)


def test_a_body_over_the_limit_is_413_for_every_route(function_client: MakeClient):
    for name, path in [
        ("predict", "/v1/predict"),
        ("batch_submit", "/v1/batch"),
        ("batch_status", "/"),
    ]:
        client = function_client(name, NIMBUS_MAX_BODY_BYTES="1000")

        response = client.post(
            path, data=b"[" + b"1," * 1000 + b"1]", content_type="application/json"
        )

        assert_error(response, 413, "payload_too_large")


def test_a_large_job_with_extra_or_bad_fields(clients):
    client = clients["batch_submit"]
    for body in [
        {"input_uri": "gs://b/items.jsonl", "output_uri": "gs://b/out/", "colour": 1},
        {"input_uri": 5, "output_uri": "gs://b/out/"},
        {"input_uri": "http://example.com/x", "output_uri": "gs://b/out/"},
        {"input_uri": "gs://b/items.jsonl"},
    ]:
        response = client.post("/v1/batch", json=body)

        assert 400 <= response.status_code < 500, (body, response.get_data(as_text=True))
        assert_error(response, response.status_code)
    assert_still_serves("batch_submit", client)


@pytest.mark.parametrize(
    "job_id",
    [
        str(uuid.uuid4()),
        str(uuid.uuid4()).upper(),
        "not-a-uuid",
        "0" * 36,
        "x" * 100_000,
        "%00",
        "..%2F..%2Fetc%2Fpasswd",
        "ĵob-ïd-ü",
        "12345678-1234-1234-1234-1234567890123",
        "{job_id}",
    ],
    ids=lambda value: value[:16],
)
def test_unknown_and_malformed_job_ids(clients, job_id):
    for response in [
        clients["batch_status"].get(f"/v1/batch/{job_id}"),
        clients["batch_status"].get(f"/{job_id}"),
        clients["batch_submit"].delete(f"/v1/batch/{job_id}"),
    ]:
        error = assert_error(response, 404)

        assert len(error["message"]) < 400  # a long id is not echoed back whole
    assert_still_serves("batch_status", clients["batch_status"])


@pytest.mark.parametrize("name", ["predict", "batch_submit", "batch_status"])
def test_huge_urls_and_headers_through_the_framework(clients, name):
    client = clients[name]

    long_path = client.get("/v1/batch/" + "a" * 200_000)
    long_query = client.get("/?" + "q=" + "b" * 200_000)
    big_header = client.get("/", headers={"X-Padding": "c" * 200_000})
    many_headers = client.get("/", headers={f"X-H{i}": "d" for i in range(2000)})

    assert 400 <= long_path.status_code < 500
    assert_error(long_path, long_path.status_code)
    assert long_query.status_code == 200
    assert big_header.status_code == 200
    assert many_headers.status_code == 200
    assert_still_serves(name, client)


def raw_request(port: int, head: bytes, body: bytes = b"", *, timeout: float = 10) -> bytes:
    """Send bytes to a function's HTTP server and read its answer until it closes or stalls."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as connection:
        # Send from a thread: the server may answer (and stop reading) before the body ends.
        sender = threading.Thread(target=_send_quietly, args=(connection, head + body))
        sender.start()
        received = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = connection.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            received += chunk
            if b"\r\n\r\n" in received:
                header, _, rest = received.partition(b"\r\n\r\n")
                length = _content_length(header)
                if length is not None and len(rest) >= length:
                    break
                if length is None and rest.endswith(b"0\r\n\r\n"):
                    break
        # The server may have closed its end already (it answered before the body ended).
        with contextlib.suppress(OSError):
            connection.shutdown(socket.SHUT_RDWR)
        sender.join(timeout)
        return received


def _send_quietly(connection: socket.socket, data: bytes) -> None:
    with contextlib.suppress(OSError):  # the server closed the connection after answering
        connection.sendall(data)


def _content_length(header: bytes) -> int | None:
    for line in header.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return int(value)
    return None


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def test_a_40_mb_body_is_refused_before_it_is_sent(stack: Stack):
    # Content-Length says 40 MB; only the first kilobyte is ever sent. A 413 arrives anyway
    # (waiting for the rest would mean no answer at all), so the body was never read.
    port = stack.settings.predict_port
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 41943040\r\nConnection: close\r\n\r\n"
    )
    answer = raw_request(port, head, b"[" * 1024, timeout=30)

    assert status_of(answer) == 413, answer[:300]
    assert b'"payload_too_large"' in answer
    assert (
        status_of(raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        == 200
    )


def test_a_chunked_body_over_the_limit_is_cut_off(stack: Stack):
    # No Content-Length: the function stops reading at NIMBUS_MAX_BODY_BYTES (10 MB).
    port = stack.settings.predict_port
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    chunk = b"1," * 500_000
    body = b"".join(b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(12)) + b"0\r\n\r\n"

    answer = raw_request(port, head, b"1\r\n[\r\n" + body, timeout=30)

    assert status_of(answer) == 413, answer[:300]
    assert (
        status_of(raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        == 200
    )


def test_huge_urls_and_headers_over_a_socket(stack: Stack):
    """What the HTTP server in front answers: gunicorn (functions-framework sets no limit on
    the request line) passes a 100 kB URL through to the function, which answers in the error
    shape; a header over gunicorn's 8190-byte limit, or over 100 headers, gets gunicorn's own
    431, not JSON."""
    port = stack.settings.batch_status_port

    long_url = raw_request(
        port,
        b"GET /v1/batch/" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    big_header = raw_request(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Padding: "
        + b"c" * 20_000
        + b"\r\nConnection: close\r\n\r\n",
    )

    many_headers = raw_request(
        port,
        b"GET / HTTP/1.1\r\nHost: x\r\n"
        + b"".join(b"X-H%d: v\r\n" % i for i in range(150))
        + b"Connection: close\r\n\r\n",
    )

    assert status_of(long_url) == 404 and b'"job_not_found"' in long_url
    assert status_of(big_header) == 431
    assert status_of(many_headers) == 431
    assert (
        status_of(raw_request(port, b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"))
        == 200
    )


@pytest.mark.parametrize("path", ["/robots.txt", "/favicon.ico"])
def test_the_frameworks_own_routes_answer_in_the_error_shape(clients, path):
    for client in clients.values():
        assert_error(client.get(path), 404, "not_found")
