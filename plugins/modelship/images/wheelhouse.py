"""The app's wheels, downloaded once per requirements set: the image (and the app's test environment) install
from them offline.

The requirements files belong to the commit being built, so they are untrusted input for the worker's pip:
a requirements file may name other files (`-r /any/path`, whose lines pip quotes back in its errors), other
indexes or links (`--index-url`, `--find-links`), environment variables (`${NAME}`, expanded by pip) and
source packages (whose setup.py runs as soon as pip looks at them). pip therefore never reads the commit's
files: only their pinned requirements (`name==version`, extras, markers, hashes) are handed to it, every other
line is refused, and only wheels are downloaded (`--only-binary=:all:`). No package code runs on the worker.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from modelpkg.atomic import atomic_dir
from modelship.fs import mark_used
from modelship.retry import NoSpace, Transient, no_space
from modelship.verdicts import Verdict

log = logging.getLogger("modelship.images")

# What pip prints when the index did not answer (worth a retry), as opposed to a requirement that cannot be
# met (a verdict on the commit).
INDEX_UNREACHABLE = ("connection", "timed out", "temporary failure", "network is unreachable", "read timed out",
                     "max retries exceeded", "503", "502", "504")  # fmt: skip
_HASH_OPTION = re.compile(r"\s+--hash[=\s]\S+")


class WheelhouseError(RuntimeError):
    """pip could not download the wheels; the message carries pip's last lines."""


class RequirementsRefused(WheelhouseError, Verdict):
    """A requirements line that is not a pinned requirement (an option, a path, a URL, a variable)."""


class IndexUnavailable(WheelhouseError, Transient):
    """The package index did not answer while the wheels were downloaded: worth a retry."""


def pinned_requirements(path: Path) -> list[str]:
    """The requirements of `path`, one `name[extras]==version[; marker] [--hash=…]` per line, comments dropped;
    RequirementsRefused names the first line that is anything else."""
    from packaging.requirements import InvalidRequirement, Requirement

    pins = []
    for number, raw in enumerate(Path(path).read_text(errors="replace").splitlines(), 1):
        line = re.split(r"(?:^|\s)#", raw, maxsplit=1)[0].strip()
        if not line:
            continue
        requirement = _HASH_OPTION.sub("", " " + line).strip() if "--hash" in line else line
        why = ""
        if "$" in line or line.endswith("\\") or requirement.startswith("-") or " -" in requirement:
            why = "options, line continuations and ${VARIABLES} are not accepted"
        else:
            try:
                parsed = Requirement(requirement)
            except InvalidRequirement:
                why = "not a requirement (name==version)"
            else:
                specs = list(parsed.specifier)
                if parsed.url or len(specs) != 1 or specs[0].operator not in ("==", "===") or "*" in specs[0].version:
                    why = "only exact pins (name==version) are accepted: no URLs, paths, ranges or wildcards"
        if why:
            raise RequirementsRefused(f"{Path(path).name} line {number}: {why}; the line was refused unread by pip")
        pins.append(line)
    return pins


def wheelhouse(requirements: Path | Sequence[Path], cache_dir: Path, *, timeout: float = 900) -> Path:
    """Download the wheels for `requirements` (one file, or several installed together) into
    <cache_dir>/wheels/<key>, once; the key is the sha256 of the file (of the files' bytes, in order).

    The image installs from this folder with --no-index (pip cannot reach PyPI inside `docker build`, and a
    wheelhouse makes the build reproducible). The host runs the same Python minor version as the image, so
    the current interpreter's pip picks the right wheels. Only the pinned requirements of each file are used
    (pinned_requirements): a file that includes another (-r) is refused, so each must be fully pinned in
    itself, as app/requirements.txt is. A sanitised copy of them is what pip reads.
    """
    files = [Path(requirements)] if isinstance(requirements, str | os.PathLike) else [Path(p) for p in requirements]
    contents = [path.read_bytes() for path in files]
    key = hashlib.sha256(contents[0] if len(contents) == 1 else b"\0".join(contents)).hexdigest()
    root = Path(cache_dir) / "wheels"
    target = root / key
    if target.is_dir():
        log.info("wheelhouse %s: cached for %s", target, ", ".join(map(str, files)))
        mark_used(target)
        return target
    pins = [pin for path in files for pin in pinned_requirements(path)]
    root.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # Downloaded beside the target and renamed at the end: a failed or killed download leaves no half folder
    # that a later run would mistake for a complete wheelhouse; a concurrent run that finished first wins.
    with atomic_dir(target, keep_existing=True) as staging, \
            tempfile.NamedTemporaryFile("w", dir=root, prefix=".pins.", suffix=".txt") as pinned:  # fmt: skip
        pinned.write("".join(f"{pin}\n" for pin in pins))
        pinned.flush()
        argv = [sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
                "--no-input", "--progress-bar", "off", "-r", pinned.name, "-d"]  # fmt: skip
        log.info("wheelhouse: %s DIR (%d pinned requirements of %s)", " ".join(argv), len(pins),
                 ", ".join(map(str, files)))  # fmt: skip
        _run_logged([*argv, str(staging)], timeout=timeout, error=WheelhouseError)
    wheels = sorted(p.name for p in target.glob("*.whl"))
    log.info("wheelhouse %s: %d wheels in %.0fs", target, len(wheels), time.monotonic() - started)
    mark_used(target)
    return target


def _run_logged(argv: list[str], *, timeout: float, error: type[WheelhouseError]) -> None:
    """Run pip, streaming its output to the log line by line; raise `error` with its tail (IndexUnavailable
    when the tail says the index did not answer)."""
    tail: list[str] = []

    def pump(stdout: IO[str]) -> None:
        for line in stdout:
            log.info("  %s", line.rstrip())
            tail.append(line.rstrip())
            del tail[:-20]

    # pip is trusted and runs no package code here; the worker's Airflow variables are still none of its business.
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, env=env
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
            said = "\n".join(tail)
            raise IndexUnavailable(f"{' '.join(argv[:5])} … timed out after {timeout:.0f}s:\n{said}") from None
        reader.join(5)
    if code != 0:
        if any(no_space(line) for line in tail):
            raise NoSpace(f"no space left on device downloading the wheelhouse ({' '.join(argv[:5])} … exited "
                          f"{code}): free space (`modelship gc` prunes old caches); the task's retry downloads "
                          "again:\n" + "\n".join(tail[-5:]))  # fmt: skip
        said = "\n".join(tail)
        kind = IndexUnavailable if any(word in said.lower() for word in INDEX_UNREACHABLE) else error
        raise kind(f"{' '.join(argv[:5])} … exited {code}:\n{said}")
