"""Run the application's own tests for a checkout, in an isolated and cached environment.

The environment is a venv built from the checkout's app/requirements.txt and app/requirements-test.txt,
keyed by the sha256 of both files: a commit that changes no requirement reuses it (seconds, not
minutes); one that does gets its own. Airflow's environment is never used for app code.
"""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

from modelpkg.atomic import atomic_dir
from modelship.fs import mark_used
from modelship.retry import Transient
from modelship.verdicts import Verdict

log = logging.getLogger(__name__)

REQUIREMENTS = ("app/requirements.txt", "app/requirements-test.txt")
# What pip prints when the index did not answer (worth a retry), as opposed to a requirement that cannot
# be met (a verdict on the commit).
_PIP_UNREACHABLE = ("connection", "timed out", "temporary failure", "network is unreachable", "read timed out",
                    "max retries exceeded", "503", "502", "504")  # fmt: skip


class AppTestsFailed(Verdict, RuntimeError):
    """The app's tests failed for this commit (or its requirements cannot be installed); the message says how."""


class TestEnvironmentUnavailable(Transient, RuntimeError):
    """The package index did not answer while the test environment was built: worth a retry."""


def environment(checkout: Path, cache_dir: Path) -> Path:
    """The venv for this checkout's requirements, created once (atomically) and reused."""
    digest = hashlib.sha256()
    for rel in REQUIREMENTS:
        path = checkout / rel
        if not path.exists():
            raise AppTestsFailed(f"{rel} is missing in the checkout: cannot build the test environment")
        digest.update(path.read_bytes())
    venv = cache_dir / "testenv" / digest.hexdigest()[:16]
    if (venv / ".complete").exists():
        log.info("reusing the cached test environment %s", venv)
        mark_used(venv)
        return venv
    log.info("creating the test environment %s (first use of these requirements)", venv)
    # Renamed into place only when complete, so a broken install is never reused; a concurrent run that
    # finished first keeps its own (it may be testing in it). Console scripts keep the staging path in their
    # shebangs, hence `python -m pytest` below.
    with atomic_dir(venv, keep_existing=True) as tmp:
        subprocess.run([sys.executable, "-m", "venv", str(tmp)], check=True)
        args = [str(tmp / "bin" / "pip"), "install", "-q", "--disable-pip-version-check"]
        for rel in REQUIREMENTS:
            args += ["-r", str(checkout / rel)]
        done = subprocess.run(args, capture_output=True, text=True)
        if done.returncode != 0:
            said = done.stderr[-2000:]
            if any(word in said.lower() for word in _PIP_UNREACHABLE):
                raise TestEnvironmentUnavailable(f"the package index did not answer while installing:\n{said}")
            raise AppTestsFailed(f"installing the test requirements failed:\n{said}")
        (tmp / ".complete").touch()
    mark_used(venv)
    return venv


def run(
    checkout: Path, cache_dir: Path, paths: tuple[str, ...] = ("tests/app",), timeout: float = 1200
) -> str:
    """Run pytest on `paths` in the checkout; returns pytest's summary line or raises AppTestsFailed."""
    venv = environment(checkout, cache_dir)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PYTHON"))}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    # The checkout is not installed in the venv: subprocesses the tests start (python -m training.train)
    # find its packages the way pytest's own `pythonpath` setting does.
    env["PYTHONPATH"] = os.pathsep.join(str(checkout / p) for p in (".", "plugins", "app"))
    cmd = [str(venv / "bin" / "python"), "-m", "pytest", "-q", "-p", "no:cacheprovider", *paths]
    log.info("running %s in %s", " ".join(cmd[2:]), checkout)
    try:
        done = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise AppTestsFailed(f"the app's tests did not finish within {timeout:.0f}s") from exc
    lines = (done.stdout + done.stderr).strip().splitlines()
    for line in lines[-40:]:
        log.info("pytest | %s", line)
    summary = lines[-1] if lines else "(no output)"
    if done.returncode != 0:
        failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:10]
        raise AppTestsFailed(f"the app's tests failed: {summary}" + "".join(f"\n  {f}" for f in failed))
    return summary
