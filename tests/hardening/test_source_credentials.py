"""A source repository URL that carries credentials (https://user:token@host/repo, MODELSHIP_SOURCE_REPO) against
a real git server that wants them (tests/githttp.py): the credentials work, and they are copied nowhere — not
onto a command line (`ps` shows every user those: tests/pswatch.py samples them throughout), not into a log, an
error, the mirror or the checkout on disk, the image's build args (label, ENV, /version), the commits watcher's
stored arguments or the lineage. Refused credentials fail without retries in place.
"""

from __future__ import annotations

import logging
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelship import source
from modelship.images import Lineage
from modelship.lineage import commits_asset
from modelship.openlineage import git_namespace
from tests.e2e.pipeline import git
from tests.githttp import GitHTTPServer
from tests.logcapture import log_messages
from tests.pswatch import shown_by_ps

USER = "ci-bot"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[GitHTTPServer]:
    """A bare repository `app` with two commits on main, served with a random password."""
    work = tmp_path / "work"
    work.mkdir()
    who = ("-c", "user.name=test", "-c", "user.email=test@localhost")
    git("init", "-q", "-b", "main", str(work))
    for number in (1, 2):
        (work / "README.md").write_text(f"commit {number}\n")
        git("add", "README.md", cwd=work)
        git(*who, "commit", "-qm", f"commit {number}", cwd=work)
    root = tmp_path / "served"
    root.mkdir()
    git("clone", "-q", "--bare", str(work), str(root / "app.git"))
    served = GitHTTPServer(root, USER, "pw-" + secrets.token_hex(12))
    try:
        yield served
    finally:
        served.close()


def test_ps_sampling_sees_a_password_on_a_short_lived_command_line() -> None:
    """The check below can fail: a secret on a command line that lives 0.3 s is seen."""
    secret = "pw-" + secrets.token_hex(12)
    with shown_by_ps([secret]) as seen:
        subprocess.run(["sh", "-c", "sleep 0.3", "careless", f"--password={secret}"], check=True)
    assert seen.found and any(secret in line for line in seen.found.values())


def test_a_source_url_with_credentials_works_and_ps_logs_errors_and_disk_never_show_them(
    server: GitHTTPServer, tmp_path: Path
) -> None:
    url = server.url("app")
    expected = git("rev-parse", "main", cwd=server.root / "app.git")
    with shown_by_ps([server.password]) as seen, log_messages("modelship.source", logging.DEBUG) as logged:
        head = source.head_commit(url, "main")
        history = source.branch_history(url, "main", tmp_path / "cache")
        full = source.checkout(url, head[:12], tmp_path / "src", cache_dir=tmp_path / "cache")
        uncached = source.checkout(url, head, tmp_path / "src2")  # straight from the remote
        with pytest.raises(source.CommitNotFound) as missing:
            source.checkout(url, "0" * 40, tmp_path / "src3", cache_dir=tmp_path / "cache")
    assert head == full == uncached == expected and len(history) == 2
    assert [status for _, status in server.requests].count(200) >= 4  # the server checked the credentials
    assert 401 in [status for _, status in server.requests]  # and asked for them (nothing sent unasked)
    assert seen.found == {} and seen.samples > 10, seen  # no command line ever held the password
    assert not any(server.password in m for m in logged), logged
    assert server.password not in str(missing.value) and USER not in str(missing.value)
    on_disk = [p for folder in ("cache", "src", "src2") for p in (tmp_path / folder).rglob("*") if p.is_file()]
    assert on_disk and not [p for p in on_disk if server.password.encode() in p.read_bytes()]


def test_refused_credentials_fail_at_once_without_retries_or_the_password_in_the_error(
    server: GitHTTPServer, tmp_path: Path
) -> None:
    wrong = server.url("app", password="not-" + server.password)
    with pytest.raises(source.SourceError) as refused:
        source.head_commit(wrong, "main")
    assert not isinstance(refused.value, source.SourceUnavailable)  # not an outage: no retry in place
    assert "Authentication failed" in str(refused.value) and server.password not in str(refused.value)
    assert len([line for line, _ in server.requests if "info/refs" in line]) <= 2  # one git call: ask, answer


def test_the_url_is_copied_nowhere_with_its_credentials(server: GitHTTPServer) -> None:
    url, public = server.url("app"), server.public_url("app")
    assert source.public_url(url) == public
    # The image: build args become a label, ENV IMAGE_SOURCE and /version's image.source.
    args = Lineage(commit="c" * 40, model_name="digits", model_version="v1", model_sha256="0" * 64,
                   source=url).build_args("base")  # fmt: skip
    assert args["SOURCE_URL"] == public
    # The commits watcher's trigger: its arguments are stored by Airflow (trigger table, serialized DAG).
    [watcher] = commits_asset(url, "main").watchers
    _, kwargs = watcher.trigger.serialize()
    assert kwargs["repo"] == public and server.password not in repr(kwargs)
    # OpenLineage: the commit dataset's namespace.
    assert git_namespace(url) == f"git://127.0.0.1:{server.port}/app.git"


def test_the_commits_watcher_finds_the_credentials_again_when_it_polls(
    server: GitHTTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    import asyncio

    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", server.url("app"))
    trigger = commits_asset(server.url("app"), "main").watchers[0].trigger

    async def first_event():
        return await anext(trigger.run())

    event = asyncio.run(asyncio.wait_for(first_event(), 60))
    assert event.payload["commit"] == git("rev-parse", "main", cwd=server.root / "app.git")
    assert event.payload["repo"] == server.public_url("app")
