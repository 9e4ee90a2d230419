"""The app gunicorn serves (classifier.worker): an ASGI front that answers POST /score itself and hands every
other request to the Flask app, unchanged, as a plain WSGI call.

Why not WSGI under gunicorn's sync worker: on two cores its pure-Python HTTP parsing, a new TCP connection
per request ("Connection: close") and Flask's per-request machinery cost about twice the app's own work for
a /score request (docs/scoring-api.md, "Throughput"). Under uvicorn's worker (httptools' C parser, uvloop,
kept-alive connections), with /score answered here, a successful /score request costs the parse, the
pipeline (routes.answer, the view's own code) and one write. It is answered here when all of these hold:

- `POST /score`, Content-Type exactly `application/json` (parameters allowed), a Content-Length within
  MAX_CONTENT_LENGTH and no Transfer-Encoding, and a model loaded;
- routes.answer() returns an answer.

It then sends what the view would have sent: the same bytes, the same two headers, the same metrics
(classifier.metrics.count with the view's route label). In every other case, and whenever anything raises
(a client mistake, a bug), the request goes to Flask with its body: the blueprint's view then answers it,
with the error messages, handlers and logging it always had. Errors thus cost a second parse, which only
their own requests pay.

The body is read while the worker serves other connections; the work itself (the pipeline, Flask) runs on
the worker's event loop, one request at a time, as a sync worker ran it: a worker busy on one request for
longer than APP_TIMEOUT stops sending its heartbeat and gunicorn replaces it, and no two requests decode
images at once in one worker (memory per worker stays what the sync worker needed: see
tests/hardening/test_score_fuzz.py). Bodies are read up to MAX_CONTENT_LENGTH (one chunk more tells Flask
there was more); a Content-Length above it is not read at all, and Flask answers 413.
"""

from __future__ import annotations

import io
import json
import os
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from . import create_app, metrics, routes

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

ROUTE = "/score"  # the blueprint's rule for score(), and so its metrics label
JSON_HEADER = (b"content-type", b"application/json")  # what routes.score() answers, as jsonify does


class Classifier:
    """The ASGI app: `create_asgi_app()` in gunicorn.conf.py. `flask` is the WSGI app behind it."""

    def __init__(self, test_config: Mapping[str, Any] | None = None) -> None:
        self.flask = create_app(test_config)
        self.config = self.flask.config
        self.model = self.flask.extensions.get(routes.MODEL_KEY)
        # Set by classifier.worker from gunicorn's access log settings; None: no access log.
        self.access_log: Callable[[str], None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # the worker runs no lifespan and no websockets (classifier.worker)
            raise RuntimeError(f"unsupported ASGI scope type {scope['type']!r}")
        started = time.perf_counter()
        headers = _headers(scope)
        body = await self._read(headers, receive)
        if body is None:  # the client went away before sending it all: nobody to answer
            return
        status, response_headers, data = self._fast(scope, headers, body, started) or self._flask(scope, headers, body)
        await send({"type": "http.response.start", "status": status, "headers": response_headers})
        await send({"type": "http.response.body", "body": data})
        if self.access_log is not None:
            self.access_log(_access_line(scope, status, len(data), started))

    async def _read(self, headers: dict[bytes, bytes], receive: Receive) -> bytes | bytearray | None:
        limit = self.config["MAX_CONTENT_LENGTH"]
        length = headers.get(b"content-length", b"")
        if limit is not None and length.isdigit() and int(length) > limit:
            return b""  # not read: Werkzeug refuses it from the header alone
        body = bytearray()  # grown in place: a list of parts joined at the end holds the body twice
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            body += message.get("body", b"")
            if not message.get("more_body", False) or (limit is not None and len(body) > limit):
                return body

    def _fast(
        self, scope: Scope, headers: dict[bytes, bytes], body: bytes | bytearray, started: float
    ) -> Answer | None:
        """The answer to a POST /score the fast path takes (above); None: Flask must answer it."""
        content_type = headers.get(b"content-type", b"")
        length = headers.get(b"content-length", b"")
        limit = self.config["MAX_CONTENT_LENGTH"]
        if (
            scope["path"] != ROUTE
            or scope["method"] != "POST"
            or self.model is None
            or b"transfer-encoding" in headers
            or not length.isdigit()
            or (limit is not None and int(length) > limit)
            or self.config["SERVER_NAME"]  # Flask would check the Host header against it
            or self.config.get("TRUSTED_HOSTS")
            or not (content_type == b"application/json" or content_type.startswith(b"application/json;"))
        ):
            return None
        try:
            text = routes.answer(self.model, json.loads(body), self.config)
        except Exception:  # all of them: the view answers each error its own way
            return None
        data = text.encode()  # ASCII: the encoder escapes everything else, as jsonify's does
        metrics.count(ROUTE, "POST", 200, started)
        return 200, [JSON_HEADER, (b"content-length", str(len(data)).encode())], data

    def _flask(self, scope: Scope, headers: dict[bytes, bytes], body: bytes | bytearray) -> Answer:
        """Flask's answer, through its WSGI interface (PEP 3333), to the request with this body."""
        answer: dict[str, Any] = {}

        def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Callable:
            answer["status"], answer["headers"] = int(status.split(" ", 1)[0]), headers
            return chunks.append

        chunks: list[bytes] = []
        result = self.flask.wsgi_app(_environ(scope, headers, body), start_response)
        try:
            chunks.extend(result)
        finally:
            if hasattr(result, "close"):
                result.close()
        sent = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in answer["headers"]]
        return answer["status"], sent, b"".join(chunks)


Answer = tuple[int, list[tuple[bytes, bytes]], bytes]  # status, headers, body


def create_asgi_app(test_config: Mapping[str, Any] | None = None) -> Classifier:
    """gunicorn's app (gunicorn.conf.py): raises classifier.model.ModelLoadError as create_app does."""
    return Classifier(test_config)


def _headers(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by lower-case name; repeated ones joined with commas (RFC 9110 5.3)."""
    found: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        found[name] = found[name] + b"," + value if name in found else value
    return found


def _environ(scope: Scope, headers: dict[bytes, bytes], body: bytes | bytearray) -> dict[str, Any]:
    """The WSGI environ of an ASGI HTTP request (its _headers()) whose body has been read (PEP 3333, ASGI spec)."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": scope.get("root_path", "").encode().decode("latin-1"),
        "PATH_INFO": scope["path"].encode().decode("latin-1"),
        "QUERY_STRING": scope["query_string"].decode("latin-1"),
        "SERVER_NAME": server[0],
        "SERVER_PORT": str(server[1] or 0),
        "SERVER_PROTOCOL": f"HTTP/{scope['http_version']}",
        "REMOTE_ADDR": client[0] if client else "",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        # The server has undone any chunked encoding and the stream ends with the body, as gunicorn said
        # with this key; without it Werkzeug reads a body with no Content-Length as empty.
        "wsgi.input_terminated": True,
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for name, value in headers.items():
        key = name.decode("latin-1").upper().replace("-", "_")
        environ[key if key in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{key}"] = value.decode("latin-1")
    return environ


def _access_line(scope: Scope, status: int, size: int, started: float) -> str:
    """The shipped access log format (classifier.accesslog.FORMAT): `127.0.0.1 "POST /score HTTP/1.1" 200 153
    4ms <1234>` (client, request line, status, body bytes, milliseconds, worker pid)."""
    client = scope.get("client")
    target = scope.get("raw_path") or scope["path"].encode()
    if scope["query_string"]:
        target += b"?" + scope["query_string"]
    millis = int((time.perf_counter() - started) * 1000)
    return (
        f'{client[0] if client else "-"} "{scope["method"]} {target.decode("latin-1")} HTTP/{scope["http_version"]}" '
        f"{status} {size} {millis}ms <{os.getpid()}>\n"
    )
