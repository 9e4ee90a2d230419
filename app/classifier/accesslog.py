"""gunicorn's logger with a cheaper access log: the same lines on stdout, formatted directly, written in batches.

gunicorn's own access log builds a dict of every header and environ variable for each request, runs it
through the logging machinery and writes one line per write() to stdout; in a container each write also
wakes the runtime's log reader. Measured as 16 % of /score throughput (bench/RESULTS.md). This logger writes
the shipped format (gunicorn.conf.py's access_log_format, e.g. `127.0.0.1 "POST /score HTTP/1.1" 200 153
4ms <1234>`) itself, and buffers the lines of a worker: one write per PIPE_BUF bytes (4 kB, about 60
lines), or when the oldest buffered line is FLUSH_SECONDS old, or when the worker exits. So every line
still reaches stdout, whole (a pipe write of at most PIPE_BUF bytes is never interleaved with another
worker's), at most about a second late; a worker killed with SIGKILL loses its last second of lines.

Any other access_log_format or access log target falls back to gunicorn's own path, unbuffered.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from typing import Any

from gunicorn import glogging

FORMAT = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms %(p)s'  # the only format written directly
FLUSH_BYTES = select.PIPE_BUF
FLUSH_SECONDS = 1.0


class Logger(glogging.Logger):
    def setup(self, cfg: Any) -> None:
        super().setup(cfg)
        self._direct = cfg.accesslog == "-" and cfg.access_log_format == FORMAT
        self._lock = threading.Lock()
        self._lines: list[str] = []
        self._size = 0
        self._oldest = 0.0
        self._flusher_pid = 0  # the process whose flusher thread runs (workers fork from the master)

    def access(self, resp: Any, req: Any, environ: dict[str, Any], request_time: Any) -> None:
        if not self._direct:
            super().access(resp, req, environ, request_time)
            return
        status = resp.status.split(None, 1)[0] if isinstance(resp.status, str) else resp.status
        sent = getattr(resp, "sent", None)
        millis = request_time.seconds * 1000 + request_time.microseconds // 1000
        line = (
            f'{environ.get("REMOTE_ADDR", "-")} "{environ["REQUEST_METHOD"]} {environ["RAW_URI"]} '
            f'{environ["SERVER_PROTOCOL"]}" {status} {"-" if sent is None else sent} {millis}ms <{os.getpid()}>\n'
        )
        with self._lock:
            if self._flusher_pid != os.getpid():
                self._start_flusher()
            if self._size + len(line) > FLUSH_BYTES:
                self._write()
            if not self._lines:
                self._oldest = time.monotonic()
            self._lines.append(line)
            self._size += len(line)

    def flush_access(self) -> None:
        """Write the buffered lines now (gunicorn.conf.py calls it when a worker exits)."""
        if self._direct:
            with self._lock:
                self._write()

    def _write(self) -> None:  # with self._lock held
        if not self._lines:
            return
        data = "".join(self._lines).encode("utf-8", "backslashreplace")
        self._lines, self._size = [], 0
        try:
            while data:
                data = data[os.write(sys.stdout.fileno(), data) :]
        except OSError:
            pass  # stdout gone (the reader died): as gunicorn's own handler, never fail a request over a log line

    def _start_flusher(self) -> None:  # with self._lock held
        self._flusher_pid = os.getpid()

        def flush_stale() -> None:
            while True:
                time.sleep(FLUSH_SECONDS / 2)
                with self._lock:
                    if self._lines and time.monotonic() - self._oldest >= FLUSH_SECONDS:
                        self._write()

        threading.Thread(target=flush_stale, name="access-log-flush", daemon=True).start()
