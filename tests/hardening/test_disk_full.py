"""A full disk during a fetch or a build: transient (NoSpace), with a message saying where and how much is free,
and the same step going through once space is freed. Real full filesystems: small tmpfs mounts (the tests run
as root), a private Docker engine whose data root lives on one.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from devstack import components
from modelpkg.manifest import verify_package
from modelship import images
from modelship.model_store import LocalModelStore
from modelship.retry import NoSpace, Transient, is_transient
from modelship.verdicts import Verdict


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """small_disk(megabytes) → a fresh tmpfs of that size (unmounted afterwards)."""
    mounts: list[Path] = []

    def mount(megabytes: int) -> Path:
        point = tmp_path / f"disk{len(mounts)}"
        point.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={megabytes}m,mode=0755", "tmpfs", str(point)],
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            pytest.fail(f"cannot mount a tmpfs (the hardening tests run as root): {done.stderr}")
        mounts.append(point)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounts):
            subprocess.run(["umount", "-l", str(point)], capture_output=True, check=False)


def fill(disk: Path, leave: int) -> Path:
    """A filler file taking all but `leave` bytes of the filesystem (what another job's output would be)."""
    free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
    filler = disk / "filler"
    with open(filler, "wb") as handle:
        os.posix_fallocate(handle.fileno(), 0, max(0, free - leave))
    return filler


def test_a_fetch_onto_a_full_disk_is_no_space_and_goes_through_once_space_is_freed(
    small_disk, hardening_model: Path, tmp_path: Path
) -> None:
    store = LocalModelStore(tmp_path / "store", cache_dir=None)
    store.publish(hardening_model)
    disk = small_disk(4)
    filler = fill(disk, leave=16 * 1024)  # the model is 40 KB
    with pytest.raises(NoSpace) as full:
        store.fetch("digits", "v1", disk / "work" / "model")
    message = str(full.value)
    assert message.startswith(f"no space left on device while fetching model digits version v1 into {disk / 'work'}")
    assert "MiB free there" in message and "modelship gc" in message, message
    # Transient, not a verdict: modelship.tasks.step leaves it to the task's retries.
    assert isinstance(full.value, Transient) and is_transient(full.value) and not isinstance(full.value, Verdict)
    assert sorted(p.name for p in (disk / "work").iterdir()) == []  # nothing at dest, no staging left

    filler.unlink()  # space freed (modelship gc, or the other job finished): the task's retry
    manifest = store.fetch("digits", "v1", disk / "work" / "model")
    assert verify_package(disk / "work" / "model") == manifest


@pytest.fixture
def engine_on_a_small_disk(small_disk) -> Iterator[tuple[components.DockerEngine, Path]]:
    """A private Docker engine whose data root is on a 256 MiB tmpfs; (engine, the tmpfs)."""
    disk = small_disk(256)
    engine = components.DockerEngine(disk / "docker")
    engine.start()
    try:
        yield engine, disk
    finally:
        engine.stop()


def context_with(folder: Path, megabytes: int) -> Path:
    folder.mkdir()
    (folder / "Dockerfile").write_text("FROM scratch\nCOPY payload /payload\n")
    (folder / "payload").write_bytes(os.urandom(megabytes << 20))
    return folder


@pytest.mark.docker
def test_a_build_on_an_engine_with_a_full_disk_is_no_space_and_builds_once_space_is_freed(
    engine_on_a_small_disk, tmp_path: Path
) -> None:
    engine, disk = engine_on_a_small_disk
    context = context_with(tmp_path / "context", 32)
    filler = fill(disk, leave=24 << 20)  # the engine needs the context and the layer: 64 MiB and more
    client = engine.client()
    try:
        with pytest.raises(NoSpace) as full:
            images.build_image(client.api, context, "modelship-disk-full/app:t", {})
        message = str(full.value)
        assert message.startswith(f"no space left on device on the Docker engine {engine.url}"), message
        assert str(disk / "docker" / "docker-data") in message and "modelship gc" in message, message
        assert not isinstance(full.value, Verdict)  # not ImageBuildError: the image is not at fault

        filler.unlink()  # space freed: the task's retry builds the same context
        built = images.build_image(client.api, context, "modelship-disk-full/app:t", {})
        assert client.images.get("modelship-disk-full/app:t").id == built.id
    finally:
        client.close()


def test_a_build_context_on_a_full_disk_is_no_space(small_disk, hardening_model: Path, tmp_path: Path) -> None:
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text("FROM scratch\n")
    (app / "big.bin").write_bytes(os.urandom(2 << 20))  # copied, not linked: another filesystem
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    (wheels / "x-1-py3-none-any.whl").write_bytes(b"wheel")
    disk = small_disk(4)
    fill(disk, leave=512 * 1024)
    with pytest.raises(NoSpace, match=r"no space left on device assembling the build context"):
        images.build_context(app, hardening_model, wheels, disk / "context")
    assert not (disk / "context").exists()

