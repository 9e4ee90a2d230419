"""A git server on 127.0.0.1 that wants credentials: git's smart HTTP protocol (git http-backend, run as CGI)
behind HTTP Basic auth, for tests of a source repository URL that carries a user and a password."""

from __future__ import annotations

import base64
import os
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import quote

from modelship import net

BACKEND = "/usr/lib/git-core/git-http-backend"


class GitHTTPServer:
    def __init__(self, root: Path, username: str, password: str) -> None:
        self.root = Path(root)  # holds bare repositories: <root>/<name>.git
        self.username, self.password = username, password
        self.port = net.free_port()
        self.requests: list[tuple[str, int]] = []  # (method path, status answered)
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:  # noqa: N802 (http.server's names)
                server._handle(self)

            def do_POST(self) -> None:  # noqa: N802
                server._handle(self)

            def log_message(self, *args: object) -> None:
                pass

        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def url(self, name: str, *, username: str | None = None, password: str | None = None) -> str:
        user = quote(self.username if username is None else username, safe="")
        secret = quote(self.password if password is None else password, safe="")
        return f"http://{user}:{secret}@127.0.0.1:{self.port}/{name}.git"

    def public_url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}.git"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        expected = "Basic " + base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        line = f"{request.command} {request.path}"
        if request.headers.get("Authorization") != expected:
            self.requests.append((line, 401))
            _body(request)
            request.send_response(401)
            request.send_header("WWW-Authenticate", 'Basic realm="git"')
            request.send_header("Content-Length", "0")
            request.end_headers()
            return
        path, _, query = request.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1", "REQUEST_METHOD": request.command, "PATH_INFO": path, "QUERY_STRING": query,
            "REMOTE_USER": self.username, "REMOTE_ADDR": "127.0.0.1",
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
            "HTTP_GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
        }  # fmt: skip
        body = _body(request)
        env["CONTENT_LENGTH"] = str(len(body))
        done = subprocess.run([BACKEND], input=body, env=env, capture_output=True, timeout=120, check=False)
        head, _, payload = done.stdout.partition(b"\r\n\r\n")
        status = 200
        headers = []
        for raw in head.decode("latin-1").split("\r\n"):
            name, _, value = raw.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        self.requests.append((line, status))
        request.send_response(status)
        for name, value in headers:
            request.send_header(name, value)
        request.send_header("Content-Length", str(len(payload)))
        request.end_headers()
        request.wfile.write(payload)


def _body(request: BaseHTTPRequestHandler) -> bytes:
    if request.headers.get("Transfer-Encoding", "").lower() == "chunked":
        data = b""
        while True:
            size = int(request.rfile.readline().split(b";")[0].strip() or b"0", 16)
            if size == 0:
                request.rfile.readline()
                return data
            data += request.rfile.read(size)
            request.rfile.readline()
    return request.rfile.read(int(request.headers.get("Content-Length") or 0))
