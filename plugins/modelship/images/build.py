"""Build the serving image: a context of app/ + the model package + wheels, built with the classic builder on
the host network; the image must carry its lineage as OCI labels, or it is not shipped."""

from __future__ import annotations

import logging
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import requests
import urllib3

from modelpkg.manifest import verify_package
from modelship.fs import IGNORED, link_tree
from modelship.images.engine import EngineUnavailable, api_of, docker_hook, engine_name, engine_still_there
from modelship.lineage import (
    LABEL_CREATED,
    LABEL_MODEL_NAME,
    LABEL_MODEL_SHA256,
    LABEL_MODEL_VERSION,
    LABEL_REVISION,
    LABEL_SOURCE,
    LABEL_VERSION,
)
from modelship.retry import NoSpace, Transient, no_space
from modelship.verdicts import Verdict

if TYPE_CHECKING:
    from modelship.images.engine import DockerLike

log = logging.getLogger("modelship.images")

# Build arg → the OCI label the Dockerfile must turn it into (the Dockerfile contract, checked after build).
LINEAGE_LABELS = {
    "GIT_COMMIT": LABEL_REVISION,
    "BUILD_DATE": LABEL_CREATED,
    "SOURCE_URL": LABEL_SOURCE,
    "APP_VERSION": LABEL_VERSION,
    "MODEL_NAME": LABEL_MODEL_NAME,
    "MODEL_VERSION": LABEL_MODEL_VERSION,
    "MODEL_SHA256": LABEL_MODEL_SHA256,
}


class ImageBuildError(Verdict, RuntimeError):
    """The image did not build (the message names the failing step and its error) or lacks its lineage."""


class BaseImageUnavailable(Transient, RuntimeError):
    """The base image is not on the engine and could not be pulled (the registry's outage, or a wrong name)."""


@dataclass(frozen=True)
class Lineage:
    """What an image is built from; becomes build args, then OCI labels (see LINEAGE_LABELS)."""

    commit: str
    model_name: str
    model_version: str
    model_sha256: str
    source: str = ""
    app_version: str = ""
    created: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))

    def build_args(self, base_image: str) -> dict[str, str]:
        from modelship.source import public_url

        return {
            "BASE_IMAGE": base_image,
            "GIT_COMMIT": self.commit,
            "BUILD_DATE": self.created,
            # Build args end up in the image (label, ENV, /version, history): never with credentials.
            "SOURCE_URL": public_url(self.source),
            "APP_VERSION": self.app_version or self.commit[:12],
            "MODEL_NAME": self.model_name,
            "MODEL_VERSION": self.model_version,
            "MODEL_SHA256": self.model_sha256,
        }


@dataclass(frozen=True)
class ImageRef:
    """A built image: its id (sha256:…), the local tag it was built as, and its labels."""

    id: str
    tag: str
    labels: dict[str, str]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # plain JSON for XCom


def build_context(
    app_dir: Path, model_dir: Path, wheels_dir: Path, dest: Path, library_dir: Path | None = None
) -> Path:
    """Assemble the build context: a copy of app_dir plus wheels/, model/ and modelpkg/ inside it.

    library_dir: the model-package library the app imports (default: modelpkg/ beside app_dir, as in every
    checkout); a checkout from before the library existed has none, and its Dockerfile does not ask for it.

    Files are hard-linked where source and dest share a filesystem (no bytes copied: the model and the
    wheels are hundreds of MB), else copied. Consequence: never write into a context file in place, that
    would change the cached original too; replace files instead. `dest` is emptied first. The model package
    is verified against its manifest here, before a build is spent on it.

    The files keep whatever times and modes the checkout gave them (hard links share those with the originals):
    the app's Dockerfile fixes them for the code layer in its `code` stage, so a model-only change rebuilds that
    layer into the same bytes, whichever checkout or worker it came from, and the push does not send it again.
    """
    app_dir, model_dir, wheels_dir, dest = (Path(p) for p in (app_dir, model_dir, wheels_dir, dest))
    if app_dir.is_symlink() or not (app_dir / "Dockerfile").is_file() or (app_dir / "Dockerfile").is_symlink():
        raise ImageBuildError(f"{app_dir}: no Dockerfile (or a symbolic link); not an app folder")
    verify_package(model_dir)
    if not any(wheels_dir.glob("*.whl")):
        raise ImageBuildError(f"{wheels_dir}: no wheels in the wheelhouse")
    if dest.exists():
        shutil.rmtree(dest)
    counts = {"linked": 0, "copied": 0}

    def app_ignore(folder: str, names: list[str]) -> set[str]:
        ignored = set(IGNORED(folder, names))
        if Path(folder) == app_dir:
            # These come from the arguments, never from a stray local copy.
            ignored |= {"wheels", "model", "modelpkg"}
        return ignored

    library = Path(library_dir) if library_dir is not None else app_dir.parent / "modelpkg"
    # app/ and modelpkg/ come from the commit: their symbolic links stay links (never followed on the worker;
    # the build resolves them inside the context or not at all).
    try:
        link_tree(app_dir, dest, ignore=app_ignore, counts=counts, symlinks=True)
        link_tree(wheels_dir, dest / "wheels", counts=counts)
        link_tree(model_dir, dest / "model", counts=counts)
        if library.is_dir() and not library.is_symlink():
            link_tree(library, dest / "modelpkg", counts=counts, symlinks=True)
    except OSError as exc:
        if not no_space(exc):
            raise
        shutil.rmtree(dest, ignore_errors=True)
        raise NoSpace(
            f"no space left on device assembling the build context {dest} ({counts['copied']} files copied, "
            f"{counts['linked']} linked so far): free space (`modelship gc` prunes old caches); the task's retry "
            "builds again"
        ) from exc
    log.info("build context %s: %d files linked, %d copied", dest, counts["linked"], counts["copied"])
    return dest


def ensure_base_image(docker_like: DockerLike, image: str, registry_conn_id: str | None = None) -> None:
    """Make sure the engine has the base image `image` (settings.base_image), pulling it when missing.

    Builds run through a client that holds no registry credential (engine_client), so the engine could only
    pull a missing FROM image anonymously. A base image in a private registry (ACR) is pulled here instead,
    through a client logged into the registry connection (`registry_conn_id`, default the settings'): the
    engine uses the login for this one pull of the configured base image, and no build ever gets it.
    """
    from docker.utils import parse_repository_tag

    api = api_of(docker_like)
    try:
        api.inspect_image(image)
        return
    except docker.errors.ImageNotFound:
        pass
    except requests.RequestException as exc:
        raise EngineUnavailable(f"Docker engine {engine_name(api)} did not answer: {exc}") from exc
    repository, tag = parse_repository_tag(image)
    log.info("base image %s is not on the engine: pulling it (registry connection %s)", image,
             registry_conn_id or "from settings")  # fmt: skip
    try:
        puller = api_of(docker_hook(registry_conn_id, engine_name(api)))
        for chunk in puller.pull(repository, tag=tag or "latest", stream=True, decode=True):
            error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
            if error:
                raise BaseImageUnavailable(f"pulling the base image {image} failed: {error}")
    except docker.errors.APIError as exc:
        raise BaseImageUnavailable(f"pulling the base image {image} failed: {exc.explanation or exc}") from exc
    except requests.RequestException as exc:
        raise EngineUnavailable(f"Docker engine {engine_name(api)} went away pulling {image}: {exc}") from exc
    api.inspect_image(image)
    log.info("pulled the base image %s", image)


def build_image(
    docker_like: DockerLike,
    context: Path,
    tag: str,
    build_args: dict[str, str],
    labels: dict[str, str] | None = None,
    *,
    timeout: int = 1800,
    network_mode: str = "none",
) -> ImageRef:
    """Build context/Dockerfile as `tag` (classic builder); return the image.

    RUN steps get no network by default (`network_mode="none"`): the Dockerfile is the commit's, and every
    input is in the context already (wheels, model). Pass "host" for a build that must reach a server.

    The build output goes to the log line by line. A failing step raises ImageBuildError naming the step
    and its error. Afterwards every lineage build arg (GIT_COMMIT, MODEL_SHA256, … see LINEAGE_LABELS) must
    be on the image as its label: an image that cannot say what it was built from is not shipped.
    """
    api = api_of(docker_like)
    log.info("building %s from %s (%s)", tag, context, ", ".join(f"{k}={v}" for k, v in build_args.items()))
    started = time.monotonic()
    step = "(before the first step)"
    tail: list[str] = []
    image_id: str | None = None
    pending = ""
    try:
        stream = api.build(
            path=str(context),
            tag=tag,
            buildargs=build_args,
            labels=labels or None,
            network_mode=network_mode,  # "host" where a step needs one: this engine has no bridge
            rm=True,
            forcerm=True,  # intermediate containers go even when a step fails
            pull=False,  # the base image is local (nothing can be pulled here)
            decode=True,
            timeout=timeout,
        )
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                message = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                # The engine's disk (a layer it writes) or a RUN step's own writes ("No space left on device").
                if no_space(message) or any(no_space(line) for line in tail[-5:]):
                    raise _engine_disk_full(api, tag, step, message)
                output = "\n".join(tail[-15:])
                # A step killed by a signal (137, 143) may be the engine stopping under it: watch it a while.
                killed = re.search(r"returned a non-zero code: (137|143)\b", str(message)) is not None
                engine_still_there(api, f"the build of {tag} at {step} ({message})", grace=15.0 if killed else 0.0)
                raise ImageBuildError(f"build of {tag} failed at {step}: {message}\n--- last output ---\n{output}")
            if "aux" in chunk and isinstance(chunk["aux"], dict) and chunk["aux"].get("ID"):
                image_id = chunk["aux"]["ID"]
            text = chunk.get("stream") or chunk.get("status") or ""
            # Chunks are not lines: a long RUN step can send half a line per chunk.
            pending += text
            *lines, pending = pending.split("\n")
            for line in lines:
                line = line.rstrip()
                if not line:
                    continue
                log.info("  %s", line)
                tail = [*tail[-29:], line]
                if line.startswith("Step "):
                    step = line
                elif line.startswith("Successfully built ") and not image_id:
                    image_id = line.split()[-1]
    except docker.errors.APIError as exc:
        if no_space(str(exc.explanation or exc)):  # e.g. while the engine unpacks the build context
            raise _engine_disk_full(api, tag, step, str(exc.explanation or exc)) from exc
        raise ImageBuildError(f"build of {tag} refused by the engine: {exc.explanation or exc}") from exc
    # The connection to the engine broke: before the stream (requests), or in the middle of it, where the SDK
    # reads the raw response and urllib3's own error comes through ("Connection broken: IncompleteRead").
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        raise EngineUnavailable(
            f"Docker engine {engine_name(api)} went away during the build of {tag} at {step}: {exc}"
        ) from exc
    if pending.strip():
        log.info("  %s", pending.rstrip())
    if not image_id:
        engine_still_there(api, f"the build of {tag} at {step}")
        raise ImageBuildError(f"build of {tag} ended without an image id:\n" + "\n".join(tail[-15:]))
    inspected = api.inspect_image(image_id)
    image_labels = dict(inspected.get("Config", {}).get("Labels") or {})
    wrong = {
        label: (build_args[arg], image_labels.get(label))
        for arg, label in LINEAGE_LABELS.items()
        if arg in build_args and image_labels.get(label) != build_args[arg]
    }
    if wrong:
        details = "; ".join(f"{label}: expected {want!r}, image has {got!r}" for label, (want, got) in wrong.items())
        raise ImageBuildError(f"{tag} was built but does not carry its lineage labels: {details}")
    log.info("built %s = %s in %.1fs", tag, inspected["Id"], time.monotonic() - started)
    return ImageRef(id=inspected["Id"], tag=tag, labels=image_labels)


def _engine_disk_full(api: docker.APIClient, tag: str, step: str, message: str) -> NoSpace:
    """A full disk on the engine is no verdict on the image: the same build goes through once space is freed."""
    try:
        root = api.info().get("DockerRootDir") or "its data root"
    except (requests.RequestException, docker.errors.DockerException):
        root = "its data root"
    return NoSpace(
        f"no space left on device on the Docker engine {engine_name(api)} ({root}) during the build of {tag} at "
        f"{step}: {message}. Free space (`modelship gc` prunes old app images and the build cache); the task's "
        "retry builds again"
    )
