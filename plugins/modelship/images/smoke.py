"""Smoke-test a built image the way production runs it (non-root, read-only root filesystem, no capabilities,
memory and pids limits) and ask it the questions a user would: ready? which build are you? what is this digit?"""

from __future__ import annotations

import base64
import io
import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import docker
import requests

from modelship.images.engine import api_of
from modelship.net import free_port
from modelship.verdicts import Verdict

if TYPE_CHECKING:
    from modelship.images.engine import DockerLike

log = logging.getLogger("modelship.images")

# Containers started by smoke_test carry this label, so a crashed worker's leftovers can be found, and the
# time (epoch seconds) after which no smoke test can still be using them: then the next smoke test removes them.
SMOKE_LABEL = "io.modelship.smoke-test"
SMOKE_EXPIRES_LABEL = "io.modelship.smoke-test.expires"
# Beyond the readiness timeout: /healthz, /version and /score (10 s each at most), and slack for a slow engine.
SMOKE_GRACE = 600
# What the container may use, as the docker target runs the app (modelship.deploy.docker): an image that
# forks or allocates without bound fails its smoke test instead of taking the worker down with it.
SMOKE_MEM_LIMIT = "1g"
SMOKE_PIDS_LIMIT = 256


class SmokeTestFailed(Verdict, AssertionError):
    """The built image did not behave: the message says which check failed and what was seen."""


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
    api = api_of(docker_like)
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
                mem_limit=SMOKE_MEM_LIMIT,
                memswap_limit=SMOKE_MEM_LIMIT,  # no swap on top
                pids_limit=SMOKE_PIDS_LIMIT,
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
