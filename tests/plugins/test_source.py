"""The commit watcher (modelship.source.NewCommitTrigger) on real git repositories: a push to a repository on
this machine is seen within about a second without running git in between, and a remote that fails is asked
less and less often."""

from __future__ import annotations

import asyncio
import subprocess
import time
from pathlib import Path

import pytest

from modelship import source
from modelship.source import NewCommitTrigger, RefProbe, SourceUnavailable


def _git(*args: str, cwd: Path) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@localhost", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@localhost", "PATH": "/usr/bin:/bin"}  # fmt: skip
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def pushed_to(tmp_path: Path):
    """A bare repository (the "remote" on this machine) and push(n): one more commit pushed to its main."""
    remote, work = tmp_path / "remote.git", tmp_path / "work"
    _git("init", "-q", "--bare", "-b", "main", str(remote), cwd=tmp_path)
    _git("clone", "-q", str(remote), str(work), cwd=tmp_path)
    _git("checkout", "-q", "-b", "main", cwd=work)

    def push(n: int) -> str:
        (work / "f.txt").write_text(f"{n}\n")
        _git("add", "f.txt", cwd=work)
        _git("commit", "-q", "-m", f"change {n}", cwd=work)
        _git("push", "-q", "origin", "main", cwd=work)
        return _git("rev-parse", "HEAD", cwd=work)

    push(0)
    return remote, push


def _counting_head_commit(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[float]:
    calls: list[float] = []
    real = source.head_commit

    def counted(repo: str, branch: str) -> str:
        calls.append(time.monotonic())
        if fail:
            raise SourceUnavailable("git ls-remote failed: the remote is down")
        return real(repo, branch)

    monkeypatch.setattr(source, "head_commit", counted)
    return calls


def test_a_push_to_a_local_repository_is_seen_within_a_second_without_asking_git_in_between(pushed_to, monkeypatch):
    remote, push = pushed_to
    calls = _counting_head_commit(monkeypatch)
    trigger = NewCommitTrigger(repo=str(remote), branch="main", poll_interval=600, local_check=0.1)

    async def scenario() -> tuple[list[str], float, int]:
        events = trigger.run()
        first = await asyncio.wait_for(events.__anext__(), 30)  # the head when the watcher starts
        await asyncio.sleep(1.5)
        asked_while_idle = len(calls)
        commit = await asyncio.to_thread(push, 1)
        pushed = time.monotonic()
        second = await asyncio.wait_for(events.__anext__(), 30)
        await events.aclose()
        return [first.payload["commit"], second.payload["commit"], commit], time.monotonic() - pushed, asked_while_idle

    (first, second, commit), seen_after, asked_while_idle = asyncio.run(scenario())
    assert second == commit != first
    assert seen_after < 1.0, f"the push was seen {seen_after:.2f}s later"
    assert asked_while_idle == 1  # 1.5 s of stat() every 0.1 s, and git asked only once, at the start
    assert len(calls) == 2


def test_the_probe_sees_a_packed_ref_move_too(pushed_to):
    remote, push = pushed_to
    probe = RefProbe.of(str(remote), "main")
    assert probe is not None
    before = probe.signature()
    _git("pack-refs", "--all", cwd=remote)
    assert probe.signature() != before


def test_remotes_are_polled_not_probed():
    assert RefProbe.of("https://example.invalid/org/app.git", "main") is None
    assert RefProbe.of("git@example.invalid:org/app.git", "main") is None
    assert source.default_poll_interval("https://example.invalid/org/app.git") == source.POLL_HTTP
    assert source.default_poll_interval("git@example.invalid:org/app.git") == source.POLL_OTHER


def test_a_failing_remote_is_asked_with_exponential_backoff(monkeypatch):
    calls = _counting_head_commit(monkeypatch, fail=True)
    trigger = NewCommitTrigger(repo="https://127.0.0.1:9/app.git", branch="main", poll_interval=0.05)

    async def scenario() -> None:
        events = trigger.run()
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(events.__anext__(), 1.6)

    asyncio.run(scenario())
    # Every 0.05 s would be 32 asks in 1.6 s; doubling after each failure (0.1, 0.2, 0.4, 0.8) leaves 5.
    assert 3 <= len(calls) <= 6, calls
    gaps = [b - a for a, b in zip(calls, calls[1:], strict=False)]
    assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
