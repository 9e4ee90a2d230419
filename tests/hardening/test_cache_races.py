"""Two ci runs on one worker share its caches; one finishing must never pull a cache entry from under the
other. The wheelhouse and the model cache already settle such races (tests/plugins); this covers the
app's test environment, built per requirements set and renamed into place when complete."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from modelship import apptests


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout whose app requirements are empty: a real venv, built in seconds, no network."""
    app = tmp_path / "checkout" / "app"
    app.mkdir(parents=True)
    for name in ("requirements.txt", "requirements-test.txt"):
        (app / name).write_text("# nothing to install\n")
    return app.parent


def test_a_run_that_finishes_second_keeps_the_environment_the_first_is_testing_in(
    checkout: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    real_run = subprocess.run
    competitor: dict[str, Path] = {}

    def run(argv, *args, **kwargs):
        done = real_run(argv, *args, **kwargs)
        if "install" in argv and not competitor:
            # While this run installs, another run with the same requirements completes its environment and
            # starts testing in it (a file it has open stands for that).
            building = Path(str(argv[0])).parents[1]  # <cache>/testenv/.<key>.<random>/bin/pip
            venv = building.parent / building.name.split(".")[1]
            venv.mkdir()
            (venv / ".complete").touch()
            (venv / "in-use-by-the-other-run").touch()
            competitor["venv"] = venv
        return done

    monkeypatch.setattr(apptests.subprocess, "run", run)
    venv = apptests.environment(checkout, cache)
    assert venv == competitor["venv"]  # the one environment for these requirements
    assert (venv / "in-use-by-the-other-run").exists()  # not deleted under the other run
    assert [p.name for p in venv.parent.iterdir()] == [venv.name]  # this run's copy is gone, nothing else left
