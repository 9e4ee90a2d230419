"""classifier/asgi.py: the /score requests it answers get exactly the view's answer; it hands the rest to
Flask, unchanged. Driven in-process through the ASGI interface (the server's side is tests/app/test_gunicorn.py
and test_zero_downtime.py, against real gunicorn)."""

from __future__ import annotations

import asyncio
import io
import json
import re
from typing import Any

import pytest
from hypothesis import given
from prometheus_client import REGISTRY
from test_fuzz import FUZZ, bodies, content_types

from classifier import asgi, metrics

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # as in test_fuzz.py
TIMING = re.compile(rb'"Computed in [0-9.]+ ms"')  # the classic answer's own timing differs between two runs


class Answer:
    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body


def call(app: Any, body: bytes, headers: dict[str, str], chunks: int = 1, method: str = "POST",
         path: str = "/score") -> Answer:  # fmt: skip
    """One request through the ASGI interface, as uvicorn delivers it: the body in `chunks` messages (de-chunked
    if it was sent chunked), then "http.disconnect" once the answer is out."""
    if "Transfer-Encoding" not in headers and (body or method == "POST"):
        headers = {"Content-Length": str(len(body)), **headers}  # as a client sends it
    size = -(-len(body) // chunks) or 1
    parts = [body[i : i + size] for i in range(0, len(body), size)] or [b""]
    messages = [{"type": "http.request", "body": part, "more_body": i < len(parts) - 1} for i, part in enumerate(parts)]
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
        "headers": [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers.items()],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    data = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return Answer(start["status"], [(k.decode(), v.decode()) for k, v in start["headers"]], data)


@pytest.fixture
def front(model_package):
    return asgi.create_asgi_app({"TESTING": True, "MODEL_DIR": str(model_package)})


@pytest.fixture
def flask_only(model_package):
    """The Flask app alone: every request through Flask and the blueprint's view."""
    return asgi.create_asgi_app({"TESTING": True, "MODEL_DIR": str(model_package)}).flask.test_client()


def same_answer(fast: Answer, plain) -> None:
    assert fast.status == plain.status_code
    assert [h for h in fast.headers if h[0] != "content-length"] == [
        (k.lower(), v) for k, v in plain.headers.to_wsgi_list() if k != "Content-Length"
    ]
    assert dict(fast.headers)["content-length"] == str(len(fast.body))
    assert TIMING.sub(b"T", fast.body) == TIMING.sub(b"T", plain.get_data())


def scored_200() -> float:
    return REGISTRY.get_sample_value(
        "classifier_http_requests_total", {"route": "/score", "method": "POST", "status": "200"}
    ) or 0.0


def test_successful_scores_do_not_reach_flask_and_are_counted_as_the_view_counts_them(front, digit_b64, heldout):
    def view_not_called():
        raise AssertionError("answered by the view")

    front.flask.view_functions["classifier.score"] = view_not_called
    images = [digit_b64(pixels) for pixels in heldout[0][:2]]
    before = scored_200()
    json_type = {"Content-Type": "application/json"}
    answer = call(front, json.dumps({"images": images}).encode(), json_type, chunks=3)
    assert answer.status == 200
    assert [p["top3"][0]["label"] for p in json.loads(answer.body)["predictions"]] == [str(y) for y in heldout[1][:2]]
    assert call(front, json.dumps({"input": json.dumps(images)}).encode(), json_type).status == 200
    charset = {"Content-Type": "application/json; charset=utf-8"}
    assert call(front, json.dumps({"images": images}).encode(), charset).status == 200
    assert scored_200() - before == 3


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"images": []}', {"Content-Type": "application/json"}),  # a 400 from the view
        (b'{"images": ["eA=="]}', {"Content-Type": "application/json"}),  # not an image: the view's 400
        (b'{"images": [', {"Content-Type": "application/json"}),  # malformed JSON
        (b"{}", {"Content-Type": "text/plain"}),  # 415
        (b"{}", {"Content-Type": "application/problem+json"}),  # JSON too, for Flask: its view answers
    ],
)
def test_what_the_fast_path_does_not_answer_flask_answers_as_before(front, flask_only, body, headers):
    same_answer(call(front, body, headers), flask_only.post("/score", data=body, headers=headers))


def test_a_body_announced_over_the_limit_is_refused_by_flask_unread(front):
    answer = call(front, b"", {"Content-Type": "application/json", "Content-Length": str(8 * 1024 * 1024 + 1)})
    assert answer.status == 413
    assert json.loads(answer.body) == {"error": f"request body is larger than {8 * 1024 * 1024} bytes"}


def test_a_chunked_body_goes_to_flask_whole(front, flask_only, digit_b64, heldout):
    body = json.dumps({"images": [digit_b64(heldout[0][0])]}).encode()
    headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}  # no Content-Length
    plain = flask_only.post("/score", input_stream=io.BytesIO(body), headers=headers,
                            environ_overrides={"wsgi.input_terminated": True})  # as gunicorn's sync worker did
    assert plain.status_code == 200
    same_answer(call(front, body, headers, chunks=4), plain)


def test_other_routes_are_flasks(front, flask_only):
    for path in ("/", "/healthz", "/readyz", "/version", "/nowhere"):
        answer, plain = call(front, b"", {}, method="GET", path=path), flask_only.get(path)
        assert (answer.status, answer.body) == (plain.status_code, plain.get_data()), path


def test_every_request_gets_one_access_line_in_the_shipped_format(front, digit_b64, heldout):
    lines: list[str] = []
    front.access_log = lines.append
    body = json.dumps({"images": [digit_b64(heldout[0][0])]}).encode()
    ok = call(front, body, {"Content-Type": "application/json"})
    call(front, b"{}", {"Content-Type": "text/plain"})
    call(front, b"", {}, method="GET", path="/healthz")
    pattern = r'127\.0\.0\.1 "{} HTTP/1\.1" {} {} \d+ms <\d+>\n'
    assert re.fullmatch(pattern.format("POST /score", 200, len(ok.body)), lines[0]), lines
    assert re.fullmatch(pattern.format("POST /score", 415, r"\d+"), lines[1]), lines
    assert re.fullmatch(pattern.format("GET /healthz", 200, r"\d+"), lines[2]), lines
    assert len(lines) == 3


def test_the_apps_request_hooks_are_the_ones_the_fast_path_stands_in_for(front):
    # asgi.py does for its requests what these do (time and count them).
    # A new hook must be added there too, or the fast path would skip it.
    app = front.flask
    assert app.before_request_funcs == {None: [metrics._start_timer]}
    assert app.after_request_funcs == {None: [metrics._record]}
    assert not app.url_value_preprocessors and not app.teardown_request_funcs


@FUZZ
@given(body=bodies, content_type=content_types)
def test_any_score_body_gets_the_same_answer_with_and_without_the_fast_path(front, flask_only, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    same_answer(call(front, body, headers), flask_only.post("/score", data=body, headers=headers))
