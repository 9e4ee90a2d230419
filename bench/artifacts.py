"""What the benchmarked runs build from: a throwaway clone with code-only commits, trained and published
model versions, and the app image built (and pushed) with modelship.images."""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from bench import REPO, REPOSITORY
from bench.components import BenchStack
from devstack import rootfs


class SourceRepo:
    """A throwaway clone of this repository's HEAD; each code_change() is one more code-only commit."""

    def __init__(self, path: Path) -> None:
        self.path = path
        shutil.rmtree(path, ignore_errors=True)
        self._git("clone", "-q", str(REPO), str(path), cwd=REPO)
        self.changes = 0

    def _git(self, *args: str, cwd: Path | None = None) -> str:
        done = subprocess.run(["git", *args], cwd=cwd or self.path, check=True, capture_output=True, text=True)
        return done.stdout.strip()

    def head(self) -> str:
        return self._git("rev-parse", "HEAD")

    def code_change(self) -> str:
        """Commit a change to app code only (a comment in routes.py): new layers for the code, nothing else."""
        self.changes += 1
        routes = self.path / "app" / "classifier" / "routes.py"
        routes.write_text(routes.read_text() + f"# bench change {self.changes} at {time.time_ns()}\n")
        self._git("-c", "user.name=bench", "-c", "user.email=bench@localhost", "commit", "-qam",
                  f"bench: code-only change {self.changes}")  # fmt: skip
        return self.head()


def train(root: Path, version: str) -> Path:
    from training.train import train_package

    out = root / f"model-{version}"
    shutil.rmtree(out, ignore_errors=True)
    train_package(out, version=version)
    return out


def publish_and_promote(package: Path, alias: str = "production") -> dict[str, Any]:
    from modelpkg.manifest import read_manifest
    from modelship.model_store import open_store

    store = open_store()
    manifest = read_manifest(package)
    try:
        store.publish(package)
    except Exception as exc:  # VersionExists on a re-run is fine
        if type(exc).__name__ != "VersionExists":
            raise
    store.promote(manifest["name"], manifest["version"], alias)
    return manifest


def build_and_push(
    stack: BenchStack, source: SourceRepo, commit: str, model_dir: Path, tag: str, *, push: bool = True
) -> dict[str, str]:
    """Build the app image for (commit, model) with modelship.images, optionally push; ids and digest."""
    from modelpkg.manifest import manifest_sha256, read_manifest
    from modelship import images
    from modelship import source as src

    manifest = read_manifest(model_dir)
    work = stack.root / "build" / tag
    shutil.rmtree(work, ignore_errors=True)
    checkout = work / "src"
    full = src.checkout(str(source.path), commit, checkout)
    wheels = images.wheelhouse(checkout / "app" / "requirements.txt", stack.cache)
    context = images.build_context(checkout / "app", model_dir, wheels, work / "context")
    lineage = images.Lineage(commit=full, model_name=manifest["name"], model_version=manifest["version"],
                             model_sha256=manifest_sha256(model_dir), source=str(source.path))  # fmt: skip
    api = stack.docker_api()
    built = images.build_image(api, context, f"{REPOSITORY}:{tag}", lineage.build_args(rootfs.BASE_IMAGE))
    out = {"image_id": built.id, "commit": full, "model_version": manifest["version"], "tag": tag}
    if push:
        out["digest"] = images.push_image(api, built.id, REPOSITORY, tag, registry_conn="modelship_registry").digest
        out["ref"] = f"{stack.registry.address}/{REPOSITORY}@{out['digest']}"
    shutil.rmtree(work, ignore_errors=True)
    return out
