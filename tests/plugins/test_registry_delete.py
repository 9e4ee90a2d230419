"""RegistryClient.delete_manifest against the real Distribution registry (htpasswd, storage.delete.enabled): by
digest only, every tag naming it goes, a second delete is no error, and the image is no longer "already pushed"."""

from __future__ import annotations

import pytest

from modelship import images
from modelship.registry import RegistryClient, RegistryError

pytest_plugins = ["images_fixtures"]
pytestmark = [pytest.mark.docker, pytest.mark.registry]

REPOSITORY = "modelship-test/delete"


def test_deleting_by_digest_removes_every_tag_and_already_pushed_says_no(
    docker_engine, tiny_image, tiny_lineage, reg_conn
) -> None:
    hook = images.docker_hook(reg_conn, docker_engine.url)
    digest = images.push_image(hook, tiny_image.id, REPOSITORY, "a", registry_conn=reg_conn).digest
    assert images.push_image(hook, tiny_image.id, REPOSITORY, "b", registry_conn=reg_conn).digest == digest
    client = RegistryClient.from_connection(reg_conn)
    try:
        lineage = {"commit": tiny_lineage.commit, "model_sha256": tiny_lineage.model_sha256}
        assert client.already_pushed(REPOSITORY, "a", **lineage) == digest

        with pytest.raises(RegistryError, match="by digest"):
            client.delete_manifest(REPOSITORY, "a")
        assert client.delete_manifest(REPOSITORY, digest) is True

        assert client.tags(REPOSITORY) == []
        assert not client.exists(REPOSITORY, digest)
        # What ci's resolve asks: the image is gone, so it is built (and pushed) again, not announced.
        assert client.already_pushed(REPOSITORY, "a", **lineage) is None
        assert client.delete_manifest(REPOSITORY, digest) is False  # idempotent: a retried delete is no error
    finally:
        client.close()
