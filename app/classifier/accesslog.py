"""gunicorn's logger with a cheap access log: one line per request on stdout, written in batches.

Under uvicorn's worker (classifier.worker) gunicorn's own access hook never runs; the ASGI app
(classifier.asgi) formats each line in the shipped format (gunicorn.conf.py's access_log_format, e.g.
`127.0.0.1 "POST /score HTTP/1.1" 200 153 4ms <1234>`) and hands it to access_writer()'s callable. On
stdout, this logger buffers the lines of a worker: one write per PIPE_BUF bytes (4 kB, about 60 lines), or
when the oldest buffered line is FLUSH_SECONDS old, or when the worker exits. So every line still reaches
stdout, whole (a pipe write of at most PIPE_BUF bytes is never interleaved with another worker's), at most
about a second late; a worker killed with SIGKILL loses its last second of lines. One write() per line
cost 16 % of /score throughput (bench/RESULTS.md): in a container each write also wakes the runtime's log
reader.

Any other access log target (a file) gets the same lines through gunicorn's access logger, one at a time;
`--access-logfile /dev/null` or no access log turns them off.
"""

from __future__ import annotations

import os
import select
import sys
import threading
import time
from collections.abc import Callable
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

    def access_writer(self) -> Callable[[str], None] | None:
        """What the ASGI app (classifier.asgi) gives each access line to: buffered on stdout in the shipped
        format, gunicorn's access logger for any other target (one line at a time), None with no access log."""
        if self._direct:
            return self.write_access
        if not self.cfg.accesslog:
            return None
        return lambda line: self.access_log.info(line.rstrip("\n"))

    def write_access(self, line: str) -> None:
        """Buffer one access line (ending in a newline); written with the others as described above."""
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
