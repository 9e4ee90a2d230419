"""A stand-in for the app image, for testing the deploy targets' mechanics (not the app).

Loaded by test_deploy_docker.py and test_deploy_kubernetes.py with `pytest_plugins = ["deploy_fixtures"]`.
The stand-in honours the app's serving contract: it binds APP_BIND (and APP_VERIFY_BIND) with SO_REUSEPORT, so an
old and a new one share a port as the app does, leaves a ready file in APP_READY_DIR, answers GET /healthz, /readyz and
/version ({"commit", "model": {"name", "version", "sha256"}, "app_version"}) from its environment, runs as
uid 10001 and works on a read-only root filesystem; its image carries the same lineage labels the real one
does. BROKEN makes it fail the way bad releases do: "readyz" (never ready: 503), "exit" (exits at start),
or "port:N" (binds port N, then exits: fine as a candidate, broken on the serving port). STOP_DELAY makes its
graceful stop take that many seconds.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from devstack import rootfs

STANDIN_APP = r"""
import json, os, signal, socket, sys, threading, time
from http.server import BaseHTTPRequestHandler, HTTPServer

# As PID 1 in a container, a process without a handler ignores SIGTERM and is killed only after the grace period.
# STOP_DELAY: a graceful shutdown that takes that long (still serving meanwhile), like the app finishing requests.
def stop(*_):
    time.sleep(float(os.environ.get("STOP_DELAY") or 0))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)

# Like the app: APP_BIND (the serving addresses) and an optional APP_VERIFY_BIND, all with SO_REUSEPORT.
binds = ",".join(os.environ.get(k, "") for k in ("APP_BIND", "APP_VERIFY_BIND")) or "127.0.0.1:8000"
addresses = [a.rpartition(":") for a in binds.split(",") if a]
broken = os.environ.get("BROKEN", "")
if broken == "exit":
    sys.exit(f"stand-in broken on purpose ({broken})")
model = {k: os.environ.get(f"MODEL_{k.upper()}", "") for k in ("name", "version", "sha256")}
VERSION = json.dumps({"commit": os.environ.get("COMMIT", ""), "model": model, "app_version": "standin"})

class Handler(BaseHTTPRequestHandler):
    def do_GET(self):
        routes = {"/healthz": (200, "ok"), "/version": (200, VERSION),
                  "/readyz": (503, "not ready") if broken == "readyz" else (200, "ready")}
        code, body = routes.get(self.path, (404, "not found"))
        self.send_response(code)
        self.send_header("Content-Type", "application/json" if self.path == "/version" else "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args):
        pass

class Server(HTTPServer):
    def server_bind(self):
        if not os.environ.get("NO_REUSEPORT"):  # an app image from before SO_REUSEPORT
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()

servers = [Server((host, int(port)), Handler) for host, _, port in addresses]
if any(broken == f"port:{port}" for _, _, port in addresses):  # bound it, then dies: fine on any other port
    sys.exit(f"stand-in broken on purpose ({broken})")
ready_dir = os.environ.get("APP_READY_DIR")  # like the app's workers: this process is up and ready
if ready_dir and broken != "readyz":
    os.makedirs(ready_dir, exist_ok=True)
    open(os.path.join(ready_dir, str(os.getpid())), "w").close()
for server in servers[1:]:
    threading.Thread(target=server.serve_forever, daemon=True).start()
servers[0].serve_forever()
"""


@dataclass(frozen=True)
class Standin:
    tag: str
    id: str  # image id (sha256:…)
    commit: str  # what /version reports and the labels say
    model_version: str
    model_sha256: str

    def lineage(self, **override: str) -> dict[str, str]:
        return {"commit": self.commit, "model_version": self.model_version, "model_sha256": self.model_sha256,
                **override}  # fmt: skip


def build_standin(
    docker_client, tag: str, key: str, *, broken: str = "", reports_commit: str = "", reuse_port: bool = True,
    stop_delay: float = 0,
) -> Standin:
    """Build a stand-in whose lineage is derived from ``key``; ``reports_commit`` makes /version lie;
    ``reuse_port=False`` makes it bind without SO_REUSEPORT, as app images built before it did; ``stop_delay``
    makes its graceful stop (SIGTERM) take that many seconds."""
    commit = hashlib.sha1(key.encode()).hexdigest()
    model_version = f"m-{key}"
    model_sha256 = hashlib.sha256(key.encode()).hexdigest()
    dockerfile = f"""\
FROM {rootfs.BASE_IMAGE}
COPY app.py /srv/app.py
ENV COMMIT={reports_commit or commit} MODEL_NAME=digits MODEL_VERSION={model_version} \\
    MODEL_SHA256={model_sha256} BROKEN="{broken}" NO_REUSEPORT="{'' if reuse_port else '1'}" \\
    STOP_DELAY="{stop_delay or ''}" PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.revision={commit} io.modelship.model.name=digits \\
      io.modelship.model.version={model_version} io.modelship.model.sha256={model_sha256}
USER 10001
CMD ["python3", "/srv/app.py"]
"""
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        for name, text in (("Dockerfile", dockerfile), ("app.py", STANDIN_APP)):
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    context.seek(0)
    image, _ = docker_client.images.build(fileobj=context, custom_context=True, tag=tag, network_mode="host", rm=True)
    return Standin(tag=tag, id=image.id, commit=commit, model_version=model_version, model_sha256=model_sha256)


@pytest.fixture(scope="session")
def standin(docker_client) -> Callable[..., Standin]:
    """standin(key, broken=..., reports_commit=..., reuse_port=...) → a stand-in image, built once per session."""
    built: dict[tuple[str, str, str, bool], Standin] = {}

    def get(key: str, *, broken: str = "", reports_commit: str = "", reuse_port: bool = True) -> Standin:
        wanted = (key, broken, reports_commit, reuse_port)
        if wanted not in built:
            tag = f"modelship-test/standin:{key}"
            built[wanted] = build_standin(docker_client, tag, key, broken=broken, reports_commit=reports_commit,
                                          reuse_port=reuse_port)  # fmt: skip
        return built[wanted]

    return get
