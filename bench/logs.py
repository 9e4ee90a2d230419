"""Where a benchmark's output goes, and its entry point: chatty components (dag.test(), Airflow's structlog)
write to a log file per topic, the console keeps the measurements."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from bench import STATE
from bench.report import Report


@contextlib.contextmanager
def output_to(path: Path) -> Iterator[None]:
    """Send this process's stdout and stderr (file descriptors, so Airflow's structlog too) to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


def log_file(topic: str) -> Path:
    return STATE / "logs" / f"{topic}.log"


def quiet_logs() -> None:
    """INFO from modelship, WARNING from everything else (dag.test() is chatty)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("bench", "modelship"):
        logging.getLogger(name).setLevel(logging.INFO)


def run_cli(fn: Callable[[], Report]) -> None:
    """Entry point of each bench module: run, save the report, exit non-zero only on a crash."""
    quiet_logs()
    report = fn()
    report.save()
