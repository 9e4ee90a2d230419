"""Two ci runs on one worker share its caches; one finishing must never pull a cache entry from under the
other, and a run that loses a race must still end green with a complete copy. Each cache is built aside and
renamed into place when complete: the app's test environment, the wheelhouse, the model cache.

The races are forced, not hoped for: the wheelhouse's two downloads are held by the loopback index serving
them until both have asked (so both are mid-download at once), and one model fetch is held mid-download by
a proxy (tests/faultproxy.py) while the other fetches the same version into the same cache and finishes.
"""

from __future__ import annotations

import io
import json
import subprocess
import threading
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from devstack import components
from modelpkg.manifest import manifest_sha256, verify_package
from modelship import apptests, net
from modelship.images import wheelhouse
from modelship.model_store import BlobModelStore
from tests.faultproxy import FaultProxy, Watch


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


# --- the wheelhouse: two downloads of the same requirements at once ------------------------------------------


def tiny_wheel() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as wheel:
        wheel.writestr("tinypkg/__init__.py", "")
        wheel.writestr("tinypkg-1.0.dist-info/METADATA", "Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n")
        wheel.writestr("tinypkg-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("tinypkg-1.0.dist-info/RECORD", "")
    return buffer.getvalue()


@pytest.fixture
def held_index(monkeypatch: pytest.MonkeyPatch) -> Iterator[threading.Barrier]:
    """A package index on 127.0.0.1 (pip's find-links) whose one wheel is served only once two downloads
    have asked for it; pip goes there and nowhere else."""
    wheel, name = tiny_wheel(), "tinypkg-1.0-py3-none-any.whl"
    both = threading.Barrier(2, timeout=120)

    class Index(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            if self.path.endswith(".whl"):
                both.wait()  # the first download waits here for the second
                body, kind = wheel, "application/octet-stream"
            else:
                body, kind = f'<a href="/{name}">{name}</a>'.encode(), "text/html"
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", net.free_port()), Index)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    index = f"http://127.0.0.1:{server.server_address[1]}/"
    for key, value in {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": index, "PIP_TRUSTED_HOST": "127.0.0.1"}.items():
        monkeypatch.setenv(key, value)
    try:
        yield both
    finally:
        server.shutdown()
        server.server_close()


def test_two_runs_downloading_the_same_wheelhouse_at_once_both_get_the_complete_one(
    held_index: threading.Barrier, tmp_path: Path
) -> None:
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("tinypkg==1.0\n")
    cache = tmp_path / "cache"
    results: dict[str, Path | BaseException] = {}

    def run(name: str) -> None:
        try:
            results[name] = wheelhouse(requirements, cache)
        except BaseException as exc:  # noqa: BLE001 (reported below)
            results[name] = exc

    runs = [threading.Thread(target=run, args=(name,)) for name in ("first", "second")]
    for thread in runs:
        thread.start()
    for thread in runs:
        thread.join(300)
    assert held_index.n_waiting == 0 and not held_index.broken  # both downloads were in flight at once
    assert results["first"] == results["second"], results  # one wheelhouse, whoever renamed it first
    target = results["first"]
    assert isinstance(target, Path) and [p.name for p in target.glob("*.whl")] == ["tinypkg-1.0-py3-none-any.whl"]
    assert [p.name for p in (cache / "wheels").iterdir()] == [target.name]  # the loser's copy is gone


# --- the model cache: a fetch held mid-download while another fills the same entry --------------------------


@pytest.mark.azurite
def test_a_fetch_that_loses_the_race_for_a_model_cache_entry_still_ends_green(
    azurite: components.Azurite, hardening_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(azurite.port, name="azurite-proxy") as proxy:
        through = azurite.connection_string.replace(f"127.0.0.1:{azurite.port}", proxy.address)
        for conn_id, conn in (("race_direct", azurite.connection_string), ("race_proxied", through)):
            monkeypatch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}",
                               json.dumps({"conn_type": "wasb", "extra": {"connection_string": conn}}))  # fmt: skip
        container = f"race-{uuid.uuid4().hex[:12]}"
        cache = tmp_path / "cache"
        BlobModelStore(container, "race_direct").publish(hardening_model)
        winner_done = threading.Event()
        outcome: dict[str, object] = {}

        def the_other_run_finishes_first() -> None:
            # Mid-download for the slow run: the other run fetches the same version into the same cache.
            try:
                winner = BlobModelStore(container, "race_direct", cache_dir=cache)
                outcome["winner"] = winner.fetch("digits", "v1", tmp_path / "winner")
            finally:
                winner_done.set()

        held = Watch(match=r"GET .*/model\.onnx", after=0, then=the_other_run_finishes_first)
        proxy.arm(held)
        slow = BlobModelStore(container, "race_proxied", cache_dir=cache)
        manifest = slow.fetch("digits", "v1", tmp_path / "slow")
    assert held.fired == 1 and winner_done.is_set() and outcome["winner"] == manifest
    assert verify_package(tmp_path / "slow") == manifest == verify_package(tmp_path / "winner")
    sha = manifest_sha256(hardening_model)
    assert [p.name for p in cache.iterdir()] == [sha]  # one entry, no staging folder left behind
    assert verify_package(cache / sha) == manifest
