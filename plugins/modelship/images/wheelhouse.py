"""The app's wheels, downloaded once per requirements file: the image installs from them offline."""

from __future__ import annotations

import hashlib
import logging
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO

from modelpkg.atomic import atomic_dir
from modelship.fs import mark_used
from modelship.retry import NoSpace, no_space

log = logging.getLogger("modelship.images")


class WheelhouseError(RuntimeError):
    """pip could not download the wheels; the message carries pip's last lines."""


def wheelhouse(requirements: Path, cache_dir: Path, *, timeout: float = 900) -> Path:
    """Download the wheels for `requirements` into <cache_dir>/wheels/<sha256 of the file>, once.

    The image installs from this folder with --no-index (pip cannot reach PyPI inside `docker build`, and a
    wheelhouse makes the build reproducible). The host runs the same Python minor version as the image, so
    the current interpreter's pip picks the right wheels. Only the file's bytes are the key: a requirements
    file that includes another (-r) must be fully pinned in itself, as app/requirements.txt is.
    """
    requirements = Path(requirements)
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()
    root = Path(cache_dir) / "wheels"
    target = root / key
    if target.is_dir():
        log.info("wheelhouse %s: cached for %s", target, requirements)
        mark_used(target)
        return target
    argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
            "--no-input", "--progress-bar", "off", "-r", str(requirements), "-d"]  # fmt: skip
    log.info("wheelhouse: %s DIR", " ".join(argv))
    started = time.monotonic()
    # Downloaded beside the target and renamed at the end: a failed or killed download leaves no half folder
    # that a later run would mistake for a complete wheelhouse; a concurrent run that finished first wins.
    with atomic_dir(target, keep_existing=True) as staging:
        _run_logged([*argv, str(staging)], timeout=timeout, error=WheelhouseError)
    wheels = sorted(p.name for p in target.glob("*.whl"))
    log.info("wheelhouse %s: %d wheels in %.0fs", target, len(wheels), time.monotonic() - started)
    mark_used(target)
    return target


def _run_logged(argv: list[str], *, timeout: float, error: type[Exception]) -> None:
    """Run a command, streaming its output to the log line by line; raise `error` with its tail."""
    tail: list[str] = []

    def pump(stdout: IO[str]) -> None:
        for line in stdout:
            log.info("  %s", line.rstrip())
            tail.append(line.rstrip())
            del tail[:-20]

    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        # A reader thread, so a command that hangs silently still hits the timeout.
        reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            raise error(f"{' '.join(argv[:5])} … timed out after {timeout:.0f}s:\n" + "\n".join(tail)) from None
        reader.join(5)
    if code != 0:
        if any(no_space(line) for line in tail):
            raise NoSpace(f"no space left on device downloading the wheelhouse ({' '.join(argv[:5])} … exited "
                          f"{code}): free space (`modelship gc` prunes old caches); the task's retry downloads "
                          "again:\n" + "\n".join(tail[-5:]))  # fmt: skip
        raise error(f"{' '.join(argv[:5])} … exited {code}:\n" + "\n".join(tail))
