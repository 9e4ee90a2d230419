"""Loopback helpers: a free port, whether something listens, and polling until a condition holds.

Everything modelship starts (smoke-test containers, deploy candidates, the local stack) binds 127.0.0.1.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from pathlib import Path


class NotReady(TimeoutError):
    """A condition did not come true in time; the message says what was awaited (and a log's tail)."""


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now (the kernel's pick)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    """Whether something accepts TCP connections on host:port."""
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0


def wait_for(
    check: Callable[[], bool], what: str, timeout: float = 60.0, *, interval: float = 0.2, log: Path | None = None
) -> None:
    """Poll ``check`` until it returns True; NotReady after ``timeout`` seconds, with ``log``'s last lines."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(interval)
    tail = ""
    if log and log.exists():
        tail = "\n" + "\n".join(log.read_text(errors="replace").splitlines()[-20:])
    raise NotReady(f"{what} did not become ready within {timeout:.0f}s{tail}")


TCP_MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")


def ensure_tcp_migrate_req() -> bool:
    """Turn on net.ipv4.tcp_migrate_req (Linux >= 5.14) if it is off and this process may: requests queued on a
    listener that closes then move to another listener of the same SO_REUSEPORT port instead of being reset,
    which is what lets one server hand a port over to another without dropping a request. True when on."""
    try:
        if TCP_MIGRATE_REQ.read_text().strip() == "1":
            return True
        TCP_MIGRATE_REQ.write_text("1\n")
    except OSError:  # no such setting (older kernel), or not root: the hand-over still works, less tightly
        return False
    return True

