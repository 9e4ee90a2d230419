"""Base images without a registry: a debootstrapped Debian (minbase) with the packages an image needs.

Nothing can be pulled here, so every image this project builds starts from one of these root filesystems,
made once per machine with mmdebstrap (≈ 20-30 s each) and cached as a tarball by its package list.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devstack import CACHE_DIR, StackError
from modelpkg.atomic import atomic_path

if TYPE_CHECKING:
    import docker

SUITE = "bookworm"
EATMYDATA_HOOKS = Path("/usr/share/mmdebstrap/hooks/eatmydata")  # mmdebstrap's own, used when eatmydata is installed
MEMORY = Path("/dev/shm")  # a tmpfs on Debian: where mmdebstrap builds its chroot when it has room


def _room(folder: Path, needed: int) -> bool:
    """Whether `folder` is a writable folder with `needed` bytes free (a root filesystem unpacked: ~0.5 GB)."""
    try:
        return os.access(folder, os.W_OK) and shutil.disk_usage(folder).free >= needed
    except OSError:
        return False


@dataclass(frozen=True)
class Rootfs:
    """`packages` on Debian minbase, imported into an engine as `image` (by default named by its key)."""

    name: str
    packages: tuple[str, ...]
    image_name: str = ""

    @property
    def key(self) -> str:
        return hashlib.sha256(" ".join((SUITE, "minbase", *self.packages)).encode()).hexdigest()[:16]

    @property
    def image(self) -> str:
        return self.image_name or f"local/modelship-{self.name}:{self.key}"

    def tarball(self) -> Path:
        """Build once per machine, cached by the package list."""
        out = CACHE_DIR / "rootfs" / f"{self.name}-{self.key}.tar"
        if out.exists():
            return out
        if not shutil.which("mmdebstrap"):
            raise StackError("mmdebstrap is not installed: run `make up` (apt: mmdebstrap)")
        print(f"  debootstrapping {self.name} ({', '.join(self.packages)})…", flush=True)
        # The root filesystem only passes through on its way into the tarball: dpkg inside eatmydata (its fsyncs
        # are for a system that must survive a crash) and, where there is room, the chroot in memory. Alone here:
        # 27.5 s as mmdebstrap defaults, 22.6 s with eatmydata, 19.2 s with both; on a first `make up`, beside
        # Airflow's start and Azurite's npm install, it also stays off the disk they write to. The same files.
        eatmydata = [f"--hook-dir={EATMYDATA_HOOKS}"] if EATMYDATA_HOOKS.is_dir() and shutil.which("eatmydata") else []
        env = {**os.environ, "TMPDIR": str(MEMORY)} if _room(MEMORY, 2 << 30) else None
        with atomic_path(out) as tmp:
            done = subprocess.run(
                ["mmdebstrap", "--format=tar", "--variant=minbase", f"--include={','.join(self.packages)}",
                 *eatmydata, SUITE, str(tmp)],
                capture_output=True, text=True, env=env,
            )  # fmt: skip
            if done.returncode != 0:
                raise StackError(f"mmdebstrap {self.name} failed:\n{done.stderr[-2000:]}")
        return out

    def ensure_image(self, client: docker.DockerClient) -> str:
        """The image in the engine: present, or imported from the (cached) tarball."""
        import docker as docker_sdk

        try:
            client.images.get(self.image)
        except docker_sdk.errors.ImageNotFound:
            repository, tag = self.image.rsplit(":", 1)
            client.api.import_image_from_file(str(self.tarball()), repository=repository, tag=tag)
            client.images.get(self.image)
        return self.image


# What the ci DAG builds the app on here (MODELSHIP_BASE_IMAGE; python:3.11-slim where images can be pulled).
APP_BASE = Rootfs(
    "python-base", ("python3", "python3-venv", "ca-certificates"), image_name="local/python-base:bookworm"
)
BASE_IMAGE = APP_BASE.image
