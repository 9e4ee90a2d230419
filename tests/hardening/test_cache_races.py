"""Two ci runs on one worker share its caches; one finishing must never pull a cache entry from under the
other, and a run that loses a race must still end green with a complete copy: the app's test environment
(the image `modelship-testenv:<key>` on the engine, tagged when complete), the wheelhouse and the model cache
(each built aside and renamed into place when complete).

The races are forced, not hoped for: both test-environment builds are held until each has found none; the
wheelhouse's two downloads are held by the loopback index serving them until both have asked (so both are
mid-download at once), and one model fetch is held mid-download by a proxy (tests/faultproxy.py) while the
other fetches the same version into the same cache and finishes.
"""

from __future__ import annotations

import contextlib
import io
import json
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import docker
import pytest

from devstack import components, rootfs
from modelpkg.manifest import manifest_sha256, verify_package
from modelship import apptests, net
from modelship.images import wheelhouse
from modelship.model_store import BlobModelStore
from tests.containment import make_checkout
from tests.faultproxy import FaultProxy, Watch
from tests.logcapture import log_messages

# Both runs' tests wait until the test lets them go (SIGWINCH, forwarded by the container's init to
# pytest; ignored by default, so one that comes before the handler is in place does no harm: it comes again).
WAITING_TEST = """\
import signal
import time

RELEASED = []
signal.signal(signal.SIGWINCH, lambda *args: RELEASED.append(1))


def test_waits_until_released():
    deadline = time.monotonic() + 300
    while not RELEASED:
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.1)
"""


@pytest.mark.docker
def test_a_run_that_finishes_its_build_second_keeps_the_environment_the_first_is_testing_in(
    docker_engine, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {"MODELSHIP_DOCKER_HOST": docker_engine.url, "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
                       "MODELSHIP_STATE": str(tmp_path / "state")}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    # An environment no run has built yet: both runs find none and build it. Each run has a cache of its own, as
    # two workers sharing one engine do: runs sharing a cache wait for each other's build instead (the next test).
    monkeypatch.setattr(apptests, "WHEELS_RECIPE", apptests.WHEELS_RECIPE + f"# race {uuid.uuid4().hex}\n")
    real_build = apptests._build_environment
    both_building = threading.Barrier(2, timeout=120)
    first_testing, second_built = threading.Event(), threading.Event()
    lock = threading.Lock()
    built: list[str] = []
    seen: dict[str, bool] = {}

    def build(*args, **kwargs) -> str:
        both_building.wait()  # each run looked for the environment, found none, and builds it
        with lock:
            second = bool(built) or "first" in seen
            seen.setdefault("first", True)
        if second:
            assert first_testing.wait(300)  # the first run's tests are running in the image it built
        image = real_build(*args, **kwargs)
        built.append(image)
        if second:
            running = docker_client.containers.list(filters={"label": apptests.RUN_LABEL, "status": "running"})
            seen["first still testing when the second tagged"] = len(running) == 1
            second_built.set()
        return image

    monkeypatch.setattr(apptests, "_build_environment", build)
    results: dict[str, object] = {}

    def run(name: str) -> None:
        checkout = make_checkout(tmp_path / name, {"test_wait.py": WAITING_TEST})
        try:
            results[name] = apptests.run(checkout, tmp_path / f"cache-{name}")
        except BaseException as exc:  # noqa: BLE001 (asserted below)
            results[name] = exc

    threads = [threading.Thread(target=run, args=(name,)) for name in ("a", "b")]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 600
    while any(thread.is_alive() for thread in threads) and time.monotonic() < deadline:
        running = docker_client.containers.list(filters={"label": apptests.RUN_LABEL, "status": "running"})
        if running:
            first_testing.set()
        if second_built.is_set():
            for container in running:
                with contextlib.suppress(docker.errors.APIError):
                    docker_client.api.kill(container.id, signal="SIGWINCH")
        time.sleep(0.5)

    assert all(str(result).startswith("1 passed") for result in results.values()), results
    assert seen["first still testing when the second tagged"]
    first, second = built
    assert first != second  # two builds of one environment
    tag = next(iter(docker_client.images.get(second).tags))
    assert tag.startswith(f"{apptests.TESTENV_REPOSITORY}:")  # the one tag names the later build ...
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(first)  # ... and the earlier went once the run testing in it was over
    for cache in (tmp_path / "cache-a", tmp_path / "cache-b"):
        records = [p.name for p in (cache / "testenv").iterdir() if not p.name.endswith(".lock")]
        assert records == [tag.split(":")[1]]  # one record, nothing else
        assert list((cache / "testenv-build").iterdir()) == []  # no build context left
    assert docker_client.containers.list(all=True, filters={"label": apptests.RUN_LABEL}) == []
    assert docker_client.images.list(filters={"label": apptests.RUN_LABEL}) == []
    assert docker_client.images.list(all=True, filters={"label": apptests.INSTALL_LABEL}) == []
    docker_client.images.remove(second, force=True)


@pytest.mark.docker
def test_runs_sharing_a_cache_build_an_environment_once_the_second_waiting_for_the_first(
    docker_engine, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker's runs (or `make up` preparing the environment, devstack prepare-ci, and the first ci run) share
    a cache: a run that finds another building the environment waits for that build and reuses its image."""
    for key, value in {"MODELSHIP_DOCKER_HOST": docker_engine.url, "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
                       "MODELSHIP_STATE": str(tmp_path / "state")}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(apptests, "WHEELS_RECIPE", apptests.WHEELS_RECIPE + f"# shared {uuid.uuid4().hex}\n")
    cache = tmp_path / "cache"
    real_build = apptests._build_environment
    building, builds = threading.Event(), []

    def build(*args, **kwargs) -> str:
        builds.append(threading.current_thread().name)
        building.set()
        time.sleep(3)  # the other run asks meanwhile, and must wait rather than build too
        return real_build(*args, **kwargs)

    monkeypatch.setattr(apptests, "_build_environment", build)
    checkout = make_checkout(tmp_path / "src", {"test_x.py": "def test_x():\n    pass\n"})
    envs: dict[str, object] = {}

    def environment(name: str) -> None:
        if name == "second":
            assert building.wait(120)
        try:
            envs[name] = apptests.environment(checkout, cache, docker_client)
        except BaseException as exc:  # noqa: BLE001 (asserted below)
            envs[name] = exc

    with log_messages("modelship.apptests") as logs:
        threads = [threading.Thread(target=environment, args=(name,), name=name) for name in ("first", "second")]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(600)
    first, second = envs["first"], envs["second"]
    assert isinstance(first, apptests.TestEnvironment) and isinstance(second, apptests.TestEnvironment), envs
    assert builds == ["first"]  # one build
    assert (first.built, second.built) == (True, False)
    assert first.image == second.image
    assert any("another run on this cache is building it" in line for line in logs)
    docker_client.images.remove(first.image, force=True)


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
