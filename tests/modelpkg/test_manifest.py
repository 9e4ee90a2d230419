"""modelpkg.manifest: the one implementation of model.json (write, read, verify, identity)."""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import pytest

from modelpkg.manifest import (
    MANIFEST,
    ManifestError,
    manifest_sha256,
    read_manifest,
    sha256_file,
    verify_package,
    write_manifest,
)

INPUT = {"name": "pixels", "shape": [None, 64], "dtype": "float32", "description": "8x8"}


@pytest.fixture
def package(tmp_path: Path) -> Path:
    root = tmp_path / "pkg"
    (root / "nested" / "deeper").mkdir(parents=True)
    (root / "model.onnx").write_bytes(b"\x00onnx bytes\xff")
    (root / "labels.json").write_text('["0", "1"]\n')
    (root / "nested" / "deeper" / "extra.bin").write_bytes(os.urandom(3000))
    return root


def write(package: Path, **overrides) -> dict:
    kwargs = {"name": "digits", "version": "v1", "framework": "onnx", "input_spec": INPUT,
              "metrics": {"accuracy": 0.97, "heldout_size": 450}, **overrides}  # fmt: skip
    return write_manifest(package, **kwargs)


def test_write_read_verify_round_trip_hashes_every_file_by_posix_relative_path(package: Path):
    written = write(package, extra={"labels_file": "labels.json"})
    assert set(written["files"]) == {"model.onnx", "labels.json", "nested/deeper/extra.bin"}
    assert written["files"]["model.onnx"] == hashlib.sha256(b"\x00onnx bytes\xff").hexdigest()
    assert MANIFEST not in written["files"]
    assert read_manifest(package) == written
    assert verify_package(package) == written
    assert written["labels_file"] == "labels.json"
    assert written["input"] == INPUT and written["framework"] == "onnx"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", written["created_at"])


def test_manifest_file_is_sorted_indented_with_trailing_newline_and_no_temp_files_left(package: Path):
    written = write(package)
    text = (package / MANIFEST).read_text()
    assert text == json.dumps(written, sort_keys=True, indent=2) + "\n"
    assert sorted(p.name for p in package.iterdir()) == ["labels.json", MANIFEST, "model.onnx", "nested"]
    assert (package / MANIFEST).stat().st_mode & 0o044 == 0o044  # readable by the image's non-root user


def test_rewriting_the_manifest_does_not_hash_the_old_manifest(package: Path):
    write(package)
    again = write(package, version="v2")
    assert MANIFEST not in again["files"] and again["version"] == "v2"


def test_tampered_file_is_named_with_expected_and_actual_hash(package: Path):
    written = write(package)
    (package / "nested" / "deeper" / "extra.bin").write_bytes(b"changed")
    with pytest.raises(ManifestError) as caught:
        verify_package(package)
    message = str(caught.value)
    assert "nested/deeper/extra.bin" in message
    assert written["files"]["nested/deeper/extra.bin"] in message
    assert hashlib.sha256(b"changed").hexdigest() in message


def test_missing_file_is_named(package: Path):
    write(package)
    (package / "labels.json").unlink()
    with pytest.raises(ManifestError, match=r"labels\.json.*missing"):
        verify_package(package)


@pytest.mark.parametrize("bad_path", ["../outside.bin", "nested/../../outside.bin", "/etc/hostname", "a\\..\\b"])
def test_manifest_paths_escaping_the_package_are_rejected(package: Path, bad_path: str):
    (package.parent / "outside.bin").write_bytes(b"x")
    write(package)
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["files"][bad_path] = sha256_file(package.parent / "outside.bin")
    (package / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError) as caught:
        verify_package(package)
    assert repr(bad_path) in str(caught.value)


def test_symlinked_folder_escaping_the_package_is_rejected(package: Path, tmp_path: Path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "weights.bin").write_bytes(b"w")
    write(package)
    (package / "link").symlink_to(outside)
    manifest = json.loads((package / MANIFEST).read_text())
    manifest["files"]["link/weights.bin"] = sha256_file(outside / "weights.bin")
    (package / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ManifestError, match="escapes the package"):
        verify_package(package)


def test_write_manifest_refuses_symlinks_and_overriding_computed_keys(package: Path):
    with pytest.raises(ManifestError, match="computed keys"):
        write(package, extra={"files": {}})
    (package / "alias.onnx").symlink_to(package / "model.onnx")
    with pytest.raises(ManifestError, match="alias.onnx"):
        write(package)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (None, "manifest missing"),
        ("{not json", "not valid JSON"),
        ("[1, 2]", "JSON object"),
        ('{"name": "d", "version": "1", "files": {}}', "metrics"),
        ('{"name": "d", "version": "1", "files": [], "metrics": {}}', "files"),
    ],
)
def test_read_manifest_rejects_missing_invalid_or_incomplete_manifests(tmp_path: Path, content, error):
    if content is not None:
        (tmp_path / MANIFEST).write_text(content)
    with pytest.raises(ManifestError, match=error):
        read_manifest(tmp_path)


def test_manifest_sha256_is_the_hash_of_the_manifest_bytes_and_stable(package: Path):
    write(package)
    first = manifest_sha256(package)
    assert first == hashlib.sha256((package / MANIFEST).read_bytes()).hexdigest()
    assert manifest_sha256(package) == first
    verify_package(package)  # reading and verifying never rewrites the manifest
    assert manifest_sha256(package) == first
    write(package, version="v2")
    assert manifest_sha256(package) != first  # any metadata change is a new identity


def test_manifest_sha256_of_a_folder_without_manifest_is_a_manifest_error(tmp_path: Path):
    with pytest.raises(ManifestError, match="manifest missing"):
        manifest_sha256(tmp_path)
