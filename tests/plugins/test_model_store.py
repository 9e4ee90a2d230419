"""The model store keeps versions immutable, moves aliases only by compare-and-swap, never lets a
package with a wrong byte reach its destination, fetches an unchanged model from its cache, and rides out
a blob service that goes away for a while — on a local folder and on real Azurite alike."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from devstack import components
from modelpkg.manifest import manifest_sha256, verify_package
from modelship.model_store import (
    ANY,
    BlobModelStore,
    IntegrityError,
    LocalModelStore,
    ModelNotFound,
    ModelStore,
    ModelStoreError,
    PromotionConflict,
    StoreUnavailable,
    VersionExists,
    open_store,
)
from modelship.retry import Policy, call, is_transient
from modelship.settings import Settings
from tests.logcapture import log_messages

StoreFactory = Callable[..., ModelStore]  # the make_store fixture (tests/plugins/conftest.py)


def new_container() -> str:
    return f"models-{uuid.uuid4().hex[:16]}"


def overwrite_directly(store: ModelStore, key: str, data: bytes, azurite: components.Azurite | None) -> None:
    """Change stored bytes behind the store's back (what a bad actor or a broken disk would do)."""
    if isinstance(store, LocalModelStore):
        (store.root / key).write_bytes(data)
        return
    from azure.storage.blob import BlobServiceClient

    assert isinstance(store, BlobModelStore) and azurite is not None
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    service.get_container_client(store.container).upload_blob(key, data, overwrite=True)


def retry_messages() -> contextlib.AbstractContextManager[list[str]]:
    """The retry logger's messages (importing Airflow reconfigures logging: caplog would miss them)."""
    return log_messages("modelship.model_store.retry")


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# --- publish, promote, fetch -------------------------------------------------------------------------


def test_publish_promote_fetch_round_trip(store: ModelStore, packages: dict[str, Path], tmp_path: Path) -> None:
    manifest = store.publish(packages["v1"])
    assert manifest["version"] == "v1"
    [listed] = store.list_versions("digits")
    assert listed["version"] == "v1"
    assert listed["sha256"] == manifest_sha256(packages["v1"])
    assert listed["metrics"]["accuracy"] == manifest["metrics"]["accuracy"]

    record = store.promote("digits", "v1", alias="production", expected_current=None)
    assert record["version"] == "v1" and record["previous"] is None
    assert record["manifest_sha256"] == manifest_sha256(packages["v1"])
    assert store.resolve("digits", "production") == ("v1", manifest)
    assert store.resolve("digits", "v1") == ("v1", manifest)

    dest = tmp_path / "out" / "model"
    fetched = store.fetch("digits", "production", dest)
    assert fetched == manifest
    assert verify_package(dest) == manifest
    assert manifest_sha256(dest) == record["manifest_sha256"]
    for name in ("model.onnx", "labels.json", "model.json"):
        assert (dest / name).read_bytes() == (packages["v1"] / name).read_bytes()
    assert leftovers(dest.parent) == ["model"]  # no staging folder left beside it


def test_promote_records_the_previous_version(store: ModelStore, packages: dict[str, Path]) -> None:
    store.publish(packages["v1"])
    store.publish(packages["v2"])
    store.promote("digits", "v1")
    record = store.promote("digits", "v2", expected_current="v1")
    assert record["previous"] == "v1"
    assert store.read_alias("digits", "production") == record
    assert store.list_aliases("digits") == {"production": record}


def test_publish_refuses_an_existing_version(store: ModelStore, packages: dict[str, Path]) -> None:
    store.publish(packages["v1"])
    before = store.manifest_sha256("digits", "v1")
    with pytest.raises(VersionExists, match=r"model digits version v1 is already published"):
        store.publish(packages["v1"])
    assert store.manifest_sha256("digits", "v1") == before


def test_publish_refuses_a_package_that_does_not_match_its_manifest(
    store: ModelStore, packages: dict[str, Path], tmp_path: Path
) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(packages["v1"], package)
    (package / "labels.json").write_text("[]\n")
    with pytest.raises(IntegrityError, match=r"labels\.json: sha256 mismatch"):
        store.publish(package)
    assert store.list_versions("digits") == []


def test_publish_refuses_a_package_named_otherwise(store: ModelStore, packages: dict[str, Path]) -> None:
    with pytest.raises(ModelStoreError, match=r"package is model 'digits', not 'letters'"):
        store.publish(packages["v1"], name="letters")


def test_versions_are_listed_in_natural_order_and_unfinished_ones_ignored(
    store: ModelStore, packages: dict[str, Path]
) -> None:
    for key in ("v10", "v2", "v1"):
        store.publish(packages[key])
    # A publish that died after the files but before model.json: not a version.
    store._write("digits/versions/v3/model.onnx", b"half a publish")
    assert [v["version"] for v in store.list_versions("digits")] == ["v1", "v2", "v10"]
    assert store.list_models() == ["digits"]
    with pytest.raises(ModelNotFound, match=r"model digits has no version or alias 'v3'"):
        store.resolve("digits", "v3")


def test_unknown_names_raise_model_not_found_naming_what_was_asked(
    store: ModelStore, packages: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(ModelNotFound, match=r"model digits has no version or alias 'production'"):
        store.resolve("digits", "production")
    store.publish(packages["v1"])
    with pytest.raises(ModelNotFound, match=r"model digits has no version 'v7'"):
        store.promote("digits", "v7")
    with pytest.raises(ModelNotFound, match=r"'v7'"):
        store.fetch("digits", "v7", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    with pytest.raises(ModelStoreError, match=r"version '../x' is not allowed"):
        store.read_manifest("digits", "../x")


# --- integrity ------------------------------------------------------------------------------------------


def test_tampered_file_fails_fetch_and_leaves_nothing_at_dest(
    store: ModelStore, packages: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store.publish(packages["v1"])
    azurite = request.getfixturevalue("azurite") if isinstance(store, BlobModelStore) else None
    overwrite_directly(store, "digits/versions/v1/model.onnx", b"not the model that was published", azurite)

    parent = tmp_path / "fetch-here"
    parent.mkdir()
    with pytest.raises(IntegrityError, match=r"model digits version v1 .*model\.onnx: sha256 mismatch"):
        store.fetch("digits", "v1", parent / "model")
    assert store.stats.redownloads == 1  # downloaded once more, fresh, before the verdict
    assert leftovers(parent) == []  # neither dest nor a temp folder
    assert not (tmp_path / "cache").exists() or leftovers(tmp_path / "cache") == []  # nothing cached


def test_fetch_replaces_an_existing_dest_in_one_step(
    store: ModelStore, packages: dict[str, Path], tmp_path: Path
) -> None:
    store.publish(packages["v1"])
    store.publish(packages["v2"])
    dest = tmp_path / "model"
    store.fetch("digits", "v1", dest)
    (dest / "stale.txt").write_text("from an older fetch")
    store.fetch("digits", "v2", dest)
    assert verify_package(dest)["version"] == "v2"
    assert not (dest / "stale.txt").exists()
    assert [name for name in leftovers(tmp_path) if name.startswith(".")] == []  # old copy and staging gone


def test_alias_pointing_at_changed_manifest_is_refused(
    store: ModelStore, packages: dict[str, Path], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    store.publish(packages["v1"])
    store.promote("digits", "v1")
    azurite = request.getfixturevalue("azurite") if isinstance(store, BlobModelStore) else None
    edited = (packages["v1"] / "model.json").read_bytes().replace(b'"digits"', b'"digits" ', 1)
    overwrite_directly(store, "digits/versions/v1/model.json", edited, azurite)
    with pytest.raises(IntegrityError, match=r"alias digits:production was promoted with manifest sha256"):
        store.fetch("digits", "production", tmp_path / "dest")
    assert not (tmp_path / "dest").exists()


# --- cache ----------------------------------------------------------------------------------------------


def test_repeat_fetch_of_an_unchanged_model_transfers_no_model_bytes(
    make_store: StoreFactory, packages: dict[str, Path], tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    first = make_store(cache=cache)
    first.publish(packages["v1"])
    first.promote("digits", "v1")
    first.fetch("digits", "production", tmp_path / "a")
    size = sum(p.stat().st_size for p in (packages["v1"]).iterdir() if p.name != "model.json")
    assert first.stats.files_downloaded == 2 and first.stats.bytes_downloaded == size

    again = make_store(cache=cache)  # another process with the same cache: a second CI run
    manifest = again.fetch("digits", "production", tmp_path / "b")
    assert again.stats.bytes_downloaded == 0 and again.stats.files_downloaded == 0
    assert again.stats.cache_hits == 1
    assert again.stats.metadata_reads == 2  # the alias and the manifest: all that crossed the wire
    assert verify_package(tmp_path / "b") == manifest


def test_a_damaged_cache_entry_is_dropped_and_downloaded_again(
    store: ModelStore, packages: dict[str, Path], tmp_path: Path
) -> None:
    store.publish(packages["v1"])
    store.fetch("digits", "v1", tmp_path / "a")
    sha = manifest_sha256(packages["v1"])
    # Hardlinked into dest: editing dest in place damages the cache entry too.
    (tmp_path / "cache" / sha / "labels.json").unlink()
    (tmp_path / "cache" / sha / "labels.json").write_text("[]\n")
    store.stats.bytes_downloaded = 0
    store.fetch("digits", "v1", tmp_path / "b")
    assert store.stats.bytes_downloaded > 0
    assert verify_package(tmp_path / "b")["version"] == "v1"
    assert verify_package(tmp_path / "cache" / sha)["version"] == "v1"


# --- promotion races ------------------------------------------------------------------------------------


def _race(stores: list[ModelStore], versions: list[str], expected: object) -> list[object]:
    """Both promoters read the alias, then both write: the barrier sits between read and write."""
    barrier = threading.Barrier(len(stores), timeout=30)
    results: list[object] = [None] * len(stores)

    for s in stores:
        original = s._write

        def write(key: str, data: bytes, *, _original=original, **kwargs: object) -> None:
            if "/aliases/" in key:
                barrier.wait()
            _original(key, data, **kwargs)

        s._write = write  # type: ignore[method-assign]

    def run(i: int) -> None:
        try:
            results[i] = stores[i].promote("digits", versions[i], expected_current=expected)
        except Exception as exc:
            results[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return results


@pytest.mark.parametrize("expected", ["v1", ANY], ids=["expecting-v1", "expecting-anything"])
def test_two_concurrent_promotions_one_wins_the_other_raises(
    make_store: StoreFactory, packages: dict[str, Path], expected: object
) -> None:
    admin = make_store()
    for key in ("v1", "v2", "v10"):
        admin.publish(packages[key])
    admin.promote("digits", "v1")

    results = _race([make_store(), make_store()], ["v2", "v10"], expected)
    winners = [r for r in results if isinstance(r, dict)]
    losers = [r for r in results if isinstance(r, PromotionConflict)]
    assert len(winners) == 1 and len(losers) == 1, results
    won = winners[0]["version"]
    lost = "v10" if won == "v2" else "v2"
    assert str(losers[0]) == f"alias digits:production moved from v1 to {won} while promoting {lost}"
    assert admin.read_alias("digits", "production") == winners[0]


def test_promote_refuses_when_the_alias_is_not_where_the_caller_saw_it(
    store: ModelStore, packages: dict[str, Path]
) -> None:
    store.publish(packages["v1"])
    store.publish(packages["v2"])
    store.promote("digits", "v1")
    with pytest.raises(PromotionConflict, match=r"moved from nothing to v1 while promoting v2"):
        store.promote("digits", "v2", expected_current=None)
    assert store.read_alias("digits", "production")["version"] == "v1"
    # Promoting what the alias already points at is a no-op, whatever the caller expected (a re-run).
    assert store.promote("digits", "v1", expected_current="v0")["version"] == "v1"


# --- outages (real Azurite stopped and started) ---------------------------------------------------------


@pytest.mark.azurite
def test_fetch_rides_out_azurite_restarting(
    azurite: components.Azurite,
    blob_env: str,
    packages: dict[str, Path],
    tmp_path: Path,
) -> None:
    # Eight attempts (0.5 s, 1 s, 2 s, then 4 s apart: 19.5 s in all) against an Azurite start of a second or two.
    policy = Policy(attempts=8, base=0.5, max_delay=4.0)
    store = BlobModelStore(new_container(), blob_env, cache_dir=tmp_path / "cache", retry_policy=policy)
    store.publish(packages["v1"])
    store.promote("digits", "v1")

    azurite.stop()
    outcome: dict[str, object] = {}

    def fetch() -> None:
        try:
            outcome["manifest"] = store.fetch("digits", "production", tmp_path / "model")
        except Exception as exc:
            outcome["error"] = exc

    with retry_messages() as messages:
        worker = threading.Thread(target=fetch)
        worker.start()
        try:
            # Azurite comes back once the fetch has met the outage (its first retry), not after a guessed delay.
            deadline = time.monotonic() + 30
            while store.stats.retries < 1 and worker.is_alive() and time.monotonic() < deadline:
                time.sleep(0.05)
        finally:
            azurite.start()  # its data survives the restart
        worker.join(60)

    assert "error" not in outcome, outcome
    assert verify_package(tmp_path / "model")["version"] == "v1"
    assert store.stats.retries >= 1
    assert any(m.startswith("blob store: ") and m.endswith("; retry 1/7 in 0.5s") for m in messages), messages


@pytest.mark.azurite
def test_store_down_for_good_fails_clearly_and_leaves_nothing(
    azurite: components.Azurite, blob_env: str, packages: dict[str, Path], tmp_path: Path
) -> None:
    store = BlobModelStore(new_container(), blob_env, retry_policy=Policy(attempts=3, base=0.1))
    store.publish(packages["v1"])
    original = store._download

    def download_after_outage(key: str, path: Path) -> int:
        azurite.stop()  # the manifest was read; the service dies before the first model file
        return original(key, path)

    store._download = download_after_outage  # type: ignore[method-assign]
    parent = tmp_path / "here"
    parent.mkdir()
    try:
        with pytest.raises(StoreUnavailable, match=r"unreachable after 3 attempts while downloading digits/"):
            store.fetch("digits", "v1", parent / "model")
    finally:
        azurite.start()
    assert leftovers(parent) == []


# --- retry policy and open_store --------------------------------------------------------------------------


def test_retry_backs_off_on_transient_errors_only() -> None:
    from azure.core.exceptions import (
        HttpResponseError,
        ResourceModifiedError,
        ResourceNotFoundError,
        ServiceRequestError,
    )

    assert is_transient(ServiceRequestError("connection refused"))
    assert is_transient(HttpResponseError(message="busy", response=_Response(503)))
    assert not is_transient(ResourceModifiedError(message="precondition", response=_Response(412)))
    assert not is_transient(ResourceNotFoundError(message="nope", response=_Response(404)))

    sleeps: list[float] = []
    calls = iter([ServiceRequestError("down"), ServiceRequestError("down"), "ok"])

    def flaky() -> str:
        value = next(calls)
        if isinstance(value, Exception):
            raise value
        return value

    assert call(flaky, "testing", policy=Policy(attempts=5, base=0.5), sleep=sleeps.append) == "ok"
    assert sleeps == [0.5, 1.0]
    assert Policy(base=0.5, max_delay=8).delay(10) == 8

    def precondition() -> None:
        raise ResourceModifiedError(message="412", response=_Response(412))

    with pytest.raises(ResourceModifiedError):
        call(precondition, "testing", sleep=sleeps.append)
    assert sleeps == [0.5, 1.0]  # not retried


class _Response:
    """The least an azure-core HttpResponseError needs."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.reason = "test"
        self.headers: dict[str, str] = {}
        self.request = None

    def text(self, encoding: str | None = None) -> str:
        return ""


def test_open_store_picks_the_backend_from_settings(tmp_path: Path) -> None:
    base = Settings.get()
    local = open_store(_with(base, f"local:{tmp_path}/models"), cache_dir=tmp_path / "c")
    assert isinstance(local, LocalModelStore) and local.root == tmp_path / "models"
    assert local.cache_dir == tmp_path / "c"
    blob = open_store(_with(base, "wasb:models"))
    assert isinstance(blob, BlobModelStore) and blob._client is None  # no connection until first use
    assert blob.cache_dir == base.cache_dir / "models"
    with pytest.raises(ValueError, match=r"'s3:bucket' .* use local:/absolute/path or wasb:<container>"):
        open_store(_with(base, "s3:bucket"))


def _with(settings: Settings, model_store: str) -> Settings:
    import dataclasses

    return dataclasses.replace(settings, model_store=model_store)


def test_sha256_identity_is_the_manifest_bytes(store: ModelStore, packages: dict[str, Path]) -> None:
    store.publish(packages["v2"])
    raw = (packages["v2"] / "model.json").read_bytes()
    assert store.manifest_sha256("digits", "v2") == hashlib.sha256(raw).hexdigest()
