"""The application's source: which commit to build, a clean checkout of it, the branch's history, and a
watcher for new commits.

The source repository is a setting (MODELSHIP_SOURCE_REPO: any URL or path git understands); the default is
this project's own repository, so the embedded default builds its own app/. A bare mirror of it is kept in
the cache folder and fetched incrementally: checkouts and the branch's history read it locally.

Failures are classified (modelship.retry, modelship.verdicts): the remote not answering is transient and
retried; a commit that is not in the repository, or is not a commit at all, is a verdict; refused credentials
are not retried in place.

Credentials in the URL (``https://user:token@host/repo``) never reach a command line, a log, a file or an
artifact: git is given the URL without them (`public_url`) and gets them from a credential helper that reads
them from its environment, which only the git process and its children can read (`_git_environment`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from airflow.triggers.base import BaseEventTrigger, TriggerEvent

from modelpkg.atomic import atomic_dir
from modelship import retry
from modelship.fs import locked
from modelship.verdicts import Verdict

log = logging.getLogger(__name__)

_SHA = re.compile(r"^[0-9a-f]{7,40}$")
FETCH_POLICY = retry.Policy(attempts=4, base=1.0, max_delay=8.0)


class SourceError(RuntimeError):
    """git failed on the repository; the message says which command and what git said."""


class SourceUnavailable(SourceError, retry.Transient):
    """The repository did not answer (network, the remote's outage): worth a retry."""


class CommitNotFound(SourceError, Verdict):
    """The commit (or branch) is not in the repository, or is not a commit sha: asking again cannot help."""


# What git says when the remote refused the credentials (or wanted some and had none): not retried in place.
_REFUSED = ("authentication failed", "could not read username", "could not read password", "the requested url "
            "returned error: 403", "terminal prompts disabled")  # fmt: skip
# The credential helper: a shell function (printf is a builtin: no process carries the secret in its argv).
_HELPER = (
    '!f() { test "$1" = get && printf "username=%s\\npassword=%s\\n" '
    '"$MODELSHIP_GIT_USERNAME" "$MODELSHIP_GIT_PASSWORD"; }; f'
)


def public_url(repo: str) -> str:
    """The repository URL without credentials (``https://token@host/x`` → ``https://host/x``): what may go into
    logs, image labels, /version and lineage. Paths and scp-like addresses (git@host:org/repo) are unchanged."""
    if "://" not in repo:
        return repo
    parts = urlsplit(repo)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def with_credentials(repo: str) -> str:
    """The configured source URL, credentials included, when `repo` is its public form; else `repo` itself.
    What is stored without the credentials (a trigger's arguments) finds them again here, at run time."""
    from modelship.settings import Settings

    configured = Settings.get().source_repo
    return configured if public_url(configured) == repo else repo


def _credentials(repo: str) -> dict[str, str]:
    """The user and password an http(s) URL carries, as the credential helper's environment ({} for none)."""
    if "://" not in repo:
        return {}
    parts = urlsplit(repo)
    if parts.scheme not in ("http", "https") or (parts.username is None and parts.password is None):
        return {}
    return {"MODELSHIP_GIT_USERNAME": unquote(parts.username or ""),
            "MODELSHIP_GIT_PASSWORD": unquote(parts.password or "")}  # fmt: skip


def _git_environment(credentials: dict[str, str]) -> dict[str, str]:
    """git's environment: never a prompt; with credentials, only our helper (config from the environment, git
    >= 2.31: the helper list reset, then ours), so no other helper stores or offers them."""
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0"}
    if credentials:
        env.update(credentials)
        env.update({"GIT_CONFIG_COUNT": "2", "GIT_CONFIG_KEY_0": "credential.helper", "GIT_CONFIG_VALUE_0": "",
                    "GIT_CONFIG_KEY_1": "credential.helper", "GIT_CONFIG_VALUE_1": _HELPER})  # fmt: skip
    return env


def _git(
    *args: str,
    cwd: Path | None = None,
    timeout: float = 120,
    error: type[SourceError] = SourceError,
    credentials: dict[str, str] | None = None,
) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False,
                              env=_git_environment(credentials or {}))  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise SourceUnavailable(f"git {args[0]} timed out after {timeout:.0f}s") from exc
    if done.returncode != 0:
        said = (done.stderr.strip() or done.stdout.strip()).replace("\n", " ")
        for secret in (credentials or {}).values():  # git never prints them; should it ever, not here either
            if secret:
                said = said.replace(secret, "***")
        shown = " ".join(public_url(a) for a in args[:2])
        if error is SourceUnavailable and any(sign in said.lower() for sign in _REFUSED):
            error = SourceError  # refused: asking again with the same credentials cannot help
        raise error(f"git {shown} failed: {said}")
    return done.stdout


def _remote(command: str, repo: str, *args: str, cwd: Path | None = None, timeout: float = 120) -> str:
    """`git <command> [args…]`, "{remote}" among args standing for the remote: its failures are transient,
    retried with backoff. git sees the URL without credentials; they reach it through the helper's environment."""
    argv = [public_url(repo) if arg == "{remote}" else arg for arg in args]
    credentials = _credentials(repo)
    return retry.call(
        lambda: _git(command, *argv, cwd=cwd, timeout=timeout, error=SourceUnavailable, credentials=credentials),
        f"git {command} {public_url(repo)}",
        policy=FETCH_POLICY,
        logger=log,
    )


def head_commit(repo: str, branch: str) -> str:
    """The newest commit of `branch` in `repo` (no clone needed)."""
    out = _remote("ls-remote", repo, "{remote}", f"refs/heads/{branch}")
    if not out.strip():
        raise CommitNotFound(f"branch {branch!r} not found in {public_url(repo)}")
    return out.split()[0]


def mirror(repo: str, cache_dir: Path) -> Path:
    """A bare mirror of `repo`'s branches under cache_dir/git, fetched now (only what is new travels)."""
    # Keyed by the URL without credentials: a rotated token keeps its mirror.
    path = Path(cache_dir) / "git" / (hashlib.sha256(public_url(repo).encode()).hexdigest()[:16] + ".git")
    if not (path / "HEAD").exists():
        with atomic_dir(path, keep_existing=True) as staging:
            _git("init", "-q", "--bare", str(staging))
    with locked(path / "modelship.lock"):
        _remote("fetch", repo, "--quiet", "--prune", "--no-tags", "{remote}", "+refs/heads/*:refs/heads/*",
                cwd=path, timeout=600)  # fmt: skip
    return path


def branch_history(repo: str, branch: str, cache_dir: Path, limit: int = 500) -> list[str]:
    """The commits of `branch`, newest first, along its first-parent line (what the branch *was*, in order)."""
    local = mirror(repo, cache_dir)
    try:
        out = _git("rev-list", "--first-parent", f"--max-count={limit}", f"refs/heads/{branch}", cwd=local,
                   error=CommitNotFound)  # fmt: skip
    except CommitNotFound:
        raise CommitNotFound(f"branch {branch!r} not found in {public_url(repo)}") from None
    return out.split()


def checkout(repo: str, commit: str, dest: Path, cache_dir: Path | None = None) -> str:
    """A clean checkout of exactly `commit` at `dest` (created); returns the full commit sha.

    With a cache folder the repository's mirror there is fetched (incrementally) and checked out from;
    without one, the remote is fetched whole. A commit that is not in the repository fails with a message
    naming it, and leaves nothing at dest.
    """
    if not _SHA.match(commit):
        raise CommitNotFound(f"commit {commit!r} is not a commit sha (7 to 40 hex digits)")
    source = str(mirror(repo, cache_dir)) if cache_dir is not None else repo
    with atomic_dir(dest) as tmp:
        _git("init", "-q", str(tmp))
        if cache_dir is not None:
            _git("fetch", "-q", "--no-tags", source, "+refs/heads/*:refs/remotes/origin/*", cwd=tmp, timeout=600)
        else:
            _remote("fetch", repo, "-q", "--no-tags", "{remote}", "+refs/heads/*:refs/remotes/origin/*", cwd=tmp,
                    timeout=600)  # fmt: skip
        try:
            full = _git("rev-parse", "--verify", f"{commit}^{{commit}}", cwd=tmp).strip()
        except SourceError:
            raise CommitNotFound(f"commit {commit} is not in {public_url(repo)}") from None
        _git("-c", "advice.detachedHead=false", "checkout", "-q", full, cwd=tmp)
    log.info("checked out %s of %s into %s", full[:12], public_url(repo), dest)
    return full


def commit_subject(workdir: Path) -> str:
    return _git("log", "-1", "--format=%s", cwd=workdir).strip()


# How often the watcher asks the repository for the branch head (git ls-remote), by where it is. A repository
# on this machine is also watched by stat() every LOCAL_CHECK seconds, and asked at once when its ref moves.
POLL_HTTP = 5.0  # one protocol-v2 ls-refs of the branch (two small requests), 12 a minute
POLL_OTHER = 30.0  # ssh (a new connection each time), git://, and the periodic check of a local repository
LOCAL_CHECK = 1.0
MAX_BACKOFF = 300.0  # a remote that keeps failing is asked less and less often, down to every 5 minutes


def local_path(repo: str) -> Path | None:
    """The folder of `repo` when it is a repository on this machine (a path or a file:// URL); else None."""
    if repo.startswith("file://"):
        path = Path(unquote(urlsplit(repo).path))
    elif "://" in repo or re.match(r"^[^/]+:", repo):  # a URL, or scp-like user@host:path
        return None
    else:
        path = Path(repo)
    return path if path.is_dir() else None


def default_poll_interval(repo: str) -> float:
    return POLL_HTTP if repo.startswith(("http://", "https://")) else POLL_OTHER


class RefProbe:
    """Whether a local repository's branch may have moved, from stat() of the files git keeps that ref in
    (no git process): its loose ref, packed-refs, and reftable's list where that format is used. A push, a
    commit, a fetch or `git pack-refs` rewrites one of them (a new file renamed into place)."""

    def __init__(self, git_dir: Path, branch: str) -> None:
        refs = git_dir / "refs" / "heads" / branch
        self.paths = (refs, git_dir / "packed-refs", git_dir / "reftable" / "tables.list")

    @classmethod
    def of(cls, repo: str, branch: str) -> RefProbe | None:
        path = local_path(repo)
        if path is None:
            return None
        try:
            common = _git("rev-parse", "--git-common-dir", cwd=path, timeout=30).strip()
        except SourceError:
            return None  # not a repository (yet): the periodic ls-remote says so
        return cls((path / common).resolve(), branch)

    def signature(self) -> tuple[tuple[int, int, int] | None, ...]:
        def key(p: Path) -> tuple[int, int, int] | None:
            try:
                st = os.stat(p)
            except OSError:
                return None
            return (st.st_ino, st.st_mtime_ns, st.st_size)

        return tuple(key(p) for p in self.paths)


class NewCommitTrigger(BaseEventTrigger):
    """Fires once for every new head commit of a branch: the `commits` Asset's watcher starts CI.

    It asks the repository (git ls-remote) every `poll_interval` seconds: by default 5 for an http(s) remote, 30
    otherwise (MODELSHIP_SOURCE_POLL). A repository on this machine is also watched every `local_check` seconds
    (MODELSHIP_SOURCE_LOCAL_CHECK; 0: off) by stat() of its ref files, so a push is seen within about a second
    without running git. A remote that fails is asked with exponential backoff (up to 5 minutes) until it answers.

    The last commit it fired for is kept in the Asset's state store, so a restarted triggerer does not
    start CI again for a commit it already announced. Its arguments are stored (Airflow's trigger table, the
    serialized DAG), so the repository is kept without credentials; they are looked up when it polls.
    """

    def __init__(
        self,
        repo: str,
        branch: str,
        poll_interval: float | None = None,
        local_check: float = LOCAL_CHECK,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.repo = public_url(repo)
        self.branch = branch
        self.poll_interval = poll_interval or default_poll_interval(repo)
        self.local_check = local_check

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (
            "modelship.source.NewCommitTrigger",
            {"repo": self.repo, "branch": self.branch, "poll_interval": self.poll_interval,
             "local_check": self.local_check},
        )  # fmt: skip

    async def _last_seen(self) -> str | None:
        if self.asset_state_store is None:
            return getattr(self, "_seen", None)
        return await self.asset_state_store.aget("last_commit")

    async def _remember(self, commit: str) -> None:
        self._seen = commit
        if self.asset_state_store is not None:
            await self.asset_state_store.aset("last_commit", commit)

    async def run(self) -> AsyncIterator[TriggerEvent]:
        probe = await asyncio.to_thread(RefProbe.of, self.repo, self.branch) if self.local_check > 0 else None
        signature: tuple[Any, ...] | None = None
        asked_at: float | None = None
        failures = 0
        while True:
            interval = min(self.poll_interval * 2**failures, max(MAX_BACKOFF, self.poll_interval))
            due = asked_at is None or time.monotonic() - asked_at >= interval
            if not due and probe is not None:
                due = probe.signature() != signature
            if due:
                if probe is not None:
                    signature = probe.signature()  # before asking: a move after this is seen on the next check
                asked_at = time.monotonic()
                try:
                    commit = await asyncio.to_thread(head_commit, with_credentials(self.repo), self.branch)
                except SourceError as exc:
                    failures += 1
                    self.log.warning("cannot read %s@%s (asking again in %.0f s): %s", public_url(self.repo),
                                     self.branch, min(self.poll_interval * 2**failures, MAX_BACKOFF), exc)  # fmt: skip
                else:
                    failures = 0
                    if commit != await self._last_seen():
                        self.log.info("new commit on %s: %s", self.branch, commit)
                        await self._remember(commit)
                        yield TriggerEvent({"commit": commit, "repo": public_url(self.repo), "branch": self.branch})
            await asyncio.sleep(self.local_check if probe is not None else interval)
