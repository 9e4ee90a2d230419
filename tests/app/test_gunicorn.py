"""The app under real gunicorn with two workers, started the way the image starts it."""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from modelpkg.manifest import manifest_sha256

APP_DIR = Path(__file__).resolve().parents[2] / "app"
APP_DIR_MARKER = "classifier-"  # gunicorn.conf.py's runtime folder prefix under TMPDIR
N_SCORES = 24


def requests_total(text: str, route: str, status: str) -> float:
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "classifier_http_requests_total" and sample.labels == {
                "route": route, "method": "POST" if route == "/score" else "GET", "status": status,
            }:  # fmt: skip
                return sample.value
    return 0.0


def test_gunicorn_serves_scores_and_aggregates_metrics_across_workers(
    model_package, gunicorn, heldout, digit_b64, http_request, tmp_path
):
    home = tmp_path / "home"  # must stay absent: nothing (gunicorn's control socket, onnxruntime's
    server = gunicorn(model_package, workers=2, HOME=str(home))  # telemetry) may write outside TMPDIR
    server.wait_ready()
    server.wait_all_workers(2)
    x, y = heldout

    status, body = http_request(
        "POST", f"{server.base}/score", json.dumps({"images": [digit_b64(x[0])]}).encode(),
        {"Content-Type": "application/json"},
    )  # fmt: skip
    assert status == 200
    assert json.loads(body)["predictions"][0]["top3"][0]["label"] == str(y[0])

    payload = json.dumps({"images": [digit_b64(pixels) for pixels in x[:8]]}).encode()

    def score(_: int) -> int:
        return http_request("POST", f"{server.base}/score", payload, {"Content-Type": "application/json"})[0]

    with ThreadPoolExecutor(max_workers=6) as pool:  # concurrent, so both workers take requests
        assert set(pool.map(score, range(N_SCORES))) == {200}

    # Whichever worker answers the scrape, it reports every worker's requests: exactly 1 + N_SCORES.
    for _ in range(4):
        status, text = http_request("GET", f"{server.base}/metrics")
        assert status == 200
        assert requests_total(text.decode(), "/score", "200") == 1 + N_SCORES
        assert f'sha256="{manifest_sha256(model_package)}"' in text.decode()

    # The access log (stdout) names the worker pid of each request: more than one worker did the work.
    score_lines = server.access_lines("POST /score", 1 + N_SCORES)
    assert len(score_lines) == 1 + N_SCORES
    assert len(server.pids("/score")) == 2

    status, body = http_request("GET", f"{server.base}/version")
    assert json.loads(body)["model"]["sha256"] == manifest_sha256(model_package)

    healthy = subprocess.run(
        [sys.executable, "-m", "classifier.healthcheck"], cwd=APP_DIR, env=server.env, check=False, timeout=30
    )
    assert healthy.returncode == 0

    runtime = [p for p in server.workdir.iterdir() if p.name.startswith(APP_DIR_MARKER)]
    assert len(runtime) == 1 and (runtime[0] / "prometheus").is_dir()  # everything it writes is under TMPDIR
    assert server.stop() == 0  # SIGTERM: graceful, exit 0
    assert not runtime[0].exists()  # and it cleans up after itself
    assert not home.exists()


def test_chunked_body_over_max_content_length_is_413_not_truncated(model_package, gunicorn, heldout, digit_b64):
    server = gunicorn(model_package, workers=1, MAX_CONTENT_LENGTH="2000")
    server.wait_ready()

    def post_chunked(body: bytes) -> tuple[int, dict]:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        try:  # no Content-Length: the body's size is only known by reading it
            chunks = (body[i : i + 500] for i in range(0, len(body), 500))
            connection.request("POST", "/score", body=chunks, headers={"Content-Type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read())
        finally:
            connection.close()

    status, answer = post_chunked(json.dumps({"images": ["A" * 4000]}).encode())
    assert (status, answer) == (413, {"error": "request body is larger than 2000 bytes"})
    status, answer = post_chunked(json.dumps({"images": [digit_b64(heldout[0][2], size=8)]}).encode())
    assert status == 200 and answer["predictions"][0]["top3"][0]["label"] == str(heldout[1][2])


def test_healthcheck_fails_when_nothing_listens(free_port):
    env = {"APP_BIND": f"127.0.0.1:{free_port()}", "PATH": "/usr/bin:/bin"}
    result = subprocess.run(
        [sys.executable, "-m", "classifier.healthcheck"], cwd=APP_DIR, env=env,
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    assert result.returncode == 1 and "unhealthy" in result.stderr


def test_a_large_body_answered_without_reading_it_still_gets_its_error_not_a_reset(model_package, gunicorn):
    # 415 is decided from the headers alone; a server that closed the connection with megabytes unread would
    # reset it while the client is still sending, hiding the 415 (the sync worker did, until the app drained
    # such bodies; classifier/asgi.py reads every body within the limit before Flask answers).
    server = gunicorn(model_package, workers=1)
    server.wait_ready()
    body = b'{"images": ["' + b"A" * (6 * 1024 * 1024) + b'"]}'
    for _ in range(3):
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        try:
            connection.request("POST", "/score", body=body, headers={"Content-Type": "text/plain"})
            response = connection.getresponse()
            assert response.status == 415
            assert json.loads(response.read()) == {"error": "Content-Type must be application/json"}
        finally:
            connection.close()


def test_access_log_has_one_line_per_request_in_gunicorns_format_and_none_is_lost_at_shutdown(
    model_package, gunicorn, heldout, digit_b64, http_request
):
    server = gunicorn(model_package, workers=2)
    server.wait_ready()
    server.wait_all_workers(2)
    body = json.dumps({"images": [digit_b64(heldout[0][0], size=16)]}).encode()

    def score(_: int) -> int:
        return http_request("POST", f"{server.base}/score", body, {"Content-Type": "application/json"})[0]

    with ThreadPoolExecutor(max_workers=4) as pool:
        assert set(pool.map(score, range(300))) == {200}
    assert http_request("GET", f"{server.base}/no/such/path")[0] == 404
    # SIGTERM right away: the lines still buffered in each worker are written as it exits.
    assert server.stop() == 0
    probes = ("/healthz", "/readyz")  # the fixture's readiness polling
    lines = [line for line in server.stdout.read_text().splitlines() if not any(p in line for p in probes)]
    line = re.compile(r'^127\.0\.0\.1 "(POST /score|GET /no/such/path) HTTP/1\.1" (200|404) \d+ \d+ms <\d+>$')
    assert [bool(line.match(one)) for one in lines] == [True] * 301, lines[:5]
    assert sum("POST /score" in one for one in lines) == 300 and len(server.pids("/score")) == 2
