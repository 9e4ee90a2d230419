"""gunicorn settings for the classifier: `gunicorn -c gunicorn.conf.py` (from app/ or the image's /app).

Environment: APP_BIND (default 127.0.0.1:8000), APP_WORKERS (2), APP_THREADS (1), APP_TIMEOUT (30 s).
Everything written at run time goes to one fresh folder under $TMPDIR (/tmp, a tmpfs in the container), so
the app runs on a read-only root filesystem. A worker that cannot load the model fails to boot, and
gunicorn then exits non-zero with the reason on stderr.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

# Fresh every start: stale metric files from an earlier run would be added to this run's counts.
_runtime = tempfile.mkdtemp(prefix="classifier-")
_metrics_dir = os.path.join(_runtime, "prometheus")
os.mkdir(_metrics_dir)
# Set before any worker imports prometheus_client, which picks multiprocess mode at import time.
os.environ["PROMETHEUS_MULTIPROC_DIR"] = _metrics_dir

wsgi_app = "classifier:create_app()"
pythonpath = os.path.dirname(os.path.abspath(__file__))  # find `classifier` whatever the cwd
bind = [os.environ.get("APP_BIND", "127.0.0.1:8000")]
workers = int(os.environ.get("APP_WORKERS", "2"))
threads = int(os.environ.get("APP_THREADS", "1"))
timeout = int(os.environ.get("APP_TIMEOUT", "30"))
graceful_timeout = 20
# Not preloaded: each worker verifies and loads the model after the fork, because an onnxruntime
# session's thread pool does not survive fork(). The model is small, so the memory cost is too.
preload_app = False
worker_tmp_dir = _runtime  # heartbeat files; the default may be on the read-only root
control_socket_disable = True  # it would be created under $HOME (read-only) and needs no remote control
accesslog = "-"  # stdout
errorlog = "-"  # stderr
# %(p)s is the worker's pid: which process served a request, when reading one worker's crash or metrics.
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms %(p)s'


def child_exit(server: Any, worker: Any) -> None:
    """Drop a dead worker's live gauges so /metrics does not report processes that no longer exist."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid, _metrics_dir)


def on_exit(server: Any) -> None:
    shutil.rmtree(_runtime, ignore_errors=True)
