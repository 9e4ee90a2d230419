"""The gunicorn worker the classifier runs in: uvicorn's, serving the ASGI app (classifier.asgi).

gunicorn stays the process manager: SO_REUSEPORT listeners, the heartbeat timeout, graceful SIGTERM, the
hooks in gunicorn.conf.py. uvicorn serves the HTTP on each worker's listeners: httptools' C parser and
uvloop, connections kept alive. Settings fixed here, and why:
- no lifespan, no websockets: the app has neither (loading the model happens when gunicorn loads the app);
- no proxy headers: nothing in front of the app is trusted to name the client, as under the sync worker;
- no uvicorn access log: the app writes its own lines, in the shipped format, through gunicorn's logger
  (classifier.accesslog), the same lines operators always got;
- a graceful stop that drops no kept-alive client (Protocol, below).
"""

from __future__ import annotations

import signal
import sys
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn_worker import UvicornWorker


class Protocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, with a graceful stop that keeps the keep-alive contract.

    On shutdown uvicorn closes every idle kept-alive connection at once. A client that has just sent its
    next request on one (a connection pool, a proxy, any closed-loop client) then sees a reset instead of an
    answer: tests/app/test_zero_downtime.py counted 4 in a 7-second release at ~1400 req/s. Here a stopping
    worker answers such a connection's next request, with "Connection: close", and only closes connections
    that stay idle for the keep-alive timeout (gunicorn's `keepalive`, 2 s), as it would when not stopping.
    The worker then exits once its connections are gone, within gunicorn's graceful timeout.
    """

    draining = False
    begun = False  # a request's first bytes arrived; its cycle is made once its headers are complete

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.begun = True

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        self.begun = False
        if self.draining:
            self.cycle.keep_alive = False  # answered, with "Connection: close", then closed

    def shutdown(self) -> None:
        self.draining = True
        if self.cycle is not None and not self.cycle.response_complete:
            self.cycle.keep_alive = False  # in the middle of a request: closed after its answer
        elif not self.begun and self.timeout_keep_alive_task is None:
            # Idle and never used (no keep-alive timer yet): the same timeout as any idle connection.
            self.timeout_keep_alive_task = self.loop.call_later(
                self.timeout_keep_alive, self.timeout_keep_alive_handler
            )


class Worker(UvicornWorker):
    CONFIG_KWARGS: dict[str, Any] = {
        "loop": "uvloop",
        "http": Protocol,
        "lifespan": "off",
        "ws": "none",
        "proxy_headers": False,
        "access_log": False,
    }

    def init_signals(self) -> None:
        super().init_signals()
        # uvicorn handles SIGTERM/SIGINT while it serves, and once stopped raises the signal again with the
        # handler it found, which was SIG_DFL: the worker died of the signal and gunicorn's worker_exit hook
        # (which writes the access lines still buffered) never ran. Found so, this exits normally instead.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, _exit)

    def load_wsgi(self) -> None:
        super().load_wsgi()
        writer = getattr(self.log, "access_writer", None)  # classifier.accesslog.Logger's
        if hasattr(self.wsgi, "access_log") and writer is not None:
            self.wsgi.access_log = writer()


def _exit(sig: int, frame: object) -> None:
    sys.exit(0)
