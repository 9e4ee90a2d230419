"""Deleting a model version, on both backends (a folder, real Azurite): model.json goes first, so at every moment
of a deletion a reader sees the whole version or none of it; a deletion cut off half-way is finished by the next;
a promoted version is refused."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from modelship.model_store import IntegrityError, ModelNotFound, ModelStore, ModelStoreError

StoreFactory = Callable[..., ModelStore]


def what_a_reader_sees(make_store: StoreFactory, dest: Path, version: str) -> str:
    """"whole" (listed, and fetches verified) or "none" (not listed, and neither readable nor fetchable)."""
    reader = make_store()  # another process: no cache, nothing remembered
    listed = version in [v["version"] for v in reader.list_versions("digits")]
    try:
        reader.fetch("digits", version, dest)
    except ModelNotFound:
        fetched = False
    except IntegrityError as exc:  # a listed version whose files are going: the half a reader must never see
        return f"HALF: {exc}"
    else:
        fetched = True
    if listed and fetched:
        return "whole"
    if not listed and not fetched:
        with pytest.raises(ModelNotFound):
            reader.read_manifest("digits", version)
        return "none"
    return f"HALF: listed={listed} fetched={fetched}"


def test_every_step_of_a_deletion_leaves_the_whole_version_or_none(
    make_store: StoreFactory, packages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    store.publish(packages["v1"])
    store.publish(packages["v2"])
    assert what_a_reader_sees(make_store, tmp_path / "before", "v1") == "whole"

    seen: list[tuple[str, str]] = []
    delete = store._delete

    def observed(key: str) -> None:  # the real deletion, and a reader looking right after each object went
        delete(key)
        seen.append((key.rsplit("/", 1)[-1], what_a_reader_sees(make_store, tmp_path / f"after-{len(seen)}", "v1")))

    monkeypatch.setattr(store, "_delete", observed)
    removed = store.delete_version("digits", "v1")

    assert removed == len(seen) >= 3  # model.json, the model, its labels
    assert seen[0][0] == "model.json", seen
    assert {state for _, state in seen} == {"none"}, seen
    assert store._list("digits/versions/v1/") == []
    assert [v["version"] for v in make_store().list_versions("digits")] == ["v2"]
    assert what_a_reader_sees(make_store, tmp_path / "v2", "v2") == "whole"  # the neighbour is untouched


def test_a_deletion_cut_off_half_way_is_invisible_and_the_next_one_finishes_it(
    make_store: StoreFactory, packages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store()
    store.publish(packages["v1"])
    delete = store._delete
    calls = []

    def dies_after_two(key: str) -> None:
        calls.append(key)
        if len(calls) > 2:
            raise ConnectionResetError("the worker died mid-deletion")
        delete(key)

    monkeypatch.setattr(store, "_delete", dies_after_two)
    with pytest.raises(ConnectionResetError):
        store.delete_version("digits", "v1")
    assert store._list("digits/versions/v1/"), "files are left over"
    assert what_a_reader_sees(make_store, tmp_path / "half", "v1") == "none"

    monkeypatch.setattr(store, "_delete", delete)
    assert make_store().delete_version("digits", "v1") >= 1
    assert store._list("digits/versions/v1/") == []
    with pytest.raises(ModelNotFound):
        store.delete_version("digits", "v1")


def test_a_promoted_version_is_not_deleted(make_store: StoreFactory, packages: dict[str, Path], tmp_path: Path) -> None:
    store = make_store()
    store.publish(packages["v1"])
    store.promote("digits", "v1", "staging")
    with pytest.raises(ModelStoreError, match="promoted as 'staging'"):
        store.delete_version("digits", "v1")
    assert what_a_reader_sees(make_store, tmp_path / "kept", "v1") == "whole"
