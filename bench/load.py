"""Requests against the served app: the /score body every serving benchmark sends, waiting until a port
answers, a constant open-loop load that records every request, and wrk's closed-loop throughput."""

from __future__ import annotations

import http.client
import json
import re
import resource
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from modelship import net


def sample_request() -> bytes:
    """The /score body every serving benchmark sends: one held-out digit as a 64x64 PNG."""
    import base64

    from modelship.images import sample_digit

    png, _ = sample_digit()
    return json.dumps({"images": [base64.b64encode(png).decode("ascii")]}).encode()


def wait_http(port: int, path: str = "/readyz", timeout: float = 60) -> None:
    def ok() -> bool:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            return conn.getresponse().status == 200
        except OSError:
            return False

    net.wait_for(ok, f"127.0.0.1:{port}{path}", timeout=timeout)


class Sent(NamedTuple):
    """One request of a load: when it started, whether it got a 200, the status or error, how long it took."""

    started: float
    ok: bool
    detail: str
    seconds: float


class ConstantLoad:
    """A steady, bounded open-loop load: `rate` POST /score a second on a fresh connection each (loopback).

    Every request is recorded (Sent), so a benchmark or a test can count the failures in a window, e.g.
    during a release's swap, and compare the latency then with the steady state.
    """

    def __init__(self, port: int, body: bytes, rate: float = 10.0, timeout: float = 5.0) -> None:
        self.port, self.body, self.interval, self.timeout = port, body, 1.0 / rate, timeout
        self.records: list[Sent] = []
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    def _one(self) -> None:
        started = time.monotonic()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
            conn.request("POST", "/score", self.body, {"Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            conn.close()
            ok, detail = response.status == 200, str(response.status)
        except (OSError, http.client.HTTPException) as exc:
            ok, detail = False, type(exc).__name__
        with self._lock:
            self.records.append(Sent(started, ok, detail, time.monotonic() - started))

    def _loop(self) -> None:
        next_at = time.monotonic()
        while not self._stop.is_set():
            thread = threading.Thread(target=self._one, daemon=True)
            thread.start()
            self._threads.append(thread)
            next_at += self.interval
            self._stop.wait(max(0.0, next_at - time.monotonic()))

    def __enter__(self) -> ConstantLoad:
        self._runner = threading.Thread(target=self._loop, daemon=True)
        self._runner.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._runner.join()
        for thread in self._threads:
            thread.join(self.timeout + 1)

    def window(self, start: float = 0.0, end: float = float("inf")) -> list[Sent]:
        return [r for r in self.records if start <= r.started <= end]

    def failures(self, start: float = 0.0, end: float = float("inf")) -> list[Sent]:
        return [r for r in self.window(start, end) if not r.ok]

    def summary(self, start: float = 0.0, end: float = float("inf")) -> dict[str, float | int]:
        """What was sent in a window: counts (failed = not 200; connection errors among them) and latency."""
        sent = self.window(start, end)
        seconds = (sent[-1].started - sent[0].started) if len(sent) > 1 else 0.0
        times = sorted(r.seconds for r in sent if r.ok)
        return {
            "sent": len(sent),
            "failed": sum(not r.ok for r in sent),
            "connection_errors": sum(not r.ok and not r.detail.isdigit() for r in sent),
            "rate": round(len(sent) / seconds, 1) if seconds else 0.0,
            "p50_ms": round(1000 * statistics.median(times), 1) if times else float("nan"),
            "p99_ms": round(1000 * times[min(len(times) - 1, int(0.99 * len(times)))], 1) if times else float("nan"),
            # what failed, by status or exception (a TimeoutError after `timeout` s is a starved server, a
            # ConnectionResetError or ConnectionRefusedError a gap in serving), and when, relative to the first
            "errors": dict(Counter(r.detail for r in sent if not r.ok)),
            "failed_at_s": [round(r.started - sent[0].started, 2) for r in sent if not r.ok][:20],
        }


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    value, unit = re.match(r"([\d.]+)(us|ms|s|m)$", text).groups()
    return float(value) * _UNITS[unit]


def wrk(port: int, script: Path, clients: int, seconds: float) -> dict[str, float]:
    threads = min(clients, 2)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    done = subprocess.run(
        ["wrk", "-t", str(threads), "-c", str(clients), "-d", f"{seconds:g}s", "--latency", "--timeout", "10s",
         "-s", str(script), f"http://127.0.0.1:{port}/score"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = done.stdout
    latency = dict(re.findall(r"^\s+(50|99)%\s+(\S+)$", out, re.MULTILINE))
    if set(latency) != {"50", "99"}:  # no request completed: wrk prints no distribution
        raise RuntimeError(f"wrk got no answers from 127.0.0.1:{port}:\n{out}\n{done.stderr}")
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50_ms": _ms(latency["50"]),
        "p99_ms": _ms(latency["99"]),
        "requests": total,
        "errors": (int(bad.group(1)) if bad else 0) + (sum(map(int, socket.groups())) if socket else 0),
        "client_cpu_s": (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime),
    }
