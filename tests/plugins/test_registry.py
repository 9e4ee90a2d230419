"""modelship.registry against the real Distribution registry (htpasswd auth) of the harness.

A tiny image is pushed through images.push_image (DockerHook login from the connection), then read back
through the v2 API: tags, digest, labels, exists; refused and missing credentials give clear errors.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from modelship import images, net
from modelship.lineage import LABEL_MODEL_SHA256, LABEL_MODEL_VERSION, LABEL_REVISION
from modelship.registry import (
    RegistryAuthError,
    RegistryClient,
    RegistryError,
    RegistryNotFound,
)
from tests.logcapture import log_messages

pytest_plugins = ["images_fixtures"]
pytestmark = [pytest.mark.docker, pytest.mark.registry]

REPOSITORY = "modelship-test/tiny"


@pytest.fixture(scope="module")
def pushed(docker_engine, tiny_image, reg_conn) -> dict[str, str]:
    hook = images.docker_hook(reg_conn, docker_engine.url)
    digest = images.push_image(hook, tiny_image.id, REPOSITORY, "v1", registry_conn=reg_conn).digest
    return {"digest": digest, "tag": "v1"}


@pytest.fixture
def client(reg_conn) -> Iterator[RegistryClient]:
    client = RegistryClient.from_connection(reg_conn)
    yield client
    client.close()


def test_push_returns_the_digest_the_registry_serves(pushed, client):
    assert pushed["digest"].startswith("sha256:") and len(pushed["digest"]) == 71
    assert client.digest(REPOSITORY, "v1") == pushed["digest"]
    assert client.exists(REPOSITORY, pushed["digest"])
    assert "v1" in client.tags(REPOSITORY)


def test_labels_carry_the_lineage(pushed, client, tiny_image, tiny_lineage):
    labels = client.labels(REPOSITORY, "v1")
    assert labels[LABEL_REVISION] == tiny_lineage.commit
    assert labels[LABEL_MODEL_VERSION] == tiny_lineage.model_version
    assert labels[LABEL_MODEL_SHA256] == tiny_lineage.model_sha256
    assert labels == tiny_image.labels  # by digest or tag, the registry holds what was built
    assert client.labels(REPOSITORY, pushed["digest"]) == labels


def test_already_pushed_needs_matching_lineage_not_just_the_tag(pushed, client, tiny_lineage):
    lineage = {"commit": tiny_lineage.commit, "model_sha256": tiny_lineage.model_sha256}
    assert client.already_pushed(REPOSITORY, "v1", **lineage) == pushed["digest"]
    assert client.already_pushed(REPOSITORY, "v1", **{**lineage, "commit": "f" * 40}) is None
    assert client.already_pushed(REPOSITORY, "v1", **{**lineage, "model_sha256": "0" * 64}) is None
    assert client.already_pushed(REPOSITORY, "no-such-tag", **lineage) is None


def test_pushing_again_is_idempotent_and_never_logs_the_password(
    pushed, docker_client, tiny_image, reg_conn, client, registry
):
    # Our own records and the docker library's debug ones (it logs the auth config it sends).
    with log_messages("modelship.images", logging.DEBUG) as ours, log_messages("docker", logging.DEBUG) as theirs:
        # A plain docker client (no hook) gets the connection's credentials as the push's auth config.
        digest = images.push_image(docker_client, tiny_image.id, REPOSITORY, "v1", registry_conn=reg_conn).digest
    assert digest == pushed["digest"]
    assert any(m.startswith("pushed ") for m in ours), ours
    assert not any(registry.password in m for m in ours + theirs)
    assert client.tags(REPOSITORY).count("v1") == 1


def test_missing_things_are_none_or_empty_not_errors(pushed, client):
    assert client.digest(REPOSITORY, "no-such-tag") is None
    assert not client.exists(REPOSITORY, "sha256:" + "0" * 64)
    assert client.tags("modelship-test/never-pushed") == []
    with pytest.raises(RegistryNotFound, match="no-such-tag"):
        client.labels(REPOSITORY, "no-such-tag")


def test_wrong_password_is_a_clear_error_naming_the_connection(pushed, reg_conn_bad, registry):
    client = RegistryClient.from_connection(reg_conn_bad)
    with pytest.raises(RegistryAuthError, match="refused the credentials of connection") as caught:
        client.tags(REPOSITORY)
    assert reg_conn_bad in str(caught.value)
    assert "not-the-password" not in str(caught.value)
    with pytest.raises(RegistryAuthError):
        client.digest(REPOSITORY, "v1")  # HEAD has no error body: still the same clear error


def test_wrong_password_push_fails_without_retrying(docker_engine, docker_client, tiny_image, reg_conn_bad):
    refused = pytest.raises(images.ImagePushError, match="refused the credentials of connection")
    with log_messages("modelship") as messages, refused as caught:
        images.push_image(docker_client, tiny_image.id, REPOSITORY, "bad", registry_conn=reg_conn_bad)
    assert "not-the-password" not in str(caught.value)
    assert any("pushing" in m for m in messages)  # the capture works ...
    assert not any("retry" in m for m in messages)  # ... and refused credentials never get better by waiting
    # Through the DockerHook the login itself is refused, with the same message.
    hook = images.docker_hook(reg_conn_bad, docker_engine.url)
    with pytest.raises(images.ImagePushError, match="refused the credentials of connection"):
        images.push_image(hook, tiny_image.id, REPOSITORY, "bad", registry_conn=reg_conn_bad)


def test_anonymous_access_is_refused(docker_client, tiny_image, reg_conn_anon, registry):
    with pytest.raises(images.ImagePushError, match="refused the credentials"):
        images.push_image(docker_client, tiny_image.id, REPOSITORY, "anon", registry_conn=reg_conn_anon)
    with pytest.raises(RegistryAuthError, match="anonymous"):
        RegistryClient(registry.address).tags(REPOSITORY)


def test_unreachable_registry_is_retried_with_backoff_then_reported(docker_client, tiny_image, airflow_conn):
    dead = f"127.0.0.1:{net.free_port()}"  # nothing listens there
    with log_messages("modelship", logging.WARNING) as messages, pytest.raises(RegistryError, match="after 3 attempts"):
        RegistryClient(dead, "user", "secret", attempts=3, backoff=0.05).tags(REPOSITORY)
    assert sum("retry" in m for m in messages) == 2
    conn_id = airflow_conn("modelship_test_dead_registry", host=dead, login="user", password="secret")
    with log_messages("modelship", logging.WARNING) as messages, pytest.raises(images.ImagePushError, match="after 3"):
        images.push_image(
            docker_client, tiny_image.id, REPOSITORY, "dead", registry_conn=conn_id, attempts=3, backoff=0.05
        )
    assert sum("retry" in m for m in messages) == 2


def test_the_client_never_shows_its_password() -> None:
    from modelship.registry import RegistryClient

    client = RegistryClient("127.0.0.1:1", "bot", "s3cret-password", conn_id="modelship_registry")
    try:
        shown = repr(client) + str(vars(client).get("username")) + str(client.__dict__.keys())
        assert "s3cret-password" not in shown and "modelship_registry" in repr(client)
    finally:
        client.close()
