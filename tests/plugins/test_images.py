"""modelship.images on the harness's real Docker engine and registry.

Two halves: small Dockerfiles prove the failure paths quickly (a failing step, missing lineage labels, an
image that runs as root or dies at start-up); the real app (app/ + a trained model package) is built once
per module and proves the whole chain: wheelhouse → context → build with lineage → smoke test → push, a
smoke test that catches broken images and leaves no container behind, and a code-only rebuild that
reuses the wheel and model layers.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest

from devstack import rootfs
from modelpkg.manifest import manifest_sha256
from modelship import images
from modelship.lineage import LABEL_MODEL_SHA256, LABEL_MODEL_VERSION, LABEL_REVISION
from modelship.registry import RegistryClient
from tests.logcapture import log_messages

pytest_plugins = ["images_fixtures"]
pytestmark = [pytest.mark.docker]

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app"
BASE_IMAGE = rootfs.BASE_IMAGE
COMMIT = "1111111111111111111111111111111111111111"
# The build step that copies the model package into the image (classic builder: "COPY dir:<sum> in <dest>").
MODEL_COPY = re.compile(r"COPY .* in \S*model")


# ------------------------------------------------------------------------------------------ failure paths


def test_failing_build_step_is_reported_with_its_step_and_output(docker_client, tiny_context, tiny_lineage):
    # Other suites share the engine (an outage test kills builds mid-step): only this build's leftovers count.
    before = {c.id for c in docker_client.containers.list(all=True, filters={"ancestor": BASE_IMAGE})}
    context = tiny_context("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN echo about to fail && exit 7\nRUN echo never\n")
    with pytest.raises(images.ImageBuildError) as caught:
        images.build_image(docker_client, context, "modelship-test/broken:latest", tiny_lineage.build_args(BASE_IMAGE))
    message = str(caught.value)
    assert "failed at Step 3/4 : RUN echo about to fail && exit 7" in message
    assert "non-zero code: 7" in message
    assert "about to fail" in message  # the step's own output, for the reader of the task log
    # forcerm: the failed step's container is gone too.
    after = {c.id for c in docker_client.containers.list(all=True, filters={"ancestor": BASE_IMAGE})}
    assert not after - before


def test_image_without_lineage_labels_is_refused(docker_client, tiny_context, tiny_lineage):
    context = tiny_context(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG GIT_COMMIT\nLABEL org.opencontainers.image.revision=$GIT_COMMIT\n"
    )
    with pytest.raises(images.ImageBuildError, match="does not carry its lineage labels") as caught:
        images.build_image(
            docker_client, context, "modelship-test/unlabelled:latest", tiny_lineage.build_args(BASE_IMAGE)
        )
    assert "io.modelship.model.sha256" in str(caught.value)
    assert "org.opencontainers.image.revision" not in str(caught.value)  # that one was set


def test_build_output_is_logged_line_by_line(docker_client, tiny_context, tiny_lineage):
    context = tiny_context("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nRUN printf 'one\\ntwo\\n'\n")
    with log_messages("modelship.images") as logged:
        built = images.build_image(docker_client, context, "modelship-test/lines:latest", {"BASE_IMAGE": BASE_IMAGE})
    messages = [message.strip() for message in logged]
    assert "one" in messages and "two" in messages
    assert built.id.startswith("sha256:") and built.tag == "modelship-test/lines:latest"


def _smoke(docker_client, image: str, **overrides) -> dict:
    png, label = images.sample_digit()
    kwargs = {
        "commit": COMMIT,
        "model_version": "1",
        "model_sha256": "0" * 64,
        "sample_png": png,
        "expected_label": label,
        "timeout": 20,
        **overrides,
    }
    return images.smoke_test(docker_client, image, **kwargs)


def test_smoke_test_refuses_an_image_that_runs_as_root(docker_client, tiny_context, smoke_leftovers):
    context = tiny_context('ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nCMD ["sleep", "600"]\n')  # no USER: root
    image = images.build_image(docker_client, context, "modelship-test/root:latest", {"BASE_IMAGE": BASE_IMAGE})
    with pytest.raises(images.SmokeTestFailed, match="runs as root"):
        _smoke(docker_client, image.id)
    assert smoke_leftovers() == []


def test_smoke_test_reports_an_image_that_cannot_start(docker_client, tiny_image, smoke_leftovers):
    with pytest.raises(images.SmokeTestFailed, match="could not create a container.*No command specified"):
        _smoke(docker_client, tiny_image.id)  # no CMD at all
    assert smoke_leftovers() == []


def test_smoke_test_reports_a_container_that_dies_before_ready(docker_client, tiny_context, smoke_leftovers):
    context = tiny_context(
        "ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 10001\n"
        'CMD ["python3", "-c", "import sys; print(\'model.onnx: sha256 mismatch\'); sys.exit(3)"]\n'
    )
    image = images.build_image(docker_client, context, "modelship-test/dies:latest", {"BASE_IMAGE": BASE_IMAGE})
    with pytest.raises(images.SmokeTestFailed) as caught:
        _smoke(docker_client, image.id)
    assert "exited (code 3) before /readyz" in str(caught.value)
    assert "model.onnx: sha256 mismatch" in str(caught.value)  # the container's last log lines
    assert smoke_leftovers() == []


def test_smoke_test_gives_up_on_an_app_that_never_gets_ready(docker_client, tiny_context, smoke_leftovers):
    context = tiny_context('ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 10001\nCMD ["sleep", "600"]\n')
    image = images.build_image(docker_client, context, "modelship-test/sleeps:latest", {"BASE_IMAGE": BASE_IMAGE})
    started = time.monotonic()
    with pytest.raises(images.SmokeTestFailed, match="did not answer 200 within 3s"):
        _smoke(docker_client, image.id, timeout=3)
    assert time.monotonic() - started < 15
    assert smoke_leftovers() == []


def test_a_smoke_test_removes_the_expired_leftovers_of_a_worker_that_died(
    docker_client, tiny_context, smoke_leftovers
):
    """A worker killed mid-smoke-test leaves its container serving; the next smoke test on the engine removes it
    once it has expired, and leaves alone one a smoke test may still be using."""
    context = tiny_context('ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 10001\nCMD ["sleep", "600"]\n')
    sleeper = images.build_image(docker_client, context, "modelship-test/sleeps:latest", {"BASE_IMAGE": BASE_IMAGE})
    now = int(time.time())
    left = {}
    for name, expires in (("expired", now - 1), ("in-use", now + 600)):
        labels = {images.SMOKE_LABEL: "1", images.SMOKE_EXPIRES_LABEL: str(expires)}
        left[name] = docker_client.containers.run(
            sleeper.id, name=f"modelship-smoke-test-{name}-{now}", labels=labels, network_mode="host", detach=True
        )
    try:
        with (
            log_messages("modelship.images", logging.WARNING) as messages,
            pytest.raises(images.SmokeTestFailed, match="did not answer 200 within 2s"),
        ):
            _smoke(docker_client, sleeper.id, timeout=2)
        assert [c.name for c in smoke_leftovers()] == [left["in-use"].name]
        assert any(left["expired"].name in m and "worker that died" in m for m in messages), messages
    finally:
        left["in-use"].remove(force=True)
    assert smoke_leftovers() == []


def test_smoke_test_container_runs_with_memory_and_pids_limits(docker_client, tiny_context, smoke_leftovers):
    context = tiny_context('ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nUSER 10001\nCMD ["sleep", "600"]\n')
    sleeper = images.build_image(docker_client, context, "modelship-test/sleeps:latest", {"BASE_IMAGE": BASE_IMAGE})
    seen: list[dict] = []

    def watch() -> None:
        while not seen and time.monotonic() < deadline:
            seen.extend(c.attrs["HostConfig"] for c in smoke_leftovers() if c.status == "running")
            time.sleep(0.1)

    deadline = time.monotonic() + 30
    watcher = threading.Thread(target=watch)
    watcher.start()
    with pytest.raises(images.SmokeTestFailed, match="did not answer 200 within 4s"):
        _smoke(docker_client, sleeper.id, timeout=4)
    watcher.join()
    [host] = seen[:1]  # inspected while it ran
    assert host["Memory"] == 2**30 and host["MemorySwap"] == 2**30  # SMOKE_MEM_LIMIT, no swap on top
    assert host["PidsLimit"] == images.SMOKE_PIDS_LIMIT == 256
    assert host["ReadonlyRootfs"] is True and host["CapDrop"] == ["ALL"]
    assert smoke_leftovers() == []


def test_build_steps_have_no_network(docker_client, tiny_context):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    probe = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
    context = tiny_context(f'ARG BASE_IMAGE\nFROM ${{BASE_IMAGE}}\nRUN python3 -c "{probe}"\n')
    try:
        with pytest.raises(images.ImageBuildError, match="ConnectionRefusedError|Connection refused"):
            images.build_image(docker_client, context, "modelship-test/offline:latest", {"BASE_IMAGE": BASE_IMAGE})
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody knocked: the step had its own empty network namespace
    finally:
        listener.close()


@pytest.mark.registry
def test_the_build_client_sends_no_registry_login_and_the_base_image_is_pulled_before_the_build(
    docker_client, docker_engine, registry, reg_conn, tiny_context, tmp_path, monkeypatch
):
    """docker-py sends every login it knows with a build, for the engine to pull any FROM image with it. The
    build client sends none, even with a login in the worker's Docker config: a FROM image only that login can
    pull fails the build. The configured base image in a private registry is pulled first, with the registry
    connection (ensure_base_image), and the build then goes through."""
    tag = f"{registry.address}/modelship-test/private-base:{uuid.uuid4().hex[:8]}"
    context = tiny_context("FROM scratch\nCOPY Dockerfile /base-marker\n")
    docker_client.api.login(registry.username, registry.password, registry=registry.address)
    images.build_image(docker_client, context, tag, {})
    for line in docker_client.images.push(tag, stream=True, decode=True):
        assert "error" not in line, line
    docker_client.images.remove(tag)  # only in the registry now
    config = tmp_path / "docker-config"
    config.mkdir()
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    (config / "config.json").write_text(json.dumps({"auths": {registry.address: {"auth": auth}}}))
    monkeypatch.setenv("DOCKER_CONFIG", str(config))  # what `docker login` on the worker leaves behind
    app = tmp_path / "app"
    app.mkdir()
    (app / "Dockerfile").write_text("ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nLABEL built=yes\n")
    try:
        engine = images.engine_client(docker_engine.url)
        with pytest.raises(images.ImageBuildError, match="(?i)no basic auth|unauthorized|authentication required"):
            images.build_image(engine, app, "modelship-test/on-private-base:1", {"BASE_IMAGE": tag})
        images.ensure_base_image(engine, tag, reg_conn)
        built = images.build_image(engine, app, "modelship-test/on-private-base:1", {"BASE_IMAGE": tag})
        assert built.labels["built"] == "yes"
    finally:
        for ref in ("modelship-test/on-private-base:1", tag):
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(ref, force=True)


# ------------------------------------------------------------------------------------------ wheelhouse


def test_failed_wheelhouse_download_leaves_nothing_behind(tmp_path, monkeypatch):
    for key, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path)}.items():
        monkeypatch.setenv(key, value)  # no index at all: pip fails at once, with no network
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("modelship-no-such-package==1.0\n")
    with pytest.raises(images.WheelhouseError, match="exited") as caught:
        images.wheelhouse(requirements, tmp_path / "cache")
    assert not isinstance(caught.value, images.IndexUnavailable)  # nothing was unreachable: it does not exist
    assert list((tmp_path / "cache" / "wheels").iterdir()) == []


@pytest.mark.parametrize("line", ["this is not a requirement ===", "-r /etc/passwd", "numpy>=2", "x==${HOME}",
                                  "--extra-index-url http://127.0.0.1:9/simple", "numpy @ file:///etc/passwd"])
def test_a_requirements_line_other_than_a_pin_is_refused_before_pip_reads_it(tmp_path, line):
    requirements = tmp_path / "requirements.txt"
    requirements.write_text(f"# pinned\nnumpy==2.4.6\n{line}\n")
    with pytest.raises(images.RequirementsRefused, match="requirements.txt line 3: ") as caught:
        images.wheelhouse(requirements, tmp_path / "cache")
    assert isinstance(caught.value, images.WheelhouseError)
    assert line not in str(caught.value)  # the line is not quoted back (it may hold what it should not)
    assert not (tmp_path / "cache" / "wheels").exists() or list((tmp_path / "cache" / "wheels").iterdir()) == []


def test_wheelhouse_is_keyed_by_the_requirements_file_and_reused(tmp_path, wheel_cache):
    requirements = tmp_path / "requirements.txt"
    shutil.copy(APP / "requirements.txt", requirements)
    first = images.wheelhouse(requirements, wheel_cache)
    assert first.name == hashlib.sha256(requirements.read_bytes()).hexdigest()
    assert any(first.glob("onnxruntime-*.whl"))
    started = time.monotonic()
    assert images.wheelhouse(requirements, wheel_cache) == first
    assert time.monotonic() - started < 1  # cached: no pip at all


# ------------------------------------------------------------------------------------------ the real app


@pytest.fixture(scope="module")
def model_package(tmp_path_factory: pytest.TempPathFactory) -> dict:
    from training.train import train_package

    path = tmp_path_factory.mktemp("model") / "digits-1"
    manifest = train_package(path, version="1")
    return {"path": path, "version": manifest["version"], "name": manifest["name"], "sha256": manifest_sha256(path)}


@pytest.fixture(scope="module")
def app_build(docker_client, model_package, wheel_cache, tmp_path_factory) -> dict:
    """The real app image, built once for the module: wheelhouse → context → build with lineage."""
    wheels = images.wheelhouse(APP / "requirements.txt", wheel_cache)
    context = images.build_context(APP, model_package["path"], wheels, tmp_path_factory.mktemp("app") / "context")
    lineage = images.Lineage(
        commit=COMMIT,
        model_name=model_package["name"],
        model_version=model_package["version"],
        model_sha256=model_package["sha256"],
        source=str(REPO),
    )
    built = images.build_image(docker_client, context, "modelship-test/app:one", lineage.build_args(BASE_IMAGE))
    return {"image": built, "lineage": lineage, "wheels": wheels, "context": context}


def _smoke_app(docker_client, image: str, model_package: dict, **overrides) -> dict:
    return _smoke(
        docker_client,
        image,
        **{"model_version": model_package["version"], "model_sha256": model_package["sha256"], **overrides},
    )


def test_context_holds_app_wheels_and_model_hardlinked(app_build, model_package):
    context = app_build["context"]
    assert (context / "Dockerfile").is_file() and (context / "classifier").is_dir()
    model_file = context / "model" / "model.onnx"
    assert model_file.stat().st_ino == (model_package["path"] / "model.onnx").stat().st_ino  # linked, not copied
    wheel = next((context / "wheels").glob("*.whl"))
    assert wheel.stat().st_ino == (app_build["wheels"] / wheel.name).stat().st_ino
    assert not list(context.rglob("__pycache__"))


def test_built_image_carries_its_lineage_as_oci_labels(app_build, model_package, docker_client):
    labels = docker_client.images.get(app_build["image"].id).labels
    assert labels[LABEL_REVISION] == COMMIT
    assert labels[LABEL_MODEL_VERSION] == model_package["version"]
    assert labels[LABEL_MODEL_SHA256] == model_package["sha256"]
    assert labels["io.modelship.model.name"] == model_package["name"]
    assert labels["org.opencontainers.image.created"] == app_build["lineage"].created
    assert labels["org.opencontainers.image.source"] == str(REPO)
    assert labels == app_build["image"].labels


@pytest.mark.registry
def test_smoke_test_passes_for_the_good_image(app_build, model_package, docker_engine, smoke_leftovers):
    hook = images.engine_client(docker_engine.url)  # what the ci DAG hands over: no registry login
    result = _smoke_app(hook, app_build["image"].id, model_package)
    _, label = images.sample_digit()
    assert result["prediction"]["label"] == label
    assert result["version"]["commit"] == COMMIT
    assert result["user"] not in ("", "root", "0")
    assert smoke_leftovers() == []


def test_image_runs_as_non_root_with_a_read_only_root_filesystem(app_build, docker_client):
    probe = (
        "import errno, os\n"
        "print('uid', os.getuid())\n"
        "try:\n"
        "    open('/probe', 'w')\n"
        "except OSError as exc:\n"
        "    print('root-fs', errno.errorcode[exc.errno])\n"
        "open('/tmp/probe', 'w').write('ok')\n"
        "print('tmp', open('/tmp/probe').read())\n"
    )
    output = docker_client.containers.run(
        app_build["image"].id,
        entrypoint=["python3", "-c", probe],
        network_mode="host",
        read_only=True,
        tmpfs={"/tmp": ""},
        cap_drop=["ALL"],
        remove=True,
    ).decode()
    uid = int(output.split("uid ")[1].split()[0])
    assert uid != 0
    assert "root-fs EROFS" in output
    assert "tmp ok" in output


def test_smoke_test_catches_an_image_that_reports_another_commit(
    app_build, model_package, docker_client, smoke_leftovers
):
    with pytest.raises(images.SmokeTestFailed, match="GET /version does not describe this build") as caught:
        _smoke_app(docker_client, app_build["image"].id, model_package, commit="2" * 40)
    assert f"commit: expected '{'2' * 40}', got '{COMMIT}'" in str(caught.value)
    assert smoke_leftovers() == []


def test_smoke_test_catches_a_wrong_prediction(app_build, model_package, docker_client, smoke_leftovers):
    png, label = images.sample_digit()
    wrong = str((int(label) + 1) % 10)
    with pytest.raises(images.SmokeTestFailed, match=f"top-1 is '{label}'.*expected '{wrong}'"):
        _smoke_app(docker_client, app_build["image"].id, model_package, expected_label=wrong)
    assert smoke_leftovers() == []


def test_smoke_test_catches_a_corrupted_model(app_build, model_package, docker_client, smoke_leftovers, tmp_path):
    context = images.build_context(APP, model_package["path"], app_build["wheels"], tmp_path / "context")
    onnx = context / "model" / "model.onnx"
    data = onnx.read_bytes()
    onnx.unlink()  # replace, never write in place: the context file is a hard link to the package's
    onnx.write_bytes(data[:-64] + bytes(64))
    broken = images.build_image(
        docker_client, context, "modelship-test/app:corrupt", app_build["lineage"].build_args(BASE_IMAGE)
    )
    with pytest.raises(images.SmokeTestFailed, match="/readyz") as caught:
        _smoke_app(docker_client, broken.id, model_package, timeout=30)
    assert "sha256" in str(caught.value)  # the app's own reason, from the container's log
    assert smoke_leftovers() == []
    assert (model_package["path"] / "model.onnx").read_bytes() == data  # the original is untouched


@pytest.mark.registry
def test_push_returns_the_digest_the_registry_reports(app_build, docker_engine, reg_conn, model_package):
    hook = images.docker_hook(reg_conn, docker_engine.url)
    digest = images.push_image(hook, app_build["image"].id, "modelship-test/app", "c1-1", registry_conn=reg_conn).digest
    client = RegistryClient.from_connection(reg_conn)
    try:
        assert client.digest("modelship-test/app", "c1-1") == digest
        assert client.labels("modelship-test/app", digest) == app_build["image"].labels
        assert (
            client.already_pushed("modelship-test/app", "c1-1", commit=COMMIT, model_sha256=model_package["sha256"])
            == digest
        )
    finally:
        client.close()


def _layers_up_to(docker_client, image_id: str, step: re.Pattern[str]) -> list[str]:
    """RootFS layers of `image_id` up to and including the build step matching `step`.

    The classic builder keeps each step's intermediate image; the one that ran `step` has exactly the
    layers below and including that step.
    """
    for entry in reversed(docker_client.api.history(image_id)):  # oldest first
        if step.search(entry["CreatedBy"]):
            assert entry["Id"] != "<missing>", "intermediate image gone: was the image built elsewhere?"
            return docker_client.api.inspect_image(entry["Id"])["RootFS"]["Layers"]
    raise AssertionError(f"no build step matches {step.pattern}")


def test_code_only_rebuild_reuses_the_wheel_and_model_layers(app_build, model_package, docker_client, tmp_path):
    app_copy = tmp_path / "app"
    shutil.copytree(APP, app_copy, ignore=shutil.ignore_patterns("__pycache__"))
    changed = app_copy / "classifier" / "__init__.py"
    changed.write_text(changed.read_text() + "\n# a code-only change\n")
    context = images.build_context(
        app_copy, model_package["path"], app_build["wheels"], tmp_path / "context", APP.parent / "modelpkg"
    )
    lineage = dataclasses.replace(app_build["lineage"], commit="3" * 40)
    # Through the low-level APIClient this time: every function takes a hook, an APIClient or a DockerClient.
    rebuilt = images.build_image(docker_client.api, context, "modelship-test/app:two", lineage.build_args(BASE_IMAGE))

    first = docker_client.api.inspect_image(app_build["image"].id)["RootFS"]["Layers"]
    second = docker_client.api.inspect_image(rebuilt.id)["RootFS"]["Layers"]
    assert first != second  # the code layer did change
    model_step = _layers_up_to(docker_client, app_build["image"].id, MODEL_COPY)
    assert second[: len(model_step)] == model_step  # everything up to the model COPY came from the cache
    assert rebuilt.labels[LABEL_REVISION] == "3" * 40
