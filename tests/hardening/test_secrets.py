"""Credentials stay out of what modelship produces: image layers, image history and config, rendered
Kubernetes manifests; and the app container it deploys holds no privilege.

The credentials scanned for are the real ones of the session: the harness registry's random password
(and the base64 `user:password` a Docker auth config would carry), the Azurite account key of the blob
connection, and a kube token. The scanner is first shown to find a secret that *is* baked into an image,
so a clean result means something.

Task logs (Airflow's masking) are scanned in test_airflow_stack.py, where a real scheduler writes them.
The registry refusing anonymous pushes is tests/plugins/test_registry.py::test_anonymous_access_is_refused
and tests/devstack/test_components.py::test_registry_refuses_anonymous_access.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

import devstack
from devstack import components, rootfs
from modelpkg.manifest import manifest_sha256
from modelship import images, net
from tests.e2e.pipeline import REPO
from tests.hardening.support import image_leaks, leaks

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]

REGISTRY_CONN = "modelship_hardening_registry"
KUBE_CONN = "modelship_hardening_kube"
KUBE_TOKEN = "kube-token-" + "7f3a9c" * 6
COMMIT = "5" * 40


@pytest.fixture(scope="module")
def secrets(registry: components.Registry) -> dict[str, bytes]:
    auth = base64.b64encode(f"{registry.username}:{registry.password}".encode())
    return {
        "registry password": registry.password.encode(),
        "registry auth (base64 user:password)": auth,
        "Azurite account key": components.AZURITE_KEY.encode(),
        "kube token": KUBE_TOKEN.encode(),
    }


@pytest.fixture(scope="module")
def connections(registry: components.Registry, azurite: components.Azurite) -> Iterator[None]:
    """The connections a ci/release worker has: registry, blob store, cluster."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "users": [{"name": "u", "user": {"token": KUBE_TOKEN}}],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
        "current-context": "x",
    }
    values = {
        REGISTRY_CONN: {
            "conn_type": "docker",
            "host": registry.address,
            "login": registry.username,
            "password": registry.password,
        },  # fmt: skip
        "modelship_blob": {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}},
        KUBE_CONN: {"conn_type": "kubernetes", "extra": {"kube_config": json.dumps(kubeconfig)}},
    }
    with pytest.MonkeyPatch.context() as patch:
        for conn_id, value in values.items():
            patch.setenv(f"AIRFLOW_CONN_{conn_id.upper()}", json.dumps(value))
        yield


def test_the_scan_finds_a_credential_that_was_baked_into_an_image(docker_client, tmp_path, secrets) -> None:
    context = tmp_path / "leaky"
    context.mkdir()
    (context / "Dockerfile").write_text('ARG BASE_IMAGE\nFROM ${BASE_IMAGE}\nARG TOKEN\nRUN echo "$TOKEN" > /leak\n')
    password = secrets["registry password"].decode()
    args = {"BASE_IMAGE": rootfs.BASE_IMAGE, "TOKEN": password}
    built = images.build_image(docker_client, context, "modelship-hardening/leaky:latest", args)
    try:
        found = image_leaks(docker_client, built.id, secrets)
        assert "registry password" in found["history"]  # classic builder: build args show in history
        assert "registry password" in found["layers"]  # and the file holds it
    finally:
        docker_client.images.remove(built.id, force=True)


@pytest.fixture(scope="module")
def app_image(docker_client, docker_engine, connections, hardening_model: Path, tmp_path_factory):
    """The real app image, built the way ci's build step builds it: a client with no registry login (the
    worker holds the registry connection all the same), the lineage as build args."""
    wheels = images.wheelhouse(REPO / "app" / "requirements.txt", devstack.CACHE_DIR)  # shared with e2e
    context = images.build_context(REPO / "app", hardening_model, wheels, tmp_path_factory.mktemp("app") / "ctx")
    lineage = images.Lineage(commit=COMMIT, model_name="digits", model_version="v1",
                             model_sha256=manifest_sha256(hardening_model), source=str(REPO))  # fmt: skip
    hook = images.engine_client(docker_engine.url)
    args = lineage.build_args(rootfs.BASE_IMAGE)
    built = images.build_image(hook, context, "modelship-hardening/app:secrets", args)
    return built, lineage


def test_the_app_image_holds_no_credential_in_layers_history_or_config(docker_client, app_image, secrets) -> None:
    built, _ = app_image
    found = image_leaks(docker_client, built.id, secrets)
    assert found == {"history": set(), "config": set(), "layers": set()}


def test_a_symbolic_link_in_the_commit_never_brings_a_worker_file_into_the_image(
    docker_client, docker_engine, hardening_model: Path, tmp_path
) -> None:
    """A commit can hold a link to any path of the worker (the state folder's modelship.env, say) and a
    Dockerfile that copies it. The build context keeps the link a link: the worker never reads the file."""
    canary = tmp_path / "state" / "modelship.env"
    canary.parent.mkdir()
    canary.write_text("export AIRFLOW_CONN_X=secret-canary-in-a-worker-file\n")
    app = tmp_path / "checkout" / "app"
    shutil.copytree(REPO / "app", app, ignore=shutil.ignore_patterns("__pycache__", "wheels", "model"))
    (app / "leak").symlink_to(canary)
    (app / "leaks").symlink_to(canary.parent, target_is_directory=True)
    (app / "Dockerfile").write_text((app / "Dockerfile").read_text() + "\nCOPY leak leaks /leaked/\n")
    wheels = images.wheelhouse(REPO / "app" / "requirements.txt", devstack.CACHE_DIR)
    context = images.build_context(app, hardening_model, wheels, tmp_path / "context", REPO / "modelpkg")
    assert (context / "leak").is_symlink() and (context / "leaks").is_symlink()
    assert os.readlink(context / "leak") == str(canary)  # the link, not the file's bytes or a hard link
    lineage = images.Lineage(commit=COMMIT, model_name="digits", model_version="v1",
                             model_sha256=manifest_sha256(hardening_model))  # fmt: skip
    secrets = {"canary": b"secret-canary-in-a-worker-file"}
    try:
        built = images.build_image(images.engine_client(docker_engine.url), context, "modelship-hardening/links:1",
                                   lineage.build_args(rootfs.BASE_IMAGE))  # fmt: skip
    except images.ImageBuildError as exc:  # the engine finds nothing at the link's target: also fine
        assert not leaks([str(exc).encode()], secrets)
    else:
        try:
            assert image_leaks(docker_client, built.id, secrets) == {"history": set(), "config": set(), "layers": set()}
        finally:
            docker_client.images.remove(built.id, force=True)


def test_the_deployed_app_container_has_no_privilege_at_all(docker_client, docker_engine, app_image) -> None:
    from modelship.deploy.docker import DockerTarget

    built, lineage = app_image
    port = net.free_port()
    target = DockerTarget(docker_host=docker_engine.url, port=port, ready_timeout=60)
    try:
        event = target.deploy(built.id, {"commit": lineage.commit, "model_version": "v1"})
        container = docker_client.containers.get(event.revision)
        host = container.attrs["HostConfig"]
        assert host["Privileged"] is False and not host["CapAdd"] and host["ReadonlyRootfs"] is True
        # What the kernel says about the serving process itself (PID 1 of the container).
        status = dict(
            line.split(":\t", 1) for line in container.exec_run(["cat", "/proc/1/status"]).output.decode().splitlines()
        )
        for capability_set in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"):
            assert int(status[capability_set], 16) == 0, (capability_set, status[capability_set])
        assert status["NoNewPrivs"].strip() == "1"
        assert all(int(uid) != 0 for uid in status["Uid"].split())  # real, effective, saved, fs
        assert all(int(gid) != 0 for gid in status["Gid"].split())
        write = container.exec_run(["sh", "-c", "echo x > /app/x"])
        assert write.exit_code != 0 and b"Read-only file system" in write.output
    finally:
        for leftover in docker_client.containers.list(all=True, filters={"label": f"io.modelship.port={port}"}):
            leftover.remove(force=True)


@pytest.mark.parametrize("overlay", ["aks", "local"])
def test_rendered_manifests_hold_no_registry_or_cluster_credential(connections, secrets, overlay: str) -> None:
    from modelship.deploy.kubernetes import KubernetesTarget

    # The target is configured with both connections, as the release DAG configures it; rendering must
    # name the pull secret only, whose contents are written to the cluster through the API, not the YAML.
    target = KubernetesTarget(KUBE_CONN, registry_conn_id=REGISTRY_CONN, namespace="modelship")
    image = f"127.0.0.1:5000/modelship/digits-app@sha256:{'a' * 64}"
    objects = target.render(REPO / "k8s" / "overlays" / overlay, image, {"commit": COMMIT, "model_version": "v1"})
    text = yaml.safe_dump_all(objects).encode()
    assert leaks([text], secrets) == set()
    assert all(obj["kind"] != "Secret" for obj in objects)
    assert b"modelship-registry" in text  # the pull secret is referenced by name
