"""The application's source: which commit to build, a clean checkout of it, and a watcher for new commits.

The source repository is a setting (MODELSHIP_SOURCE_REPO: any URL or path git understands); the
default is this project's own repository, so the embedded default builds its own app/.
"""

from __future__ import annotations

import asyncio
import logging
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{7,40}$")


class SourceError(RuntimeError):
    """The repository, branch or commit could not be resolved or checked out."""


def _git(*args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise SourceError(f"git {args[0]} timed out after {timeout:.0f}s") from exc
    if done.returncode != 0:
        raise SourceError(f"git {' '.join(args[:2])} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def head_commit(repo: str, branch: str) -> str:
    """The newest commit of `branch` in `repo` (no clone needed)."""
    out = _git("ls-remote", repo, f"refs/heads/{branch}")
    if not out.strip():
        raise SourceError(f"branch {branch!r} not found in {repo}")
    return out.split()[0]


def checkout(repo: str, commit: str, dest: Path) -> str:
    """A clean checkout of exactly `commit` at `dest` (created); returns the full commit sha.

    A commit that is not in the repository fails with a message naming it, and leaves nothing at dest.
    """
    if not _SHA.match(commit):
        raise SourceError(f"commit {commit!r} is not a commit sha (7 to 40 hex digits)")
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        _git("init", "-q", str(tmp))
        _git("fetch", "-q", "--no-tags", repo, "+refs/heads/*:refs/remotes/origin/*", cwd=tmp, timeout=600)
        try:
            full = _git("rev-parse", "--verify", f"{commit}^{{commit}}", cwd=tmp).strip()
        except SourceError:
            raise SourceError(f"commit {commit} is not in {repo}") from None
        _git("-c", "advice.detachedHead=false", "checkout", "-q", full, cwd=tmp)
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("checked out %s of %s into %s", full[:12], repo, dest)
    return full


def commit_subject(workdir: Path) -> str:
    return _git("log", "-1", "--format=%s", cwd=workdir).strip()


class NewCommitTrigger(BaseEventTrigger):
    """Fires once for every new head commit of a branch: the `commits` Asset's watcher starts CI.

    The last commit it fired for is kept in the Asset's state store, so a restarted triggerer does not
    start CI again for a commit it already announced.
    """

    def __init__(self, repo: str, branch: str, poll_interval: float = 30.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.repo = repo
        self.branch = branch
        self.poll_interval = poll_interval

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "modelship.source.NewCommitTrigger",
            {"repo": self.repo, "branch": self.branch, "poll_interval": self.poll_interval},
        )

    async def _last_seen(self) -> str | None:
        if self.asset_state_store is None:
            return getattr(self, "_seen", None)
        return await self.asset_state_store.aget("last_commit")

    async def _remember(self, commit: str) -> None:
        self._seen = commit
        if self.asset_state_store is not None:
            await self.asset_state_store.aset("last_commit", commit)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        while True:
            try:
                commit = await asyncio.to_thread(head_commit, self.repo, self.branch)
            except SourceError as exc:
                self.log.warning("cannot read %s@%s (will retry): %s", self.repo, self.branch, exc)
            else:
                if commit != await self._last_seen():
                    self.log.info("new commit on %s: %s", self.branch, commit)
                    await self._remember(commit)
                    yield TriggerEvent({"commit": commit, "repo": self.repo, "branch": self.branch})
            await asyncio.sleep(self.poll_interval)
