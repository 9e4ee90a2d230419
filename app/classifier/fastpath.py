"""POST /score's successful answers without Flask's per-request machinery; everything else goes to Flask.

For each request Flask builds a Request, pushes an app and a request context, matches the URL, opens a
(null) session, runs the before/after hooks and builds a Response: ~50 us of CPU, plus the caches it
evicts, which make the pixel work that follows slower still. In the app's gunicorn that was a quarter of a
/score request's server CPU (docs/scoring-api.md, "Throughput"). This WSGI layer, which create_app puts
in front of Flask, answers a /score request itself when all of these hold:

- `POST /score`, Content-Type exactly `application/json` (parameters allowed), a Content-Length within
  MAX_CONTENT_LENGTH and no Transfer-Encoding, and a model loaded;
- the whole body arrived, and routes.answer() (the view's own code) returns an answer.

It then sends what the view would have sent: the same bytes, the same two headers, the same metrics
(classifier.metrics.count with the view's route label). In every other case, and whenever anything
raises (a client mistake, a bug), the request goes to Flask as if this layer were not there, with the
body already read handed over unchanged: the blueprint's view then answers it, with the error messages,
handlers and logging it always had. Errors thus cost a second parse, which only their own requests pay.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable, Iterable
from typing import Any

from flask import Flask

from . import metrics, routes

ROUTE = "/score"  # the blueprint's rule for score(), and so its metrics label
HEADERS = "Content-Type", "application/json"  # what routes.score() answers, as jsonify does


class FastScore:
    """The WSGI app create_app installs as `app.wsgi_app`, in front of Flask's own."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self.flask = app.wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        started = time.perf_counter()
        if environ.get("PATH_INFO") != ROUTE or environ.get("REQUEST_METHOD") != "POST":
            return self.flask(environ, start_response)
        content_type = environ.get("CONTENT_TYPE", "")
        config = self.app.config
        model = self.app.extensions.get(routes.MODEL_KEY)
        length = _length(environ, config["MAX_CONTENT_LENGTH"])
        if (
            length is None
            or model is None
            or config["SERVER_NAME"]  # Flask would check the Host header against it
            or config.get("TRUSTED_HOSTS")
            or not (content_type == "application/json" or content_type.startswith("application/json;"))
        ):
            return self.flask(environ, start_response)
        stream, body = environ["wsgi.input"], None
        try:
            body = stream.read(length)
            if len(body) != length:  # the client sent less than it announced: Flask says what it says
                raise ValueError(f"{len(body)} of {length} bytes")
            text = routes.answer(model, json.loads(body), config)
        except Exception:  # all of them: the view answers each error its own way
            if body is not None:  # else reading failed (the client went away): Flask reads what is left
                environ["wsgi.input"] = io.BytesIO(body)
            return self.flask(environ, start_response)
        data = text.encode()  # ASCII: the encoder escapes everything else, as jsonify's does
        start_response("200 OK", [HEADERS, ("Content-Length", str(len(data)))])
        metrics.count(ROUTE, "POST", 200, started)
        return [data]


def _length(environ: dict[str, Any], limit: int | None) -> int | None:
    """The body's length if the fast path may read it: a plain Content-Length within `limit`, not chunked."""
    value = environ.get("CONTENT_LENGTH", "")
    if not (value.isascii() and value.isdigit()) or "HTTP_TRANSFER_ENCODING" in environ:
        return None
    length = int(value)
    return length if limit is None or length <= limit else None
