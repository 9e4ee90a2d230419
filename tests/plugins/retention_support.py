"""A small modelship world for the retention tests, on the harness's real components: a git source repository, a
model store, the registry (htpasswd) and the Docker engine, each private to one test (its own repository, model
name, store, serving port and cache folder), so a gc in one test can never touch another test's things.

Images are real and small: built by images.build_image (which checks the lineage labels), pushed by
images.push_image with the registry connection's credentials, and announced as ci's push would
(ImageEvent). A "runnable" image is the deploy stand-in (tests/plugins/deploy_fixtures.py): it serves
/readyz and /version, so the docker target can really deploy it.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from devstack import rootfs
from modelpkg.manifest import write_manifest
from modelship import images, retention
from modelship.fs import USED_MARKER
from modelship.lineage import DeploymentRecord, ImageEvent, Quarantine
from modelship.model_store import open_store
from modelship.registry import RegistryClient
from modelship.settings import Settings
from tests.plugins.deploy_fixtures import STANDIN_APP

SCRATCH_DOCKERFILE = """\
FROM scratch
COPY payload /payload
ARG GIT_COMMIT BUILD_DATE SOURCE_URL APP_VERSION MODEL_NAME MODEL_VERSION MODEL_SHA256
LABEL org.opencontainers.image.revision=$GIT_COMMIT org.opencontainers.image.created=$BUILD_DATE \\
      org.opencontainers.image.source=$SOURCE_URL org.opencontainers.image.version=$APP_VERSION \\
      io.modelship.model.name=$MODEL_NAME io.modelship.model.version=$MODEL_VERSION \\
      io.modelship.model.sha256=$MODEL_SHA256
"""

# The deploy stand-in with the lineage contract: serves what its labels say.
RUNNABLE_DOCKERFILE = """\
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY app.py /srv/app.py
COPY payload /payload
ARG GIT_COMMIT BUILD_DATE SOURCE_URL APP_VERSION MODEL_NAME MODEL_VERSION MODEL_SHA256 BROKEN=""
ENV COMMIT=$GIT_COMMIT MODEL_NAME=$MODEL_NAME MODEL_VERSION=$MODEL_VERSION MODEL_SHA256=$MODEL_SHA256 \\
    BROKEN=$BROKEN PYTHONDONTWRITEBYTECODE=1
LABEL org.opencontainers.image.revision=$GIT_COMMIT org.opencontainers.image.created=$BUILD_DATE \\
      org.opencontainers.image.source=$SOURCE_URL org.opencontainers.image.version=$APP_VERSION \\
      io.modelship.model.name=$MODEL_NAME io.modelship.model.version=$MODEL_VERSION \\
      io.modelship.model.sha256=$MODEL_SHA256
USER 10001
CMD ["python3", "/srv/app.py"]
"""

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@localhost", *args], cwd=cwd, check=True,
                          capture_output=True, text=True).stdout.strip()  # fmt: skip


@dataclass
class World:
    root: Path
    env: dict[str, str]
    docker_client: Any
    registry_address: str
    payload_size: int = 4096
    built: int = 0
    commits: list[str] = field(default_factory=list)

    @property
    def settings(self) -> Settings:
        return Settings.get()

    @property
    def repository(self) -> str:
        return self.env["MODELSHIP_IMAGE_REPOSITORY"]

    @property
    def model_name(self) -> str:
        return self.env["MODELSHIP_MODEL_NAME"]

    def store(self) -> Any:
        return open_store(self.settings)

    def registry(self) -> RegistryClient:
        return RegistryClient.from_connection(self.env["MODELSHIP_REGISTRY_CONN_ID"])

    # -- the source and the models ---------------------------------------------------------------------

    def commit(self) -> str:
        """One more commit on the source branch (newest first in its history)."""
        git("commit", "-q", "--allow-empty", "-m", f"change {len(self.commits)}", cwd=self.root / "source")
        self.commits.append(git("rev-parse", "HEAD", cwd=self.root / "source"))
        return self.commits[-1]

    def model(self, version: str) -> str:
        """Publish a small (untrained) model package as `version`; its manifest sha256."""
        package = self.root / "packages" / version
        package.mkdir(parents=True)
        (package / "weights.bin").write_bytes(os.urandom(2048))
        write_manifest(package, name=self.model_name, version=version, framework="test", input_spec={},
                       metrics={"accuracy": 0.99})  # fmt: skip
        self.store().publish(package)
        return self.store().manifest_sha256(self.model_name, version)

    def promote(self, version: str, alias: str = "production") -> dict[str, Any]:
        return self.store().promote(self.model_name, version, alias)

    # -- images ------------------------------------------------------------------------------------------

    def image(self, commit: str, version: str, *, runnable: bool = False, broken: bool = False) -> ImageEvent:
        """Build (one second of build time after the previous one), push and announce commit × version.
        `broken`: a runnable image that exits at start (a release of it fails and is rolled back)."""
        sha = self.store().manifest_sha256(self.model_name, version)
        self.built += 1
        created = (T0 + timedelta(seconds=self.built)).strftime("%Y-%m-%dT%H:%M:%SZ")
        lineage = images.Lineage(commit=commit, model_name=self.model_name, model_version=version,
                                 model_sha256=sha, source="test", created=created)  # fmt: skip
        context = self.root / "contexts" / str(self.built)
        context.mkdir(parents=True)
        (context / "payload").write_bytes(os.urandom(self.payload_size))
        (context / "app.py").write_text(STANDIN_APP)
        tag = f"{commit[:12]}-{version}"
        args = {**lineage.build_args(rootfs.BASE_IMAGE), **({"BROKEN": "exit"} if broken else {})}
        runnable = runnable or broken
        (context / "Dockerfile").write_text(RUNNABLE_DOCKERFILE if runnable else SCRATCH_DOCKERFILE)
        built = images.build_image(self.docker_client, context, f"{self.repository}:{tag}", args)
        pushed = images.push_image(self.docker_client, built.id, self.repository, tag,
                                   registry_conn=self.env["MODELSHIP_REGISTRY_CONN_ID"])  # fmt: skip
        return ImageEvent(repository=f"{self.registry_address}/{self.repository}", tag=tag, digest=pushed.digest,
                          commit=commit, model_name=self.model_name, model_version=version, model_sha256=sha,
                          layers_pushed=pushed.layers_pushed, bytes_pushed=pushed.bytes_pushed)  # fmt: skip

    def in_registry(self, event: ImageEvent) -> bool:
        client = self.registry()
        try:
            return client.exists(self.repository, event.digest)
        finally:
            client.close()

    def tags(self) -> list[str]:
        client = self.registry()
        try:
            return client.tags(self.repository)
        finally:
            client.close()

    def versions(self) -> list[str]:
        return [v["version"] for v in self.store().list_versions(self.model_name)]

    # -- what release leaves -----------------------------------------------------------------------------

    def record(self, event: ImageEvent, minute: int, target: str = "docker", outcome: str = "deployed",
               serving: ImageEvent | None = None) -> DeploymentRecord:  # fmt: skip
        """A deployment attempt as release records it; `serving`: what served after it (default: `event`)."""
        after = serving or (event if outcome == "deployed" else None)
        at = (T0 + timedelta(minutes=minute)).isoformat(timespec="seconds")
        return DeploymentRecord(
            target=target, image=event.ref, image_digest=event.digest, commit=event.commit,
            model_version=event.model_version, model_sha256=event.model_sha256, outcome=outcome, started_at=at,
            ended_at=at, run_id=f"release-{minute}",
            serving_after={"image_digest": after.digest, "commit": after.commit, "model_version": after.model_version,
                           "image": after.ref} if after else {},
        )  # fmt: skip

    @staticmethod
    def quarantine(event: ImageEvent, reason: str = "rolled back: /version never answered") -> Quarantine:
        return Quarantine(digest=event.digest, action="quarantined", at=T0.isoformat(), image=event.ref,
                          commit=event.commit, model_version=event.model_version, reason=reason,
                          target="docker")  # fmt: skip

    # -- gc ----------------------------------------------------------------------------------------------

    def gc(self, images_: list[ImageEvent], quarantines: list[Quarantine] | None = None,
           records: list[DeploymentRecord] | None = None, *, dry_run: bool = False,
           keep: int | None = None) -> retention.Report:  # fmt: skip
        return retention.run(images=images_, quarantines=quarantines if quarantines is not None else [],
                             records=records if records is not None else [], dry_run=dry_run, keep=keep)  # fmt: skip


def reasons(report: retention.Report, area: str, what: str) -> str:
    """Why the item of `area` whose description contains `what` was kept ('' when it was not)."""
    return " | ".join(o.why for o in report.of("kept", area) if what in o.item)


def gone(report: retention.Report, area: str, what: str) -> bool:
    return any(what in o.item for o in report.of("deleted", area) + report.of("would delete", area))


def make_world(root: Path, *, docker_client, docker_engine, registry, reg_conn: str, store: str = "local",
               port: int, **settings: str) -> World:  # fmt: skip
    """The settings of a fresh world (apply them with monkeypatch) and the World itself."""
    name = f"gc{uuid.uuid4().hex[:8]}"
    (root / "source").mkdir(parents=True)
    git("init", "-q", "-b", "main", cwd=root / "source")
    env = {
        "MODELSHIP_STATE": str(root / "state"),
        "MODELSHIP_CACHE": str(root / "cache"),  # never the machine's shared cache: gc prunes it
        "MODELSHIP_MODEL_STORE": f"local:{root / 'store'}" if store == "local" else store,
        "MODELSHIP_MODEL_NAME": name,
        "MODELSHIP_MODEL_ALIAS": "production",
        "MODELSHIP_IMAGE_REPOSITORY": f"modelship-test/{name}",
        "MODELSHIP_SOURCE_REPO": str(root / "source"),
        "MODELSHIP_SOURCE_BRANCH": "main",
        "MODELSHIP_DOCKER_HOST": docker_engine.url,
        "MODELSHIP_DOCKER_DEPLOY_PORT": str(port),
        "MODELSHIP_REGISTRY_CONN_ID": reg_conn,
        "MODELSHIP_KUBE_CONN_ID": "modelship_test_no_cluster",  # never defined: the target cannot be asked
        "MODELSHIP_GC_GRACE_HOURS": "0",
        "MODELSHIP_REGISTRY_GC_COMMAND": "",
        **settings,
    }
    return World(root, env, docker_client, registry.address)


@contextmanager
def applied(world: World, monkeypatch: Any) -> Iterator[World]:
    """The world's settings in the environment for the test; afterwards its containers and images are gone."""
    for key, value in world.env.items():
        monkeypatch.setenv(key, value)
    try:
        yield world
    finally:
        client = world.docker_client
        port = world.env["MODELSHIP_DOCKER_DEPLOY_PORT"]
        for container in client.containers.list(all=True, filters={"label": f"io.modelship.port={port}"}):
            container.remove(force=True)
        for image in client.images.list(filters={"label": f"io.modelship.model.name={world.model_name}"}):
            client.images.remove(image.id, force=True)


def old_entry(path: Path, days: float, *, marker: bool = True) -> Path:
    """A cache entry last used `days` ago (by its marker, or its own mtime without one)."""
    path.mkdir(parents=True)
    (path / "something").write_bytes(b"x" * 1000)
    if marker:
        (path / USED_MARKER).touch()
    when = time.time() - days * 86400
    for p in (path / USED_MARKER, path):
        if p.exists():
            os.utime(p, (when, when))
    return path
