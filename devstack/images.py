"""The compose stack's images (Airflow, Postgres, Redis, registry, Azurite), built here without a registry.

Nothing can be pulled, so each image is built from dockerfiles/<folder>/ on a local root filesystem
(devstack.rootfs) and saved as a tarball in ~/.cache/modelship/distributed, keyed by its inputs: a new
engine (a test session, a fresh state folder) loads it in seconds instead of rebuilding.
"""

from __future__ import annotations

import functools
import hashlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from devstack import CACHE_DIR, REPO_ROOT
from devstack.components import AZURITE_VERSION, Azurite
from devstack.rootfs import Rootfs
from modelpkg.atomic import atomic_path
from modelship.fs import link_or_copy, link_tree

if TYPE_CHECKING:
    import docker

# Not "docker/": a top-level folder of that name makes ruff sort `import docker` (docker-py) as first-party.
DOCKER_DIR = REPO_ROOT / "dockerfiles"
CACHE = CACHE_DIR / "distributed"
BUILD_KEY_LABEL = "io.modelship.build-key"
# Image names: the compose file's defaults (a test checks they agree); override with the same variables.
AIRFLOW_IMAGE = "modelship/airflow:3.3.2"
POSTGRES_IMAGE = "modelship/postgres:15"
REDIS_IMAGE = "modelship/redis:7"
REGISTRY_IMAGE = "modelship/registry:2"
AZURITE_IMAGE = f"modelship/azurite:{AZURITE_VERSION}"

# git: the ci DAG checks out commits and its watcher polls the branch. Baked into the base rather than
# bind-mounted from the host: a host binary needs the host's libraries, and the image must work on AKS.
AIRFLOW_ROOTFS = Rootfs("airflow-base", ("python3", "python3-venv", "ca-certificates", "git"))
# One root filesystem for both data services: one mmdebstrap run, layers shared on disk.
DATA_ROOTFS = Rootfs("data-base", ("postgresql-15", "redis-server"))
# The same for the Azure stand-ins (wget: the registry's healthcheck).
STANDINS_ROOTFS = Rootfs("standins-base", ("docker-registry", "wget", "nodejs"))


@dataclass(frozen=True)
class ContextExtra:
    """Inputs made on the host and added to a build context: nothing can be fetched inside `docker build` here."""

    describe: Callable[[], bytes]  # what the image's cache key hashes (cheap: no download)
    add: Callable[[Path], None]  # put them into the context folder


@functools.cache  # asked by every image key and build; the host's tools do not change under a running process
def host_kubectl() -> Path | None:
    """The host's kubectl if it can render the overlays (kustomize v4+, kubectl >= 1.21), else None."""
    found = shutil.which("kubectl")
    if not found:
        return None
    try:
        done = subprocess.run([found, "version", "--client", "-o", "json"], capture_output=True, text=True, timeout=60)
        kustomize = json.loads(done.stdout).get("kustomizeVersion", "")
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if not kustomize.startswith(("v4", "v5")):
        return None
    return Path(found).resolve()


def _describe_airflow_inputs() -> bytes:
    kubectl = host_kubectl()
    tool = hashlib.sha256(kubectl.read_bytes()).hexdigest() if kubectl else "no kubectl"
    return (REPO_ROOT / "requirements.txt").read_bytes() + f"\nkubectl {tool}\n".encode()


def _add_airflow_inputs(context: Path) -> None:
    from modelship.images import wheelhouse

    requirements = REPO_ROOT / "requirements.txt"
    shutil.copy2(requirements, context / "requirements.txt")
    for reqs in (requirements, context / "requirements-bookworm.txt"):
        link_tree(wheelhouse(reqs, CACHE_DIR), context / "wheels")
    (context / "bin").mkdir()
    kubectl = host_kubectl()
    if kubectl:
        shutil.copy2(kubectl, context / "bin" / "kubectl")
    else:
        print("  no kubectl with kustomize v4+ on this host: the image's release DAG can deploy to the docker "
              "target only", flush=True)  # fmt: skip


def _add_azurite(context: Path) -> None:
    # node_modules/.bin/azurite-blob → node_modules; its .bin entries are symlinks, kept as such.
    node_modules = Azurite.install().parents[1]
    shutil.copytree(node_modules, context / "node_modules", symlinks=True, copy_function=link_or_copy)


# The Airflow image: requirements.txt and its wheelhouse (pip cannot reach an index inside `docker build`), and
# kubectl for the kubernetes target (nothing can be downloaded here: the host's, when it has a suitable one).
AIRFLOW_INPUTS = ContextExtra(_describe_airflow_inputs, _add_airflow_inputs)
# Azurite: the npm package the host installs for `make up`, pinned by version.
AZURITE_PACKAGE = ContextExtra(lambda: f"azurite@{AZURITE_VERSION}".encode(), _add_azurite)


@dataclass(frozen=True)
class ImageSpec:
    """An image built from dockerfiles/<folder>/ on a local root filesystem, cached as a tarball by content."""

    env: str  # the compose variable that names it; set to another image, it is not built here
    name: str  # the default tag compose runs
    folder: str  # dockerfiles/<folder>
    rootfs: Rootfs
    extra: ContextExtra | None = None

    def key(self) -> str:
        digest = hashlib.sha256(f"{self.name}\n{self.rootfs.key}\n".encode())
        for path in sorted((DOCKER_DIR / self.folder).rglob("*")):
            if path.is_file():
                digest.update(f"{path.relative_to(DOCKER_DIR)}:{path.stat().st_mode & 0o111}\n".encode())
                digest.update(path.read_bytes())
        if self.extra:
            digest.update(self.extra.describe())
        return digest.hexdigest()[:16]

    def tarball(self) -> Path:
        safe = self.name.replace("/", "_").replace(":", "_")
        return CACHE / "images" / f"{safe}-{self.key()}.tar"


IMAGES = (
    ImageSpec("AIRFLOW_IMAGE", AIRFLOW_IMAGE, "airflow", AIRFLOW_ROOTFS, AIRFLOW_INPUTS),
    ImageSpec("POSTGRES_IMAGE", POSTGRES_IMAGE, "postgres", DATA_ROOTFS),
    ImageSpec("REDIS_IMAGE", REDIS_IMAGE, "redis", DATA_ROOTFS),
    ImageSpec("REGISTRY_IMAGE", REGISTRY_IMAGE, "registry", STANDINS_ROOTFS),
    ImageSpec("AZURITE_IMAGE", AZURITE_IMAGE, "azurite", STANDINS_ROOTFS, AZURITE_PACKAGE),
)


def ensure_image(client: docker.DockerClient, spec: ImageSpec) -> str:
    """`spec.name` in the engine, current: already there, else loaded from the cache, else built (and cached)."""
    import docker as docker_sdk

    key = spec.key()
    try:
        if client.images.get(spec.name).labels.get(BUILD_KEY_LABEL) == key:
            return "present"
    except docker_sdk.errors.ImageNotFound:
        pass
    tarball = spec.tarball()
    if tarball.exists():
        with open(tarball, "rb") as data:
            client.images.load(data)
        if client.images.get(spec.name).labels.get(BUILD_KEY_LABEL) == key:
            return "loaded"
    _build(client, spec, key)
    _save(client, spec, tarball)
    return "built"


def _build(client: docker.DockerClient, spec: ImageSpec, key: str) -> None:
    from modelship.images import build_image

    base = spec.rootfs.ensure_image(client)
    # Beside the cache, not in /tmp: hard links into the build context need one filesystem.
    (CACHE / "build").mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="context-", dir=CACHE / "build") as tmp:
        context = Path(tmp) / "context"
        shutil.copytree(DOCKER_DIR / spec.folder, context)
        if spec.extra:
            spec.extra.add(context)
        print(f"  building {spec.name} from dockerfiles/{spec.folder} on {base}…", flush=True)
        build_image(client, context, spec.name, {"BASE_IMAGE": base}, labels={BUILD_KEY_LABEL: key})


def _save(client: docker.DockerClient, spec: ImageSpec, tarball: Path) -> None:
    """Keep the image as a tarball (written atomically); older tarballs of the same image go."""
    with atomic_path(tarball) as tmp, open(tmp, "wb") as out:
        for chunk in client.images.get(spec.name).save(named=True):
            out.write(chunk)
    for old in tarball.parent.glob(f"{tarball.name.rsplit('-', 1)[0]}-*.tar"):
        if old != tarball:
            old.unlink(missing_ok=True)
