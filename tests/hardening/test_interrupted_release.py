"""A release killed mid-swap on the docker target: the deploy process gets SIGKILL after it stopped the serving
container and before it started the new one, so nothing serves. The next release, or `python -m devstack up`,
must first start the last app container again (DockerTarget.heal) and only then go on.

The swap path is the one with a gap: two images that cannot share the serving port (no SO_REUSEPORT). The old
container takes 3 s to stop gracefully, and the deploy process is killed the moment the engine reports the
SIGTERM it sent (docker's "kill" event), while it waits for that stop: it cannot have started anything else.
"""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from devstack import components
from devstack.stack import Stack
from modelship import net
from modelship.deploy.docker import DockerTarget
from tests.hardening.test_outages import serving_commit, wait_serving
from tests.logcapture import log_messages
from tests.plugins.deploy_fixtures import build_standin

DEPLOY = """
import json, sys
from modelship.deploy.docker import DockerTarget
host, port, image, lineage = sys.argv[1], int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4])
DockerTarget(docker_host=host, port=port, ready_timeout=20).deploy(image, lineage)
"""


def containers_of(docker_client, port: int) -> list:
    return docker_client.containers.list(all=True, filters={"label": f"io.modelship.port={port}"})


def kill_release_mid_swap(docker_client, engine: components.DockerEngine, port: int, old_id: str, new) -> None:
    """Start the release of `new` in its own process; SIGKILL it as the engine sends SIGTERM to `old_id`."""
    since = int(time.time())
    release = subprocess.Popen(
        [sys.executable, "-c", DEPLOY, engine.url, str(port), new.tag, json.dumps(new.lineage())],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        events = docker_client.api.events(since=since, until=since + 120, decode=True,
                                          filters={"container": old_id, "event": "kill"})  # fmt: skip
        for _ in events:  # the swap stops the old container: the release is inside that stop
            release.send_signal(signal.SIGKILL)
            break
        events.close()
    finally:
        release.kill()
        code = release.wait(30)
    assert code == -signal.SIGKILL, f"the release was not killed mid-swap (exit {code})"


@dataclass
class CutOff:
    """v1 served on `port`, then a release to v2 killed mid-swap: `old` (v1's container) stopped, nothing serves."""

    port: int
    old: Any
    v1: Any
    v2: Any


@pytest.fixture
def cut_off(docker_engine: components.DockerEngine, docker_client) -> Iterator[CutOff]:
    port = net.free_port()
    v1 = build_standin(docker_client, "modelship-hardening/swap:v1", "swap-v1", reuse_port=False, stop_delay=3)
    v2 = build_standin(docker_client, "modelship-hardening/swap:v2", "swap-v2", reuse_port=False)
    try:
        DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=20).deploy(v1.tag, v1.lineage())
        [old] = containers_of(docker_client, port)
        assert serving_commit(port) == v1.commit

        kill_release_mid_swap(docker_client, docker_engine, port, old.id, v2)
        deadline = time.monotonic() + 30
        while old.status == "running" and time.monotonic() < deadline:  # its graceful stop takes 3 s
            time.sleep(0.2)
            old.reload()
        assert old.status == "exited" and not net.port_open(port), old.status
        yield CutOff(port, old, v1, v2)
    finally:
        for container in containers_of(docker_client, port):
            container.remove(force=True)


@pytest.mark.docker
def test_a_release_killed_mid_swap_is_healed_by_the_next_release_before_anything_else(
    docker_engine: components.DockerEngine, docker_client, cut_off: CutOff
) -> None:
    port, old, v2 = cut_off.port, cut_off.old, cut_off.v2
    # Nothing serves, and nothing of v2 was started: the old container stopped, the new one never came.
    assert [c.id for c in containers_of(docker_client, port)] == [old.id]
    assert DockerTarget(docker_host=docker_engine.url, port=port).status()["serving"] is False

    since = int(time.time())
    with log_messages("modelship.deploy", logging.WARNING) as warnings:
        event = DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=20).deploy(
            v2.tag, v2.lineage()
        )
    assert event.commit == v2.commit and serving_commit(port) == v2.commit
    assert any("a release was cut off mid-swap" in m and old.name in m for m in warnings), warnings
    # Before anything else: the old container was started again before any v2 container was created.
    happened = [
        (e["Action"], e["id"], e["Actor"]["Attributes"].get("image"))
        for e in docker_client.api.events(since=since, until=int(time.time()) + 1, decode=True,
                                          filters={"type": "container"})  # fmt: skip
    ]
    healed = next(i for i, (action, cid, _) in enumerate(happened) if (action, cid) == ("start", old.id))
    first_v2 = next(i for i, (action, _, image) in enumerate(happened)
                    if action == "create" and image in (v2.id, v2.tag))  # fmt: skip
    assert healed < first_v2, happened


@pytest.mark.docker
def test_devstack_up_heals_a_release_killed_mid_swap(
    docker_engine: components.DockerEngine, stack_dir: Path, capsys: pytest.CaptureFixture[str], cut_off: CutOff
) -> None:
    port, old = cut_off.port, cut_off.old
    # What `make up` runs once the engine is up (the harness engine lives in the stack folder's docker/).
    assert Stack(stack_dir).docker.url == docker_engine.url
    assert Stack(stack_dir).heal_release(port) == old.name
    assert wait_serving(port) == cut_off.v1.commit
    assert f"{old.name} serves again" in capsys.readouterr().out
    assert Stack(stack_dir).heal_release(port) is None  # something serves: nothing to do
