"""The harness's components are the real thing: Azurite stores blobs, the registry demands a login,
the Docker engine runs containers from the local base image on the host network."""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from modelship import localstack


def test_azurite_stores_and_returns_a_blob(azurite: localstack.Azurite) -> None:
    from azure.storage.blob import BlobServiceClient

    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    container = service.get_container_client("harness")
    if not container.exists():
        container.create_container()
    container.upload_blob("hello.txt", b"hello", overwrite=True)
    assert container.download_blob("hello.txt").readall() == b"hello"


def test_registry_refuses_anonymous_access(registry: localstack.Registry) -> None:
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(f"http://{registry.address}/v2/", timeout=5)
    assert err.value.code == 401


def test_registry_accepts_its_credentials(registry: localstack.Registry) -> None:
    request = urllib.request.Request(f"http://{registry.address}/v2/")
    import base64

    token = base64.b64encode(f"{registry.username}:{registry.password}".encode()).decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=5) as response:
        assert response.status == 200


def test_docker_engine_runs_the_base_image_on_the_host_network(docker_client) -> None:
    out = docker_client.containers.run(
        localstack.BASE_IMAGE,
        ["python3", "-c", "import sys; print(sys.version_info[:2])"],
        network_mode="host",
        remove=True,
    )
    assert out.strip() == b"(3, 11)"
