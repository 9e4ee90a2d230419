"""gunicorn settings for the classifier: `gunicorn -c gunicorn.conf.py` (from app/ or the image's /app).

Environment: APP_BIND (default 127.0.0.1:8000; several addresses separated by commas), APP_VERIFY_BIND
(none; more addresses, for verifying this server alone; optional: skipped if taken), APP_READY_DIR (none; a
folder where each worker that has loaded the model leaves a file named after its pid), APP_WORKERS (2),
APP_TIMEOUT (30 s), APP_GRACEFUL_TIMEOUT (20 s).
Each worker is uvicorn's (classifier/worker.py) serving the ASGI front of the Flask app (classifier/asgi.py).
Everything written at run time goes to one fresh folder under $TMPDIR (/tmp, a tmpfs in the container), so
the app runs on a read-only root filesystem. A worker that cannot load the model fails to boot, and
gunicorn then exits non-zero with the reason on stderr.

Zero-downtime replacement (docs/scoring-api.md): every address is bound with SO_REUSEPORT, so a new
server (same uid) can bind the serving port while the old one still serves, e.g.
APP_BIND=127.0.0.1:8000,127.0.0.1:41234 where the second, private port lets the new server be verified
before the old one is stopped (or APP_BIND=127.0.0.1:8000 APP_VERIFY_BIND=127.0.0.1:41234, as modelship's
docker target sets them). SIGTERM is a graceful stop: each worker stops accepting, answers what its open
connections send (with "Connection: close") until each has been answered once or idle for the keep-alive
timeout, and exits (classifier/worker.py); workers still busy after graceful_timeout are killed, so a
supervisor's own grace period (Kubernetes' terminationGracePeriodSeconds) must be longer than
APP_GRACEFUL_TIMEOUT.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
import tempfile
from typing import Any

# Fresh every start: stale metric files from an earlier run would be added to this run's counts.
_runtime = tempfile.mkdtemp(prefix="classifier-")
_metrics_dir = os.path.join(_runtime, "prometheus")
os.mkdir(_metrics_dir)
# Set before any worker imports prometheus_client, which picks multiprocess mode at import time.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

wsgi_app = "classifier.asgi:create_asgi_app()"
pythonpath = os.path.dirname(os.path.abspath(__file__))  # find `classifier` whatever the cwd
if pythonpath not in sys.path:  # for the logger below, imported before gunicorn applies `pythonpath`
    sys.path.insert(0, pythonpath)
from classifier.accesslog import FORMAT, Logger  # noqa: E402 (imports neither Flask nor onnxruntime)


def _addresses(name: str, default: str = "") -> list[str]:
    return [address.strip() for address in os.environ.get(name, default).split(",") if address.strip()]


# Serving first, then verification. APP_VERIFY_BIND is optional: a release proves a new server on it before
# stopping the old one; if it is taken when the server restarts much later, the server runs without it.
_verify = _addresses("APP_VERIFY_BIND")
bind = _addresses("APP_BIND", "127.0.0.1:8000") + _verify
# APP_READY_DIR: each worker that has loaded the model leaves a file named after its pid there (removed when it
# exits). A pod on the host network shares its port with the pods it replaces, so an HTTP probe could be
# answered by another pod; a probe that looks for a live worker's file here asks this pod alone
# (k8s/overlays/local).
_ready_dir = os.environ.get("APP_READY_DIR", "")
# SO_REUSEPORT: a second server (same uid) may bind the same port, and the kernel spreads new connections
# over both; that is how a release starts the new server before stopping the old one. With it, gunicorn
# binds a listener in each worker instead of one in the master. When a listener closes (a worker exits),
# connections still queued on it are reset, unless net.ipv4.tcp_migrate_req=1 moves them to another
# listener of the port (Linux >= 5.14; see docs/scoring-api.md).
reuse_port = True
workers = int(os.environ.get("APP_WORKERS", "2"))
# uvicorn's worker (httptools, uvloop, keep-alive) under gunicorn's process management: about 40 % less CPU
# a /score request than the sync worker (docs/scoring-api.md, "Throughput"). Its timeout is a heartbeat
# from the event loop, which runs /score's work: a worker stuck on one request longer than APP_TIMEOUT is
# killed and replaced, as a sync worker was.
worker_class = "classifier.worker.Worker"
timeout = int(os.environ.get("APP_TIMEOUT", "30"))
# SIGTERM: workers stop accepting, answer what their open connections send and exit (classifier/worker.py);
# after this many seconds the master kills those still busy. Keep it above the slowest request and below the
# supervisor's grace period.
graceful_timeout = int(os.environ.get("APP_GRACEFUL_TIMEOUT", "20"))
# Not preloaded: each worker verifies and loads the model after the fork, because an onnxruntime
# session's thread pool does not survive fork(). The model is small, so the memory cost is too.
preload_app = False
worker_tmp_dir = _runtime  # heartbeat files; the default may be on the read-only root
control_socket_disable = True  # it would be created under $HOME (read-only) and needs no remote control
accesslog = "-"  # stdout
errorlog = "-"  # stderr
# %(p)s is the worker's pid: which process served a request, when reading one worker's crash or metrics.
access_log_format = FORMAT  # '%(h)s "%(r)s" %(s)s %(b)s %(M)sms %(p)s'
# The same lines, written directly and in batches of up to 4 kB, at most ~1 s late (classifier/accesslog.py):
# gunicorn's per-line logging cost 16 % of /score throughput. GUNICORN_CMD_ARGS="--access-logfile /dev/null"
# still turns the access log off.
logger_class = Logger


def _bindable(address: str) -> str | None:
    """None if `address` can be bound beside whatever shares it (SO_REUSEPORT, same uid), else why not."""
    if address.startswith(("unix:", "fd://")):  # no port to share
        return None
    host, _, port = address.rpartition(":")
    family = socket.AF_INET6 if host.startswith("[") else socket.AF_INET
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        probe.bind((host.strip("[]"), int(port)))
    except (OSError, ValueError) as exc:
        return str(exc)
    finally:
        probe.close()
    return None


def on_starting(server: Any) -> None:
    """Fail now, in the master, if a serving address cannot be bound (drop a verification one that cannot).

    With reuse_port the master binds nothing and each worker binds its own listener: a port held by
    another program (without SO_REUSEPORT, or of another uid) would only make every worker exit and be
    respawned, forever, instead of gunicorn exiting with the reason as it does without reuse_port.
    """
    kept = []
    for address in bind:
        why = _bindable(address)
        if why is None:
            kept.append(address)
        elif address in _verify:
            server.log.warning("cannot bind %s (APP_VERIFY_BIND, optional): %s; serving without it", address, why)
        else:
            server.log.error("cannot bind %s (APP_BIND): %s", address, why)
            shutil.rmtree(_runtime, ignore_errors=True)
            sys.exit(1)
    if kept != bind:
        server.cfg.set("bind", kept)
    if _ready_dir:
        os.makedirs(_ready_dir, exist_ok=True)
        for stale in os.listdir(_ready_dir):  # a restarted container keeps its /tmp: old pids mean nothing
            os.unlink(os.path.join(_ready_dir, stale))
    server.log.info("serving on %s (SO_REUSEPORT, a listener per worker)", ", ".join(kept))


def post_worker_init(worker: Any) -> None:
    """The worker has loaded the model: it is ready (see APP_READY_DIR)."""
    if _ready_dir:
        with open(os.path.join(_ready_dir, str(worker.pid)), "w"):
            pass


def worker_exit(server: Any, worker: Any) -> None:
    worker.log.flush_access()  # the buffered access lines of a worker that stops or restarts


def worker_abort(worker: Any) -> None:
    worker.log.flush_access()  # SIGABRT: the master's timeout kill


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges so /metrics does not report processes that no longer exist, and its
    ready file (whatever killed it)."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)
    if _ready_dir:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(_ready_dir, str(worker.pid)))


def on_exit(server: Any) -> None:
    shutil.rmtree(_runtime, ignore_errors=True)
