"""The harness's components are the real thing: Azurite stores blobs, the registry demands a login,
the Docker engine runs containers from the local base image on the host network."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from devstack import components, rootfs


def test_azurite_stores_and_returns_a_blob(azurite: components.Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client("harness")
    if not container.exists():
        container.create_container()
    container.upload_blob("hello.txt", b"hello", overwrite=True)
    assert container.download_blob("hello.txt").readall() == b"hello"


def test_registry_refuses_anonymous_access(registry: components.Registry) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{registry.address}/v2/", timeout=5)
    assert err.value.code == 401


def test_registry_accepts_its_credentials(registry: components.Registry) -> None:
    request = urllib.request.Request(f"http://{registry.address}/v2/")
    import base64

    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_docker_engine_runs_the_base_image_on_the_host_network(docker_client) -> None:
    out = docker_client.containers.run(
        rootfs.BASE_IMAGE,
        ["python3", "-c", "import sys; print(sys.version_info[:2])"],
        network_mode="host",
        remove=True,
    )
    assert out.strip() == b"(3, 11)"


def test_an_engine_killed_outright_leaves_nothing_that_blocks_a_restart_or_removal(tmp_path) -> None:
    """SIGKILL (an OOM kill, a stopped helper) skips dockerd's own clean-up and leaves its mounts: the next
    start and stop release them, so the state folder can be deleted (bench and test stacks rely on that)."""
    import os
    import shutil
    import signal

    engine = components.DockerEngine(tmp_path / "docker")
    data = str((tmp_path / "docker" / "docker-data").resolve())
    engine.start()
    try:
        with open("/proc/self/mounts") as mounts:
            assert any(line.split()[1].startswith(data) for line in mounts)  # dockerd mounted its data root
        os.killpg(engine.proc.pid(), signal.SIGKILL)
        engine.proc.stop(timeout=5)  # reap it and forget the pid, as a later `make up` would find things
        engine.start()
        assert engine.ping()
    finally:
        engine.stop()
    with open("/proc/self/mounts") as mounts:
        assert not [line for line in mounts if line.split()[1].startswith(data)]
    shutil.rmtree(tmp_path / "docker")
    assert not (tmp_path / "docker").exists()


def test_the_listener_check_sees_a_socket_on_all_interfaces() -> None:
    """The check below can fail: a socket bound to 0.0.0.0 by this process is reported."""
    import os
    import socket

    from tests.listeners import not_loopback

    with socket.create_server(("0.0.0.0", 0)) as server:
        port = server.getsockname()[1]
        assert (os.getpid(), "0.0.0.0", port) in not_loopback([os.getpid()])


def test_every_stand_in_listens_on_loopback_only(
    registry: components.Registry, azurite: components.Azurite, docker_engine: components.DockerEngine
) -> None:
    from tests.listeners import listening, not_loopback, pids_in_session

    for component in (registry, azurite, docker_engine):
        pids = pids_in_session(component.proc.pid())  # the server and its children (containerd, node workers)
        assert pids, component
        assert not_loopback(pids) == [], component
    # They do listen (on loopback): the check looked at the right processes.
    assert {port for _, _, port in listening(pids_in_session(registry.proc.pid()))} >= {registry.port}
    assert {port for _, _, port in listening(pids_in_session(azurite.proc.pid()))} >= {azurite.port}
