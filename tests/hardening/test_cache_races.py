"""Two ci runs share the app's test environment (the image `modelship-testenv:<key>` on the engine, one per
requirements set); one finishing must never pull it from under the other. The wheelhouse and the model cache
already settle such races (tests/plugins); this covers the test environment, built by each run that finds
none and tagged when complete."""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest

from devstack import rootfs
from modelship import apptests
from tests.containment import make_checkout

pytestmark = [pytest.mark.docker]

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


def test_a_run_that_finishes_its_build_second_keeps_the_environment_the_first_is_testing_in(
    docker_engine, docker_client, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for key, value in {"MODELSHIP_DOCKER_HOST": docker_engine.url, "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
                       "MODELSHIP_STATE": str(tmp_path / "state")}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    # An environment no run has built yet: both runs find none and build it.
    monkeypatch.setattr(apptests, "WHEELS_RECIPE", apptests.WHEELS_RECIPE + f"# race {uuid.uuid4().hex}\n")
    cache = tmp_path / "cache"
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
            results[name] = apptests.run(checkout, cache)
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
    assert [p.name for p in (cache / "testenv").iterdir()] == [tag.split(":")[1]]  # one record, nothing else
    assert list((cache / "testenv-build").iterdir()) == []  # no build context left
    assert docker_client.containers.list(all=True, filters={"label": apptests.RUN_LABEL}) == []
    assert docker_client.images.list(filters={"label": apptests.RUN_LABEL}) == []
    assert docker_client.images.list(all=True, filters={"label": apptests.INSTALL_LABEL}) == []
    docker_client.images.remove(second, force=True)
