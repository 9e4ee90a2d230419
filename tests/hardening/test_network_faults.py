"""The network breaking mid-transfer, for real: a proxy on 127.0.0.1 (tests/faultproxy.py) in front of the real
Azurite and the real registry resets connections mid-download and mid-upload, answers HTTP 500 and flips a bit
in transit, the first N times; then lets everything through. Each operation must end green after retries (the
one classification: modelship.retry), and the faults must have fired (or the test proves nothing).

A model file damaged on the way is downloaded once more, fresh; only a second mismatch is the verdict
(IntegrityError), raised after exactly one more download.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import components
from modelpkg.manifest import verify_package
from modelship.model_store import BlobModelStore, IntegrityError
from modelship.registry import RegistryClient
from modelship.retry import Policy
from modelship.verdicts import Verdict
from tests.faultproxy import Corrupt, FaultProxy, ResetRequest, ResetResponse, Respond
from tests.hardening.support import image_is_whole, unique_image
from tests.logcapture import log_messages

ONNX = r"/digits/versions/v1/model\.onnx"
PROXIED_BLOB = "modelship_test_proxied_blob"


# --- the model store through a proxy in front of Azurite -------------------------------------------------------


@pytest.fixture
def azurite_proxy(azurite: components.Azurite, monkeypatch: pytest.MonkeyPatch) -> Iterator[FaultProxy]:
    """A proxy in front of the harness Azurite, and the connection PROXIED_BLOB pointing at it."""
    with FaultProxy(azurite.port, name="azurite-proxy") as proxy:
        through = azurite.connection_string.replace(f"127.0.0.1:{azurite.port}", proxy.address)
        conn = {"conn_type": "wasb", "extra": {"connection_string": through}}
        monkeypatch.setenv(f"AIRFLOW_CONN_{PROXIED_BLOB.upper()}", json.dumps(conn))
        yield proxy


@pytest.fixture
def published(azurite: components.Azurite, hardening_model: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A container with v1 published and promoted, straight to Azurite (no proxy); its name."""
    conn = {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_TEST_DIRECT_BLOB", json.dumps(conn))
    container = f"faults-{uuid.uuid4().hex[:12]}"
    direct = BlobModelStore(container, "modelship_test_direct_blob")
    direct.publish(hardening_model)
    direct.promote("digits", "v1")
    return container


def proxied_store(container: str, tmp_path: Path) -> BlobModelStore:
    # A fresh cache: every file crosses the proxy. Backoff of 0.1 s: the same policy, sooner.
    return BlobModelStore(container, PROXIED_BLOB, cache_dir=tmp_path / "cache", retry_policy=Policy(base=0.1))


@pytest.mark.azurite
def test_a_model_fetch_rides_out_connections_reset_mid_download_and_http_500s(
    azurite_proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    # 16 KB of the 40 KB model, then a reset, four times: the SDK tries a cut download 3 times itself (1 s apart),
    # then raises HttpResponseError without a status, which our policy must retry: the 4th cut, then it passes.
    cut = ResetResponse(match=f"GET .*{ONNX}", after=16_000, times=4)
    overloaded = Respond(status=500, reason="Internal Server Error", match="GET .*/aliases/production", times=2)
    azurite_proxy.arm(cut, overloaded)
    store = proxied_store(published, tmp_path)
    with log_messages("modelship.model_store.retry") as retries:
        manifest = store.fetch("digits", "production", tmp_path / "model")
    assert (cut.fired, overloaded.fired) == (4, 2), azurite_proxy.requests
    assert verify_package(tmp_path / "model") == manifest
    assert store.stats.retries == 3 and store.stats.redownloads == 0
    [download] = [m for m in retries if "downloading digits/versions/v1/model.onnx failed" in m]
    assert "Connection reset by peer" in download and download.endswith("retry 1/4 in 0.1s"), download
    assert sum("reading digits/aliases/production.json failed (" in m for m in retries) == 2, retries


@pytest.mark.azurite
def test_a_publish_rides_out_a_connection_reset_mid_upload(
    azurite_proxy: FaultProxy, azurite: components.Azurite, hardening_model: Path, tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    cut = ResetRequest(match=f"PUT .*{ONNX}", after=20_000, times=2)
    azurite_proxy.arm(cut)
    container = f"faults-{uuid.uuid4().hex[:12]}"
    store = BlobModelStore(container, PROXIED_BLOB, retry_policy=Policy(base=0.1))
    store.publish(hardening_model)
    assert cut.fired == 2
    # Read back straight from Azurite: every byte arrived, model.json last.
    conn = {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_TEST_DIRECT_BLOB", json.dumps(conn))
    direct = BlobModelStore(container, "modelship_test_direct_blob")
    assert direct.fetch("digits", "v1", tmp_path / "back")["version"] == "v1"
    assert verify_package(tmp_path / "back")["version"] == "v1"


@pytest.mark.azurite
def test_a_model_file_damaged_in_transit_is_downloaded_once_more_and_the_fetch_succeeds(
    azurite_proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    flip = Corrupt(match=f"GET .*{ONNX}", at=20_000, times=1)
    azurite_proxy.arm(flip)
    store = proxied_store(published, tmp_path)
    with log_messages("modelship.model_store", logging.WARNING) as warnings:
        manifest = store.fetch("digits", "v1", tmp_path / "model")
    assert flip.fired == 1
    assert verify_package(tmp_path / "model") == manifest
    assert store.stats.redownloads == 1 and store.stats.files_downloaded == 3  # labels, model, the model again
    [warning] = [m for m in warnings if "downloading it once more" in m]
    assert "model.onnx arrived with sha256" in warning and manifest["files"]["model.onnx"] in warning


@pytest.mark.azurite
def test_a_model_file_damaged_on_both_downloads_is_a_verdict_after_exactly_one_more_download(
    azurite_proxy: FaultProxy, published: str, tmp_path: Path
) -> None:
    flip = Corrupt(match=f"GET .*{ONNX}", at=20_000, times=100)
    azurite_proxy.arm(flip)
    store = proxied_store(published, tmp_path)
    parent = tmp_path / "here"
    parent.mkdir()
    with pytest.raises(IntegrityError, match=r"model\.onnx: sha256 mismatch on both downloads") as failed:
        store.fetch("digits", "v1", parent / "model")
    assert isinstance(failed.value, Verdict)  # the ci DAG's fetch_model fails once, without a retry
    assert flip.fired == 2 and store.stats.redownloads == 1  # one fresh download, no more
    assert sorted(p.name for p in parent.iterdir()) == []  # nothing at dest, no staging left
    assert not any((tmp_path / "cache").glob("*/model.onnx"))  # nothing damaged was cached


# --- the registry through a proxy --------------------------------------------------------------------------------



@pytest.mark.registry
def test_registry_reads_ride_out_http_500s_and_a_connection_reset(
    registry_proxy: FaultProxy, registry: components.Registry, docker_client, tmp_path: Path
) -> None:
    from modelship.images import push_image

    pushed = push_image(docker_client, unique_image(docker_client, tmp_path, 1), "modelship-faults/reads", "t",
                        registry_conn="modelship_registry")  # fmt: skip
    overloaded = Respond(status=500, reason="Internal Server Error", match="HEAD .*/manifests/t", times=2)
    cut = ResetResponse(match="GET .*/blobs/sha256:", after=10, times=1)  # the config blob, cut after 10 bytes
    registry_proxy.arm(overloaded, cut)
    client = RegistryClient.from_connection("modelship_registry", backoff=0.1)
    try:
        assert client.digest("modelship-faults/reads", "t") == pushed.digest
        assert "org.opencontainers.image.ref.name" not in client.labels("modelship-faults/reads", "t")
    finally:
        client.close()
    assert (overloaded.fired, cut.fired) == (2, 1), registry_proxy.requests


@pytest.mark.docker
@pytest.mark.registry
@pytest.mark.parametrize(
    "fault",
    [
        # dockerd retries a layer itself, but not the manifest: "received unexpected HTTP status: 500 Internal
        # Server Error" in the push stream, which push_image must retry (2 s, 4 s).
        Respond(status=500, reason="Internal Server Error", match="PUT /v2/.*/manifests/t$", times=2),
        # A reset after 1 MiB of a 4 MiB layer: dockerd retries it once itself ("Retrying in 5 seconds").
        ResetRequest(match="PATCH /v2/.*/blobs/uploads/", after=1 << 20, times=1),
    ],
    ids=["http-500-on-a-layer", "reset-mid-layer"],
)
def test_a_push_rides_out_a_500_or_a_reset_mid_layer_and_the_image_is_whole(
    fault, registry_proxy: FaultProxy, registry: components.Registry, docker_client, tmp_path: Path
) -> None:
    from modelship.images import push_image

    image = unique_image(docker_client, tmp_path)
    registry_proxy.arm(fault)
    with log_messages("modelship.images") as messages:
        pushed = push_image(docker_client, image, "modelship-faults/push", "t", registry_conn="modelship_registry")
    assert fault.fired == fault.times, registry_proxy.requests
    if isinstance(fault, Respond):
        retried = [m for m in messages if m.startswith("push ") and "; retry " in m]
        assert len(retried) == 2 and "500 Internal Server Error" in retried[0], messages
    else:
        assert any("Retrying in" in m for m in messages), messages
    image_is_whole(registry, "modelship-faults/push", "t", pushed.digest)
