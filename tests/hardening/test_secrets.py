"""Credentials stay out of what modelship produces: image layers, image history and config, rendered
Kubernetes manifests, files others can read; and the app container it deploys holds no privilege.

The credentials scanned for are the real ones of the session: the harness registry's random password
(and the base64 `user:password` a Docker auth config would carry), the Azurite account key of the blob
connection, and a kube token. The scanner is first shown to find a secret that *is* baked into an image,
so a clean result means something.

Secret files are owner-only (0600) from the moment they exist: what `make up` writes (connections, the Airflow
admin password, the registry's password and htpasswd), the harness's, and the local cluster's keys, tokens and
kubeconfigs; the registry password never shows on a command line while the registry starts.

Task logs (Airflow's masking) are scanned in test_airflow_stack.py, where a real scheduler writes them.
The registry refusing anonymous pushes is tests/plugins/test_registry.py::test_anonymous_access_is_refused
and tests/devstack/test_components.py::test_registry_refuses_anonymous_access.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import stat
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
        REGISTRY_CONN: registry.connection,
        "modelship_blob": azurite.connection,
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
        assert host["Memory"] == 1 << 30 and host["PidsLimit"] == 256  # the docker target's limits
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
        # On the host network, it listens on loopback only: the serving port, nothing on all interfaces.
        from tests.listeners import listening, not_loopback, pids_in_session

        pids = pids_in_session(container.attrs["State"]["Pid"])
        assert port in {p for _, _, p in listening(pids)} and not_loopback(pids) == []
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


# --- secret files: owner-only from the moment they exist -----------------------------------------------------


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_every_secret_file_make_up_writes_is_owner_only(
    registry: components.Registry, stack_dir: Path, tmp_path: Path
) -> None:
    from devstack.cluster import LocalCluster
    from devstack.stack import Stack, airflow_passwords

    stack = Stack(tmp_path / "state")  # what `make up` writes, without starting anything
    stack.write_env_file(stack.environment())
    airflow_passwords(stack.passwords_file)
    stack.registry.write_htpasswd(stack.state / "registry" / "registry.htpasswd")
    files = {
        "connections and settings": stack.env_file,
        "Airflow admin password": stack.passwords_file,
        "registry password": stack.state / "registry" / "registry.password",
        "registry htpasswd": stack.state / "registry" / "registry.htpasswd",
        # The harness's own registry, written by the same code, and its component log.
        "harness registry password": stack_dir / "registry" / "registry.password",
        "harness registry htpasswd": stack_dir / "registry" / "registry.htpasswd",
        "harness registry log": registry.proc.log_file,
    }
    kit = LocalCluster()
    if kit.kubeconfig.exists():  # the local cluster's, where it was built on this machine (devstack/k8s-local)
        files.update({f"cluster {p.name}": p for p in kit.home.glob("kubeconfig-*")})
        files.update({f"cluster {p.name}": p for p in (kit.home / "pki").glob("*.key")})
        files["cluster tokens.csv"] = kit.home / "pki" / "tokens.csv"
    assert {name: oct(mode(path)) for name, path in files.items() if mode(path) & 0o077} == {}
    assert json.loads(stack.passwords_file.read_text())["admin"]  # a password the api-server keeps, not its own
    assert stack.passwords_file.read_text().count('"') == 4  # {"admin": "<password>"}


def test_an_older_world_readable_admin_password_file_is_tightened_and_kept(tmp_path: Path) -> None:
    from devstack.stack import airflow_passwords

    path = tmp_path / "simple_auth_manager_passwords.json.generated"
    path.write_text('{"admin": "kept"}\n')
    path.chmod(0o644)  # as the api-server itself creates it under the usual umask
    airflow_passwords(path)
    assert mode(path) == 0o600 and json.loads(path.read_text()) == {"admin": "kept"}


def test_the_registry_password_never_shows_in_ps_while_the_registry_starts(tmp_path: Path) -> None:
    """The one place a password meets a command: htpasswd, which gets it on stdin (-i), never as an argument."""
    from tests.pswatch import shown_by_ps

    server = components.Registry(tmp_path / "registry", port=net.free_port())
    with shown_by_ps([server.password]) as seen:
        server.start()
        server.stop()
    assert seen.found == {} and seen.samples > 5, seen
    assert mode(tmp_path / "registry" / "registry.htpasswd") == 0o600
