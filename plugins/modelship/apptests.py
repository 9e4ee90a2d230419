"""Run the application's own tests for a checkout, in a throwaway container that can reach nothing.

A commit's tests, and the install of what they need, are the commit's code: they never run on the worker,
beside Airflow's connections, the state folder and the Docker socket. Three pieces, all on the Docker engine:

- the **test environment**: an image `modelship-testenv:<key>` FROM the base image with app/requirements.txt
  and app/requirements-test.txt installed in /opt/testenv. The worker only downloads wheels for them
  (images.wheelhouse: pinned requirements only, `pip download --only-binary=:all:`: no package code runs); the
  install runs in the image build, with no network, as uid 10001. Keyed by the base image, the pinned
  requirements and the recipe below: a commit that changes no requirement reuses it and installs nothing.
  With MODELSHIP_APPTESTS_ALLOW_SDIST=1 source packages are allowed; then the whole install runs in the build,
  from MODELSHIP_APPTESTS_INDEX_URL, on the host network (it needs the index), setup.py scripts included.
- the **run image**: the environment plus a copy of the checkout in /src (COPY only, no step runs; symbolic
  links stay links), removed after the run.
- the **test container**: `python -m pytest tests/app` in /src, as uid 10001, with the allow-listed
  TEST_ENVIRONMENT and nothing of the worker's, no network (`none`: only its own loopback, where the tests
  start their servers), no mounts, a read-only root filesystem and a tmpfs /tmp, no capabilities, and memory,
  pids and CPU limits (settings: apptests_*). Removed after the run.

Red tests, a requirement that cannot be met (or is refused), a timeout or the memory limit are the commit's
(AppTestsFailed, a verdict); the package index or the engine not answering is not (transient).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import re
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import docker
import requests

from modelpkg.atomic import atomic_dir
from modelship import images
from modelship.fs import link_tree, locked, mark_used
from modelship.images.engine import EngineUnavailable, api_of, engine_name
from modelship.images.wheelhouse import INDEX_UNREACHABLE
from modelship.retry import Transient
from modelship.settings import Settings
from modelship.verdicts import Verdict

if TYPE_CHECKING:
    from modelship.images.engine import DockerLike

log = logging.getLogger(__name__)

REQUIREMENTS = ("app/requirements.txt", "app/requirements-test.txt")
TESTENV_REPOSITORY = "modelship-testenv"
TESTENV_LABEL = "io.modelship.apptests.env"  # the environment's key, on each test environment image
INSTALL_LABEL = "io.modelship.apptests.install"  # on the intermediate images of one environment build
RUN_LABEL = "io.modelship.apptests.run"  # on each run image and test container
RUN_EXPIRES_LABEL = "io.modelship.apptests.expires"  # after this (epoch seconds) no run can still use it
RUN_GRACE = 600  # beyond the tests' timeout: the run image's build, the logs, a slow engine
TEST_USER = "10001:10001"
VENV = "/opt/testenv"
SRC = "/src"
LOG_LINES = 200  # of the tests' output, into the task log
# The test container's whole environment (the base image's own ENV aside): an allow-list. Nothing of the
# worker's reaches it: no AIRFLOW_CONN_*, DOCKER_HOST, MODELSHIP_*, proxy or cloud variables.
TEST_ENVIRONMENT = {
    "PATH": f"{VENV}/bin:/usr/local/bin:/usr/bin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "PYTHONDONTWRITEBYTECODE": "1",  # the root filesystem is read-only
    "PYTHONUNBUFFERED": "1",
    # The checkout is not installed: its packages are found the way pytest's own `pythonpath` setting does.
    "PYTHONPATH": f"{SRC}:{SRC}/plugins:{SRC}/app",
    "HYPOTHESIS_STORAGE_DIRECTORY": "/tmp/.hypothesis",  # not ./.hypothesis in the read-only checkout
}
# The install stage carries its build's id: its images (the wheels, a half install) are removed after the build.
_INSTALL_STAGE = f"""\
ARG BASE_IMAGE
FROM ${{BASE_IMAGE}} AS install
ARG BUILD_ID
LABEL {INSTALL_LABEL}=$BUILD_ID
ENV HOME=/tmp PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
RUN python3 -m venv {VENV} && chown -R {TEST_USER} {VENV}
USER {TEST_USER}
"""
_FINAL_STAGE = f"""\
FROM ${{BASE_IMAGE}}
COPY --from=install {VENV} {VENV}
"""
# Wheels only: from the worker's wheelhouse, offline (the build runs with no network).
WHEELS_RECIPE = _INSTALL_STAGE + f"""\
COPY wheels/ /wheels/
COPY requirements.txt /wheels/requirements.txt
RUN {VENV}/bin/pip install --no-index --find-links /wheels -r /wheels/requirements.txt
""" + _FINAL_STAGE
# Source packages allowed: from the index, on the host network (setup.py runs here, as uid 10001).
SDIST_RECIPE = _INSTALL_STAGE + f"""\
COPY requirements.txt /requirements/requirements.txt
ARG INDEX_URL
RUN {VENV}/bin/pip install --index-url "$INDEX_URL" -r /requirements/requirements.txt
""" + _FINAL_STAGE


class AppTestsFailed(Verdict, RuntimeError):
    """The app's tests failed for this commit (or its requirements cannot be installed); the message says how."""


class TestEnvironmentUnavailable(Transient, RuntimeError):
    """The package index or the Docker engine did not answer while the tests were prepared or run: worth a retry."""

    __test__ = False  # not a pytest class


@dataclass(frozen=True)
class TestEnvironment:
    """A test environment image: its id, tag and key, and whether this call built it."""

    __test__ = False  # not a pytest class

    image: str
    tag: str
    key: str
    built: bool
    parallel: bool = False  # pytest-xdist is among the requirements: the tests run across the CPUs


_XDIST = re.compile(r"pytest[-_.]xdist\b", re.IGNORECASE)


def pytest_command(paths: tuple[str, ...], env: TestEnvironment, cpus: float) -> list[str]:
    """pytest on `paths`, across `cpus` worker processes (pytest-xdist) when the commit's test requirements
    ask for it and the container may use two CPUs or more; every test runs either way."""
    command = [f"{VENV}/bin/python", "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if env.parallel and int(cpus) >= 2:
        command += ["-n", str(int(cpus))]
    return [*command, *paths]


def _requirements(checkout: Path) -> list[Path]:
    root = checkout.resolve()
    paths = []
    for rel in REQUIREMENTS:
        path = checkout / rel
        if not path.is_file():
            raise AppTestsFailed(f"{rel} is missing in the checkout: cannot build the test environment")
        if path.is_symlink() or not path.resolve().is_relative_to(root):
            raise AppTestsFailed(f"{rel} is a symbolic link: the test requirements must be a file of the commit")
        paths.append(path)
    return paths


def environment(checkout: Path, cache_dir: Path, docker_like: DockerLike | None = None) -> TestEnvironment:
    """The test environment image for this checkout's requirements: reused when the engine has it, else built
    (its wheels downloaded on the worker first). `<cache_dir>/testenv/<key>` records when it was last used
    (retention removes the image with that record)."""
    settings = Settings.get()
    api = api_of(docker_like or images.engine_client())
    paths = _requirements(checkout)
    try:
        pins = [pin for path in paths for pin in images.pinned_requirements(path)]
    except images.RequirementsRefused as exc:
        raise AppTestsFailed(f"the test requirements were refused: {exc}") from exc
    images.ensure_base_image(api, settings.base_image, settings.registry_conn_id)
    base_id = api.inspect_image(settings.base_image)["Id"]
    recipe = SDIST_RECIPE if settings.apptests_allow_sdist else WHEELS_RECIPE
    source = settings.apptests_index_url if settings.apptests_allow_sdist else "wheels"
    key = hashlib.sha256("\0".join([recipe, base_id, source, *pins]).encode()).hexdigest()
    tag = f"{TESTENV_REPOSITORY}:{key[:16]}"
    record = Path(cache_dir) / "testenv" / key[:16]
    with _one_build_at_a_time(Path(cache_dir), key, tag):
        try:
            image = api.inspect_image(tag)["Id"]
        except docker.errors.ImageNotFound:
            image = None
        except requests.RequestException as exc:
            raise EngineUnavailable(f"Docker engine {engine_name(api)} did not answer: {exc}") from exc
        built = image is None
        if image is None:
            log.info("building the test environment %s (first use of these requirements on this engine)", tag)
            image = _build_environment(api, paths, pins, recipe, tag, key, settings, Path(cache_dir))
        else:
            log.info("reusing the test environment %s (%s): these requirements are installed already", tag,
                     image[7:19])  # fmt: skip
    if not record.is_dir():
        with atomic_dir(record, keep_existing=True) as staging:
            (staging / "image").write_text(f"{tag}\n")
    mark_used(record)
    parallel = any(_XDIST.match(pin) for pin in pins)
    return TestEnvironment(image=image, tag=tag, key=key, built=built, parallel=parallel)


def _one_build_at_a_time(cache_dir: Path, key: str, tag: str) -> contextlib.AbstractContextManager[None]:
    """Runs that share a cache (one worker, or `make up` preparing the environment ahead of the first ci run)
    wait for each other's build of an environment and then find it built, instead of building it twice at once.
    Workers with caches of their own can still build it together: _drop_if_superseded settles that."""
    lock = cache_dir / "testenv" / f".{key[:16]}.lock"  # a dotfile: retention leaves it alone
    lock.parent.mkdir(parents=True, exist_ok=True)
    return locked(lock, on_wait=lambda: log.info("waiting for %s: another run on this cache is building it", tag))


def _build_environment(api: docker.APIClient, paths: list[Path], pins: list[str], recipe: str, tag: str, key: str,
                       settings: Settings, cache_dir: Path) -> str:  # fmt: skip
    started = time.monotonic()
    build_id = uuid.uuid4().hex
    build_args = {"BASE_IMAGE": settings.base_image, "BUILD_ID": build_id}
    staging = cache_dir / "testenv-build" / f".{key[:16]}.{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    try:
        (staging / "Dockerfile").write_text(recipe)
        (staging / "requirements.txt").write_text("".join(f"{pin}\n" for pin in pins))
        if settings.apptests_allow_sdist:
            build_args["INDEX_URL"] = settings.apptests_index_url
        else:
            try:
                wheels = images.wheelhouse(paths, cache_dir)
            except images.IndexUnavailable as exc:
                raise TestEnvironmentUnavailable(f"the package index did not answer while downloading:\n{exc}") from exc
            except images.WheelhouseError as exc:
                raise AppTestsFailed(
                    f"the test requirements cannot be installed from wheels (source packages are not allowed: "
                    f"MODELSHIP_APPTESTS_ALLOW_SDIST=1 allows them):\n{exc}"
                ) from exc
            link_tree(wheels, staging / "wheels")
        try:
            built = images.build_image(
                api, staging, tag, build_args, labels={TESTENV_LABEL: key},
                network_mode="host" if settings.apptests_allow_sdist else "none",
            )  # fmt: skip
        except images.ImageBuildError as exc:
            said = str(exc).lower()
            if settings.apptests_allow_sdist and any(word in said for word in INDEX_UNREACHABLE):
                raise TestEnvironmentUnavailable(f"the package index did not answer while installing:\n{exc}") from exc
            raise AppTestsFailed(f"installing the test requirements failed:\n{exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_install_stage(api, build_id)
    log.info("test environment %s built in %.0fs", tag, time.monotonic() - started)
    return built.id


def _remove_install_stage(api: docker.APIClient, build_id: str) -> None:
    """The install stage's images: the wheels and the venv once more, hundreds of MB that no image needs."""
    try:
        stage = api.images(all=True, filters={"label": f"{INSTALL_LABEL}={build_id}"})
    except (requests.RequestException, docker.errors.DockerException) as exc:
        log.warning("could not list the install stage of the test environment: %s", exc)
        return
    for image in sorted(stage, key=lambda i: i["Created"], reverse=True):  # children first
        try:
            api.remove_image(image["Id"], force=True)
        except docker.errors.NotFound:
            pass  # removed with its child
        except (requests.RequestException, docker.errors.DockerException) as exc:
            log.warning("could not remove %s, an install stage image of the test environment: %s", image["Id"], exc)


def run(
    checkout: Path,
    cache_dir: Path,
    paths: tuple[str, ...] = ("tests/app",),
    timeout: float | None = None,
    docker_like: DockerLike | None = None,
) -> str:
    """Run pytest on `paths` of the checkout in a test container; returns pytest's summary line or raises
    AppTestsFailed (the tests' verdict) or a transient error (the index, the engine)."""
    settings = Settings.get()
    timeout = settings.apptests_timeout if timeout is None else timeout
    try:
        api = api_of(docker_like or images.engine_client())
        sweep_leftovers(api)
    except Exception as exc:  # the provider's hook says "no engine" with an AirflowException
        raise EngineUnavailable(f"Docker engine {settings.docker_host} did not answer: {exc}") from exc
    env = environment(checkout, cache_dir, api)
    run_id = uuid.uuid4().hex[:12]
    labels = {RUN_LABEL: run_id, RUN_EXPIRES_LABEL: str(int(time.time() + timeout + RUN_GRACE))}
    run_image: str | None = None
    container: str | None = None
    try:
        run_image = _run_image(api, checkout, env, run_id, labels)
        container = _create(api, run_image, pytest_command(paths, env, settings.apptests_cpus), run_id, labels,
                            settings)  # fmt: skip
        return _run(api, container, paths, timeout, settings)
    finally:
        _remove(api, container, run_image)
        if env.built:
            _drop_if_superseded(api, env)


def _run_image(api: docker.APIClient, checkout: Path, env: TestEnvironment, run_id: str,
               labels: dict[str, str]) -> str:  # fmt: skip
    """The environment plus the checkout in /src: a build with one COPY and no network (nothing runs)."""
    context = checkout.parent / f".apptests-{run_id}"
    try:
        context.mkdir()
        (context / "Dockerfile").write_text(f"FROM {env.image}\nCOPY src/ {SRC}/\n")
        # The commit's symbolic links stay links: never followed on the worker.
        link_tree(checkout, context / "src", ignore=lambda folder, names: {".git"} & set(names), symlinks=True)
        try:
            return images.build_image(api, context, f"modelship-apptests:{run_id}", {}, labels=labels).id
        except images.ImageBuildError as exc:
            raise TestEnvironmentUnavailable(f"copying the checkout into the test image failed: {exc}") from exc
    finally:
        shutil.rmtree(context, ignore_errors=True)


def _create(api: docker.APIClient, image: str, command: list[str], run_id: str, labels: dict[str, str],
            settings: Settings) -> str:  # fmt: skip
    host_config = api.create_host_config(
        network_mode="none",  # its own loopback only
        read_only=True,
        tmpfs={"/tmp": "rw,nosuid,nodev,mode=1777"},  # counted in the memory limit
        cap_drop=["ALL"],
        security_opt=["no-new-privileges"],
        mem_limit=settings.apptests_memory,
        memswap_limit=settings.apptests_memory,  # no swap on top
        pids_limit=settings.apptests_pids,
        nano_cpus=int(settings.apptests_cpus * 1e9),
        init=True,  # reaps the servers the tests start and leave behind
        # The container's own network namespace: what a release's zero-downtime hand-over needs (the app's
        # tests/app/test_zero_downtime.py), set for this loopback only.
        sysctls={"net.ipv4.tcp_migrate_req": "1"} if Path("/proc/sys/net/ipv4/tcp_migrate_req").exists() else None,
    )
    try:
        return api.create_container(
            image,
            command=command,
            name=f"modelship-apptests-{run_id}",
            user=TEST_USER,
            working_dir=SRC,
            environment=TEST_ENVIRONMENT,
            labels=labels,
            host_config=host_config,
        )["Id"]
    except docker.errors.DockerException as exc:
        raise TestEnvironmentUnavailable(f"the test container could not be created: {exc}") from exc


def _run(api: docker.APIClient, container: str, paths: tuple[str, ...], timeout: float, settings: Settings) -> str:
    started = time.monotonic()
    try:
        api.start(container)
        log.info("running pytest %s in a test container (no network, %s memory, %d pids, %g CPUs)", " ".join(paths),
                 settings.apptests_memory, settings.apptests_pids, settings.apptests_cpus)  # fmt: skip
        timed_out = False
        while (state := api.inspect_container(container)["State"]).get("Running"):
            if not timed_out and time.monotonic() - started > timeout:
                api.kill(container)
                timed_out = True
            time.sleep(0.5)
        output = api.logs(container, stdout=True, stderr=True, tail=LOG_LINES).decode("utf-8", "replace")
    except (requests.RequestException, docker.errors.DockerException) as exc:
        try:
            api.ping()
        except (requests.RequestException, docker.errors.DockerException):
            raise EngineUnavailable(
                f"Docker engine {engine_name(api)} stopped answering while the app's tests ran: {exc}"
            ) from exc
        raise TestEnvironmentUnavailable(f"the test container failed on the engine's side: {exc}") from exc
    lines = output.strip().splitlines()
    for line in lines:
        log.info("pytest | %s", line)
    summary = lines[-1] if lines else "(no output)"
    log.info("the app's tests ran in %.0fs: %s", time.monotonic() - started, summary)
    if timed_out:
        raise AppTestsFailed(f"the app's tests did not finish within {timeout:.0f}s (MODELSHIP_APPTESTS_TIMEOUT)")
    if state.get("ExitCode") == 0:
        return summary
    if state.get("ExitCode") in (137, 143) and not state.get("OOMKilled"):
        # SIGKILL or SIGTERM that modelship did not send (no timeout, no memory limit): the engine stopping (it
        # stops its containers first), or an operator. The tests did not finish; that says nothing of them.
        try:
            api.ping()
        except (requests.RequestException, docker.errors.DockerException) as exc:
            raise EngineUnavailable(f"Docker engine {engine_name(api)} stopped during the app's tests: {exc}") from exc
        raise TestEnvironmentUnavailable(
            f"the test container was stopped from outside (exit code {state.get('ExitCode')}) before the tests "
            f"finished; last line: {summary}"
        )
    if state.get("OOMKilled"):
        raise AppTestsFailed(
            f"the app's tests ran out of memory: the test container may use {settings.apptests_memory} "
            f"(MODELSHIP_APPTESTS_MEMORY); last line: {summary}"
        )
    failed = [line for line in lines if line.startswith(("FAILED", "ERROR"))][:10]
    code = state.get("ExitCode")
    exited = f" (pytest exited {code}{', killed by a signal' if code is not None and code > 128 else ''})"
    raise AppTestsFailed(f"the app's tests failed: {summary}{exited if code != 1 else ''}"
                         + "".join(f"\n  {f}" for f in failed))  # fmt: skip


def _remove(api: docker.APIClient, container: str | None, image: str | None) -> None:
    """Remove the run's container and image; report, never raise (the run's own outcome matters more)."""
    for kind, ref in (("container", container), ("image", image)):
        if ref is None:
            continue
        try:
            if kind == "container":
                api.remove_container(ref, force=True, v=True)
            else:
                api.remove_image(ref, force=True)
        except docker.errors.NotFound:
            pass
        except (requests.RequestException, docker.errors.DockerException) as exc:
            log.error("could not remove the test %s %s (the next run removes it once expired): %s", kind, ref, exc)


def _drop_if_superseded(api: docker.APIClient, env: TestEnvironment) -> None:
    """A run that built the environment while another run built the same one: the tag names only one of the two
    images. The other is removed once its run is over (the engine refuses while a container still uses it)."""
    try:
        if env.tag in (api.inspect_image(env.image).get("RepoTags") or []):
            return
        api.remove_image(env.image)
        log.info("removed %s: a concurrent run's build of the same test environment holds the tag %s",
                 env.image[7:19], env.tag)  # fmt: skip
    except (requests.RequestException, docker.errors.DockerException) as exc:
        log.info("kept %s, a test environment built twice at once: %s", env.image[7:19], exc)


def sweep_leftovers(api: docker.APIClient) -> list[str]:
    """Remove test containers and run images past their expiry (a worker killed mid-run never removed them);
    returns what was removed. Ones a run may still be using are left alone."""
    removed = []
    now = time.time()

    def expired(labels: dict[str, Any] | None) -> bool:
        expires = (labels or {}).get(RUN_EXPIRES_LABEL, "")
        return expires.isdigit() and int(expires) < now

    for found in api.containers(all=True, filters={"label": RUN_LABEL}):
        if expired(found.get("Labels")):
            _remove(api, found["Id"], None)
            removed.append((found.get("Names") or [found["Id"][:12]])[0].lstrip("/"))
    for found in api.images(filters={"label": RUN_LABEL}):
        if expired(found.get("Labels")):
            _remove(api, None, found["Id"])
            removed.append(found["Id"][7:19])
    for name in removed:
        log.warning("removed %s, left behind by an app-test run whose worker died (expired)", name)
    return removed


def remove_environment(api: Any, key: str) -> bool:
    """Remove the test environment image `<TESTENV_REPOSITORY>:<key>` (retention, with its record); False when
    the engine does not have it. An image a run is using is refused by the engine (docker.errors.APIError)."""
    try:
        api.remove_image(f"{TESTENV_REPOSITORY}:{key[:16]}")
    except docker.errors.ImageNotFound:
        return False
    return True
