"""Build, smoke-test and push the serving image (Docker provider's DockerHook / docker-py low-level API).

CI's build, smoke-test and push steps in one module: `wheelhouse` + `build_context` + `build_image` turn
app/ and a model package into an image whose labels carry its lineage; `smoke_test` runs that image the way
production will (non-root, read-only root filesystem, no capabilities) and asks it the questions a user
would; `push_image` sends it to the registry and returns the digest everything downstream refers to.

Every function takes a `DockerHook`, a `docker.APIClient` or a `docker.DockerClient` ("docker" below) so the
DAGs can hand over the hook built from the registry connection, and tests the harness's client.
"""

from __future__ import annotations

import base64
import hashlib
import io
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import docker
import requests

from modelpkg.manifest import verify_package
from modelship.net import free_port
from modelship.registry import (
    LABEL_CREATED,
    LABEL_MODEL_NAME,
    LABEL_MODEL_SHA256,
    LABEL_MODEL_VERSION,
    LABEL_REVISION,
    LABEL_SOURCE,
    LABEL_VERSION,
    registry_address,
    with_retries,
)

if TYPE_CHECKING:
    from airflow.providers.docker.hooks.docker import DockerHook

    DockerLike = DockerHook | docker.APIClient | docker.DockerClient

log = logging.getLogger(__name__)

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
# Containers started by smoke_test carry this label, so a crashed worker's leftovers can be found, and the
# time (epoch seconds) after which no smoke test can still be using them: then the next smoke test removes them.
SMOKE_LABEL = "io.modelship.smoke-test"
SMOKE_EXPIRES_LABEL = "io.modelship.smoke-test.expires"
# Beyond the readiness timeout: /healthz, /version and /score (10 s each at most), and slack for a slow engine.
SMOKE_GRACE = 600
_IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".pytest_cache", ".mypy_cache", ".ruff_cache")


class WheelhouseError(RuntimeError):
    """pip could not download the wheels; the message carries pip's last lines."""


class ImageBuildError(RuntimeError):
    """The image did not build (the message names the failing step and its error) or lacks its lineage."""


class SmokeTestFailed(AssertionError):
    """The built image did not behave: the message says which check failed and what was seen."""


class ImagePushError(RuntimeError):
    """The push failed: refused credentials, an unreachable registry (after retries), or a stream error."""


class EngineUnavailable(RuntimeError):
    """The Docker engine stopped answering mid-step: an outage worth a retry, not a verdict on the image."""


# ---------------------------------------------------------------------------------------------- lineage


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
        return {
            "BASE_IMAGE": base_image,
            "GIT_COMMIT": self.commit,
            "BUILD_DATE": self.created,
            "SOURCE_URL": self.source,
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


# ---------------------------------------------------------------------------------------------- docker


def docker_hook(registry_conn_id: str | None = None, base_url: str | None = None) -> DockerHook:
    """The Docker provider's hook for our engine, logged into the registry of `registry_conn_id`.

    Defaults come from settings. The hook logs in lazily, the first time its api_client is used.
    """
    from airflow.providers.docker.hooks.docker import DockerHook

    from modelship.settings import Settings

    settings = Settings.get()
    return DockerHook(
        docker_conn_id=registry_conn_id or settings.registry_conn_id,
        base_url=base_url or settings.docker_host,
        timeout=300,  # the classic builder sends nothing while a quiet RUN step works
    )


def _api(docker_like: DockerLike) -> docker.APIClient:
    if isinstance(docker_like, docker.APIClient):
        return docker_like
    if isinstance(docker_like, docker.DockerClient):
        return docker_like.api
    return docker_like.api_client  # DockerHook: logs into its connection's registry on first use


# ---------------------------------------------------------------------------------------------- wheelhouse


def wheelhouse(requirements: Path, cache_dir: Path, *, timeout: float = 900) -> Path:
    """Download the wheels for `requirements` into <cache_dir>/wheels/<sha256 of the file>, once.

    The image installs from this folder with --no-index (pip cannot reach PyPI inside `docker build`, and a
    wheelhouse makes the build reproducible). The host runs the same Python minor version as the image, so
    the current interpreter's pip picks the right wheels. Only the file's bytes are the key: a requirements
    file that includes another (-r) must be fully pinned in itself, as app/requirements.txt is.
    """
    requirements = Path(requirements)
    key = hashlib.sha256(requirements.read_bytes()).hexdigest()
    root = Path(cache_dir) / "wheels"
    target = root / key
    if target.is_dir():
        log.info("wheelhouse %s: cached for %s", target, requirements)
        return target
    root.mkdir(parents=True, exist_ok=True)
    # Download next to the target and rename at the end: a failed or killed download leaves no half folder
    # that a later run would mistake for a complete wheelhouse.
    staging = Path(tempfile.mkdtemp(prefix=f".{key[:12]}.", suffix=".tmp", dir=root))
    argv = [
        sys.executable, "-m", "pip", "download", "--only-binary=:all:", "--disable-pip-version-check",
        "--no-input", "--progress-bar", "off", "-r", str(requirements), "-d", str(staging),
    ]  # fmt: skip
    log.info("wheelhouse: %s", " ".join(argv))
    started = time.monotonic()
    try:
        _run_logged(argv, timeout=timeout, error=WheelhouseError)
        try:
            staging.rename(target)
        except OSError:
            if not target.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)  # a concurrent run finished first: use its copy
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    wheels = sorted(p.name for p in target.glob("*.whl"))
    log.info("wheelhouse %s: %d wheels in %.0fs", target, len(wheels), time.monotonic() - started)
    return target


def _run_logged(argv: list[str], *, timeout: float, error: type[Exception]) -> None:
    """Run a command, streaming its output to the log line by line; raise `error` with its tail."""
    tail: list[str] = []

    def pump(stdout: IO[str]) -> None:
        for line in stdout:
            log.info("  %s", line.rstrip())
            tail.append(line.rstrip())
            del tail[:-20]

    with subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    ) as proc:
        assert proc.stdout is not None
        # A reader thread, so a command that hangs silently still hits the timeout.
        reader = threading.Thread(target=pump, args=(proc.stdout,), daemon=True)
        reader.start()
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            reader.join(5)
            raise error(f"{' '.join(argv[:5])} … timed out after {timeout:.0f}s:\n" + "\n".join(tail)) from None
        reader.join(5)
    if code != 0:
        raise error(f"{' '.join(argv[:5])} … exited {code}:\n" + "\n".join(tail))


# ---------------------------------------------------------------------------------------------- context


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
    """
    app_dir, model_dir, wheels_dir, dest = (Path(p) for p in (app_dir, model_dir, wheels_dir, dest))
    if not (app_dir / "Dockerfile").is_file():
        raise ImageBuildError(f"{app_dir}: no Dockerfile; not an app folder")
    verify_package(model_dir)
    if not any(wheels_dir.glob("*.whl")):
        raise ImageBuildError(f"{wheels_dir}: no wheels in the wheelhouse")
    if dest.exists():
        shutil.rmtree(dest)
    counts = {"linked": 0, "copied": 0}

    def link_or_copy(src: str, dst: str) -> str:
        try:
            os.link(src, dst)
            counts["linked"] += 1
        except OSError:  # EXDEV (other filesystem), EPERM (protected_hardlinks), EMLINK: copy instead
            shutil.copy2(src, dst)
            counts["copied"] += 1
        return dst

    def app_ignore(folder: str, names: list[str]) -> set[str]:
        ignored = set(_IGNORED(folder, names))
        if Path(folder) == app_dir:
            # These come from the arguments, never from a stray local copy.
            ignored |= {"wheels", "model", "modelpkg"}
        return ignored

    library = Path(library_dir) if library_dir is not None else app_dir.parent / "modelpkg"
    shutil.copytree(app_dir, dest, ignore=app_ignore, copy_function=link_or_copy)
    shutil.copytree(wheels_dir, dest / "wheels", ignore=_IGNORED, copy_function=link_or_copy)
    shutil.copytree(model_dir, dest / "model", ignore=_IGNORED, copy_function=link_or_copy)
    if library.is_dir():
        shutil.copytree(library, dest / "modelpkg", ignore=_IGNORED, copy_function=link_or_copy)
    log.info("build context %s: %d files linked, %d copied", dest, counts["linked"], counts["copied"])
    return dest


# ---------------------------------------------------------------------------------------------- build


def build_image(
    docker_like: DockerLike,
    context: Path,
    tag: str,
    build_args: dict[str, str],
    labels: dict[str, str] | None = None,
    *,
    timeout: int = 1800,
) -> ImageRef:
    """Build context/Dockerfile as `tag` (classic builder, host network); return the image.

    The build output goes to the log line by line. A failing step raises ImageBuildError naming the step
    and its error. Afterwards every lineage build arg (GIT_COMMIT, MODEL_SHA256, … see LINEAGE_LABELS) must
    be on the image as its label: an image that cannot say what it was built from is not shipped.
    """
    api = _api(docker_like)
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
            network_mode="host",  # no bridge on this engine; RUN steps see only loopback
            rm=True,
            forcerm=True,  # intermediate containers go even when a step fails
            pull=False,  # the base image is local (nothing can be pulled here)
            decode=True,
            timeout=timeout,
        )
        for chunk in stream:
            if "error" in chunk or "errorDetail" in chunk:
                message = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                output = "\n".join(tail[-15:])
                _engine_still_there(api, f"the build of {tag} at {step} ({message})")
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
        raise ImageBuildError(f"build of {tag} refused by the engine: {exc.explanation or exc}") from exc
    except requests.RequestException as exc:  # the connection to the engine broke
        raise EngineUnavailable(
            f"Docker engine {_engine(api)} went away during the build of {tag} at {step}: {exc}"
        ) from exc
    if pending.strip():
        log.info("  %s", pending.rstrip())
    if not image_id:
        _engine_still_there(api, f"the build of {tag} at {step}")
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


def _engine(api: docker.APIClient) -> str:
    """The engine's address as configured: unix://<socket> (docker-py calls every socket http+docker://localhost)."""
    socket_path = getattr(getattr(api, "_custom_adapter", None), "socket_path", None)
    return f"unix://{socket_path}" if socket_path else api.base_url


def _engine_still_there(api: docker.APIClient, during: str) -> None:
    """Raise EngineUnavailable if the engine does not answer: a step it killed while stopping is not a
    failed step (that would be a verdict, failing the run without a retry)."""
    try:
        api.ping()
    except (requests.RequestException, docker.errors.DockerException) as exc:
        raise EngineUnavailable(f"Docker engine {_engine(api)} stopped answering during {during}: {exc}") from exc


# ---------------------------------------------------------------------------------------------- smoke test


# Held-out digit the smoke test sends by default: a "2" that models trained with different seeds all rank
# first with p ≈ 1.0 after the app's re-framing, so a failure means a broken image, not a hard digit.
SMOKE_SAMPLE_INDEX = 12


def sample_digit(index: int = SMOKE_SAMPLE_INDEX, size: int = 64) -> tuple[bytes, str]:
    """(PNG bytes, label) of held-out digit `index`: the 8x8 0..16 image scaled up, black ink on white.

    The held-out split never trains a model, so the smoke test asks the image about a digit it has not
    memorised. Nearest-neighbour scaling keeps the 8x8 blocks sharp, as a scanned digit would be.
    """
    import numpy as np
    from PIL import Image

    from modelpkg.dataset import LABELS, load_split

    _, x_heldout, _, y_heldout = load_split()
    pixels = x_heldout[index].reshape(8, 8)
    gray = np.clip(255.0 - pixels * (255.0 / 16.0), 0, 255).round().astype(np.uint8)
    image = Image.fromarray(gray, mode="L").resize((size, size), Image.Resampling.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue(), LABELS[int(y_heldout[index])]


def smoke_test(
    docker_like: DockerLike,
    image: str,
    *,
    commit: str,
    model_version: str,
    model_sha256: str,
    sample_png: bytes,
    expected_label: str,
    timeout: float = 60,
) -> dict[str, Any]:
    """Run the image as production does and check it; SmokeTestFailed names the failed check.

    Checks, in order: the image's user is not root; /readyz answers 200 within `timeout` (a container that
    exits first fails with its last log lines); /healthz answers 200; /version reports `commit` and the
    model version + sha256; POST /score ranks `expected_label` first for `sample_png`. The container is
    removed whatever happens; the expired leftovers of smoke tests whose worker died are removed first.
    """
    api = _api(docker_like)
    sweep_smoke_leftovers(api)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    name = f"modelship-smoke-{uuid.uuid4().hex[:10]}"
    container: str | None = None
    started = time.monotonic()
    session = requests.Session()
    session.trust_env = False  # an HTTP proxy from the environment must not answer for 127.0.0.1
    try:
        container = _create(
            api,
            image,
            name=name,
            environment={"APP_BIND": f"127.0.0.1:{port}", "APP_WORKERS": "1"},
            labels={SMOKE_LABEL: "1", SMOKE_EXPIRES_LABEL: str(int(time.time() + timeout + SMOKE_GRACE))},
            host_config=api.create_host_config(
                network_mode="host",  # the engine has no bridge; the app binds loopback only
                read_only=True,
                tmpfs={"/tmp": ""},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
            ),
        )
        user = api.inspect_container(container)["Config"].get("User") or ""
        if user.split(":")[0] in ("", "root", "0"):
            raise SmokeTestFailed(f"{image}: runs as root (Config.User={user!r}); the image must set a non-root USER")
        try:
            api.start(container)
        except docker.errors.APIError as exc:
            raise SmokeTestFailed(f"{image}: container did not start: {exc.explanation or exc}") from exc
        log.info("smoke test: %s as %s on %s (user %s)", image, name, base, user)

        _wait_ready(api, container, session, base, timeout, image)
        ready_seconds = round(time.monotonic() - started, 2)

        health = _get(session, f"{base}/healthz", "GET /healthz")
        if health.status_code != 200:
            raise SmokeTestFailed(f"GET /healthz answered {health.status_code}: {health.text[:300]}")

        version = _json(_get(session, f"{base}/version", "GET /version"), "GET /version")
        model = version.get("model") or {}
        seen = {"commit": version.get("commit"), "model.version": model.get("version"),
                "model.sha256": model.get("sha256")}  # fmt: skip
        wanted = {"commit": commit, "model.version": model_version, "model.sha256": model_sha256}
        wrong = [f"{key}: expected {wanted[key]!r}, got {seen[key]!r}" for key in wanted if seen[key] != wanted[key]]
        if wrong:
            raise SmokeTestFailed("GET /version does not describe this build: " + "; ".join(wrong))

        payload = {"images": [base64.b64encode(sample_png).decode("ascii")]}
        try:
            scored = session.post(f"{base}/score", json=payload, timeout=10)
        except requests.RequestException as exc:
            raise SmokeTestFailed(f"POST /score failed: {exc}") from exc
        body = _json(scored, "POST /score")
        try:
            top = body["predictions"][0]["top3"][0]
        except (KeyError, IndexError, TypeError) as exc:
            raise SmokeTestFailed(f"POST /score: unexpected answer shape: {str(body)[:300]}") from exc
        if str(top.get("label")) != expected_label:
            raise SmokeTestFailed(
                f"POST /score: top-1 is {top.get('label')!r} (p={top.get('probability')}), "
                f"expected {expected_label!r}; top3={body['predictions'][0]['top3']}"
            )
        result = {
            "image": image,
            "user": user,
            "ready_seconds": ready_seconds,
            "version": version,
            "prediction": top,
            "expected_label": expected_label,
        }
        log.info("smoke test passed: %s", result)
        return result
    finally:
        session.close()
        if container is not None:
            try:
                api.remove_container(container, force=True, v=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:  # report, but do not hide the test's own outcome
                log.error("smoke test: could not remove container %s: %s", name, exc)


def sweep_smoke_leftovers(api: docker.APIClient) -> list[str]:
    """Remove smoke-test containers past their expiry: a worker killed mid-test never removed its container,
    which would otherwise serve (and hold memory and a port) forever. Returns their names."""
    removed = []
    now = time.time()
    for found in api.containers(all=True, filters={"label": SMOKE_LABEL}):
        expires = (found.get("Labels") or {}).get(SMOKE_EXPIRES_LABEL, "")
        if not expires.isdigit() or int(expires) > now:
            continue  # a smoke test may still be using it
        name = (found.get("Names") or [found["Id"][:12]])[0].lstrip("/")
        try:
            api.remove_container(found["Id"], force=True, v=True)
        except docker.errors.NotFound:
            continue  # another worker's sweep got there first
        log.warning("removed %s, a smoke-test container left behind by a worker that died (expired)", name)
        removed.append(name)
    return removed


def _create(api: docker.APIClient, image: str, **kwargs: Any) -> str:
    try:
        return api.create_container(image, **kwargs)["Id"]
    except docker.errors.APIError as exc:  # e.g. no CMD, unknown image: the image is broken, not the engine
        raise SmokeTestFailed(f"{image}: could not create a container: {exc.explanation or exc}") from exc


def _wait_ready(
    api: docker.APIClient, container: str, session: requests.Session, base: str, timeout: float, image: str
) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer yet"
    while time.monotonic() < deadline:
        state = api.inspect_container(container)["State"]
        if not state.get("Running"):
            raise SmokeTestFailed(
                f"{image}: container exited (code {state.get('ExitCode')}) before /readyz answered 200; "
                f"last log lines:\n{_logs(api, container)}"
            )
        try:
            response = session.get(f"{base}/readyz", timeout=2)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except requests.RequestException as exc:
            last = type(exc).__name__
        time.sleep(0.25)
    raise SmokeTestFailed(
        f"{image}: /readyz did not answer 200 within {timeout:.0f}s (last: {last}); "
        f"last log lines:\n{_logs(api, container)}"
    )


def _logs(api: docker.APIClient, container: str, lines: int = 30) -> str:
    try:
        return api.logs(container, tail=lines).decode("utf-8", "replace").rstrip()
    except docker.errors.APIError as exc:
        return f"(logs unavailable: {exc})"


def _get(session: requests.Session, url: str, what: str) -> requests.Response:
    try:
        return session.get(url, timeout=10)
    except requests.RequestException as exc:
        raise SmokeTestFailed(f"{what} failed: {exc}") from exc


def _json(response: requests.Response, what: str) -> dict[str, Any]:
    if response.status_code != 200:
        raise SmokeTestFailed(f"{what} answered {response.status_code}: {response.text[:300]}")
    try:
        body = response.json()
    except ValueError as exc:
        raise SmokeTestFailed(f"{what}: not JSON: {response.text[:300]}") from exc
    if not isinstance(body, dict):
        raise SmokeTestFailed(f"{what}: expected a JSON object, got {str(body)[:300]}")
    return body


# ---------------------------------------------------------------------------------------------- push

# Errors inside the push stream that say "try again later" rather than "this will never work".
_TRANSIENT_PUSH = (
    "connection refused", "connection reset", "i/o timeout", "tls handshake timeout", "broken pipe",
    "unexpected eof", ": eof", "502 bad gateway", "503 service unavailable", "504 gateway", "client.timeout",
    "temporary failure",
)  # fmt: skip
_AUTH_PUSH = ("unauthorized", "authentication required", "no basic auth credentials", "denied")


class _TransientPushError(ImagePushError):
    pass


def push_image(
    docker_like: DockerLike,
    image: str,
    repository: str,
    tag: str,
    *,
    registry_conn: str,
    attempts: int = 4,
    backoff: float = 2.0,
) -> str:
    """Tag `image` as <registry>/<repository>:<tag>, push it, return the registry's manifest digest.

    The registry address and credentials come from the Airflow connection `registry_conn` (conn type
    docker): a DockerHook built on that connection logs in itself; a plain docker client gets the
    connection's credentials as the push's auth config (a connection without login pushes anonymously).
    docker-py reports push failures inside the stream, not as exceptions: every chunk is checked.
    Connection problems are retried with exponential backoff; refused credentials are not.
    """
    from airflow.sdk import BaseHook

    conn = BaseHook.get_connection(registry_conn)
    if not conn.host:
        raise ImagePushError(f"connection {registry_conn!r} has no host (the registry address)")
    registry = registry_address(conn.host, conn.port)
    target = f"{registry}/{repository}"
    auth_config: dict[str, str] | None
    hook_conn = getattr(docker_like, "docker_conn_id", None)  # set on a DockerHook that logs in
    if hook_conn:
        if hook_conn != registry_conn:
            raise ImagePushError(f"the DockerHook logs into connection {hook_conn!r}, not {registry_conn!r}")
        auth_config = None  # the hook's login stored the credentials in its client
    elif conn.login:
        auth_config = {"username": conn.login, "password": conn.password or "", "serveraddress": registry}
    else:
        auth_config = {}  # anonymous: never fall back to whatever ~/.docker/config.json holds

    def connect() -> docker.APIClient:
        try:
            return _api(docker_like)
        except docker.errors.APIError as exc:  # DockerHook's login is the first call on its client
            explanation = str(exc.explanation or exc)
            if any(word in explanation.lower() for word in _TRANSIENT_PUSH):  # down, not a refusal
                raise _TransientPushError(f"registry {registry} unreachable for the login: {explanation}") from exc
            raise ImagePushError(
                f"registry {registry} refused the credentials of connection {registry_conn!r}: {explanation}"
            ) from exc

    def retried(call: Any, what: str) -> Any:
        """call() with transient failures retried; the last one becomes an ImagePushError naming the attempts."""
        try:
            return with_retries(
                call,
                what=what,
                attempts=attempts,
                backoff=backoff,
                transient=lambda exc: isinstance(exc, _TransientPushError),
            )
        except _TransientPushError as exc:
            raise ImagePushError(f"push of {target}:{tag} failed after {attempts} attempts: {exc}") from exc

    api = retried(connect, f"log in to {registry} to push {target}:{tag}")
    api.tag(image, target, tag=tag)
    log.info("pushing %s as %s:%s", image, target, tag)
    started = time.monotonic()

    def push_once() -> str:
        try:
            stream = api.push(target, tag=tag, stream=True, decode=True, auth_config=auth_config)
            return _read_push_stream(stream, f"{target}:{tag}", registry, registry_conn)
        except (requests.ConnectionError, requests.Timeout) as exc:
            raise _TransientPushError(f"Docker engine connection failed while pushing: {exc}") from exc

    digest = retried(push_once, f"push {target}:{tag}")
    log.info("pushed %s:%s = %s in %.1fs", target, tag, digest, time.monotonic() - started)
    return digest


def _read_push_stream(stream: Any, ref: str, registry: str, conn_id: str) -> str:
    digest: str | None = None
    last_status: dict[str, str] = {}
    for chunk in stream:
        error = chunk.get("error") or (chunk.get("errorDetail") or {}).get("message")
        if error:
            lowered = error.lower()
            if any(word in lowered for word in _AUTH_PUSH):
                raise ImagePushError(
                    f"registry {registry} refused the credentials of connection {conn_id!r} pushing {ref}: {error}"
                )
            if any(word in lowered for word in _TRANSIENT_PUSH):
                raise _TransientPushError(f"pushing {ref}: {error}")
            raise ImagePushError(f"push of {ref} failed: {error}")
        aux = chunk.get("aux")
        if isinstance(aux, dict) and aux.get("Digest"):
            digest = aux["Digest"]
        status, layer = chunk.get("status"), chunk.get("id", "")
        # Log each layer's state changes, not its progress bar.
        if status and not chunk.get("progressDetail") and last_status.get(layer) != status:
            last_status[layer] = status
            log.info("  %s%s", f"{layer}: " if layer else "", status)
    if not digest:
        raise ImagePushError(f"push of {ref} ended without a digest from the registry")
    return digest
