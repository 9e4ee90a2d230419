"""modelship.airflow_api rides out a short outage without repeating what must not be repeated.

An API server whose database restarts answers 5xx for a while (tests/distributed proves it on a real
Postgres restart); here a loopback HTTP server answers 503 a set number of times, so each test can count
the requests the client sent: reads are retried until an answer, a trigger (POST) is sent exactly once,
and the patience is a bound, not a hope.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from modelship import net
from modelship.airflow_api import AirflowAPI, AirflowAPIError, retry_policy

RUN = {
    "dag_id": "ci", "dag_display_name": "ci", "dag_run_id": "manual__1", "dag_versions": [],
    "run_after": "2026-01-01T00:00:00Z", "run_type": "manual", "state": "success",
}  # fmt: skip


class Outage(ThreadingHTTPServer):
    """Answers the first `failures` requests with 503, then every GET with the run above and every POST 200."""

    def __init__(self, failures: int) -> None:
        super().__init__(("127.0.0.1", 0), OutageHandler)
        self.failures = failures
        self.requests: list[str] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class OutageHandler(BaseHTTPRequestHandler):
    server: Outage

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.server.requests.append(self.command)
        failing = len(self.server.requests) <= self.server.failures
        body = b'{"detail": "database restarting"}' if failing else json.dumps(RUN).encode()
        self.send_response(503 if failing else 200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def outage(request: pytest.FixtureRequest) -> Iterator[Outage]:
    server = Outage(request.param)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("outage", [3], indirect=True)
def test_a_read_rides_out_a_few_5xx_answers(outage: Outage) -> None:
    with AirflowAPI(outage.url, "token", patience=10) as api:
        assert api.run("ci", "manual__1").state == "success"
    assert outage.requests == ["GET"] * 4


@pytest.mark.parametrize("outage", [1], indirect=True)
def test_a_trigger_answered_5xx_is_not_sent_again(outage: Outage) -> None:
    # The API server may have started the run before it failed to answer: a second POST could start another.
    with AirflowAPI(outage.url, "token", patience=10) as api, pytest.raises(AirflowAPIError, match="HTTP 503"):
        api.trigger("ci", {"commit": "abc"})
    assert outage.requests == ["POST"]


@pytest.mark.parametrize("outage", [1000], indirect=True)
def test_past_its_patience_a_read_fails_with_airflows_answer(outage: Outage) -> None:
    started = time.monotonic()
    with AirflowAPI(outage.url, "token", patience=3) as api, pytest.raises(AirflowAPIError, match="HTTP 503"):
        api.run("ci", "manual__1")
    assert 3 <= time.monotonic() - started < 15
    assert len(outage.requests) == retry_policy(3).total + 1


def test_an_api_server_that_is_not_listening_is_unreachable_after_the_patience() -> None:
    url = f"http://127.0.0.1:{net.free_port()}"  # nothing listens there
    started = time.monotonic()
    with AirflowAPI(url, "token", patience=3) as api, pytest.raises(AirflowAPIError, match="unreachable"):
        api.trigger("ci")  # a POST too: a connection that was never opened sent nothing
    assert 3 <= time.monotonic() - started < 15
