"""What `ps` shows every user of the machine: each process's command line (/proc/<pid>/cmdline is world-readable).

`shown_by_ps(secrets)` samples every command line, every few milliseconds, while its block runs, and records
each one that holds a secret (`secrets` is read on every pass: a list may grow while the block runs). Sampling
can miss a process that lives less than a sample; it is shown to catch a secret on a command line that lives
0.3 s (tests/hardening/test_source_credentials.py).
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field


@dataclass
class Sightings:
    found: dict[str, str] = field(default_factory=dict)  # "<pid>" → the command line, where a secret showed
    samples: int = 0  # full passes over /proc
    processes: int = 0  # command lines read


def command_lines() -> dict[int, bytes]:
    lines = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{name}/cmdline", "rb") as handle:
                lines[int(name)] = handle.read()
    return lines


@contextlib.contextmanager
def shown_by_ps(secrets: Iterable[str], interval: float = 0.002) -> Iterator[Sightings]:
    seen = Sightings()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            wanted = [s.encode() for s in list(secrets) if s]
            for pid, line in command_lines().items():
                seen.processes += 1
                if any(secret in line for secret in wanted):
                    seen.found[str(pid)] = line.replace(b"\0", b" ").decode(errors="replace")
            seen.samples += 1
            stop.wait(interval)

    sampler = threading.Thread(target=sample, name="pswatch", daemon=True)
    sampler.start()
    try:
        yield seen
    finally:
        stop.set()
        sampler.join(10)
