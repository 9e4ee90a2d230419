"""The model-package manifest (model.json): the one description of a trained model.

A model package is a folder: the model files plus model.json, which records what the model is (name,
version, framework, input, metrics) and the sha256 of every other file in the folder. Training writes it,
the model store and the DAGs read and verify it, and the sha256 of the model.json bytes themselves is the
identity of a model version everywhere (image labels, /version, cache keys): change any file or any
metadata and the identity changes.

A package that can be *served* also has the ONNX model (MODEL_FILE, output PROBABILITIES) and its labels
(LABELS_FILE, or the manifest's labels_file), both listed in the manifest: `verify_serving` checks that,
for training's evaluation, the pipeline's gate and the app's start-up alike.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

from modelpkg.atomic import write_atomic

MANIFEST = "model.json"
MODEL_FILE = "model.onnx"
LABELS_FILE = "labels.json"  # default; a manifest may name another with "labels_file"
PROBABILITIES = "probabilities"  # the ONNX output: float32 [N, len(labels)], columns ordered as the labels
REQUIRED_KEYS = ("name", "version", "files", "metrics")
# Keys write_manifest computes itself: `extra` may not override them, or the manifest could lie.
_CORE_KEYS = frozenset({"name", "version", "created_at", "framework", "input", "metrics", "files"})
_CHUNK = 1 << 20


class ManifestError(Exception):
    """A model package is missing, malformed, or does not match its manifest."""


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex sha256 of a file, read in chunks so large models do not have to fit in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _hash_package(package_dir: Path) -> dict[str, str]:
    """{posix relative path: sha256} for every file except the manifest itself."""
    files: dict[str, str] = {}
    for root, dirs, names in os.walk(package_dir):
        dirs.sort()
        for name in sorted(names + [d for d in dirs if (Path(root) / d).is_symlink()]):
            path = Path(root) / name
            rel = path.relative_to(package_dir).as_posix()
            if rel == MANIFEST:
                continue
            # A symlink could point anywhere, so the hash would not describe what the package contains.
            if path.is_symlink() or not path.is_file():
                raise ManifestError(f"{rel}: only regular files may be in a model package")
            files[rel] = sha256_file(path)
    return files


def write_manifest(
    package_dir: str | os.PathLike[str],
    *,
    name: str,
    version: str,
    framework: str,
    input_spec: dict[str, Any],
    metrics: dict[str, Any],
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Hash every file in package_dir and write model.json atomically; return the manifest."""
    package = Path(package_dir)
    if not package.is_dir():
        raise ManifestError(f"{package}: not a directory")
    clash = _CORE_KEYS.intersection(extra or {})
    if clash:
        raise ManifestError(f"extra may not override computed keys: {sorted(clash)}")
    manifest: dict[str, Any] = {
        **(extra or {}),
        "name": name,
        "version": version,
        "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "framework": framework,
        "input": input_spec,
        "metrics": metrics,
        "files": _hash_package(package),
    }
    # A reader never sees a half-written model.json; 0644: the serving user must be able to read it.
    write_atomic(package / MANIFEST, json.dumps(manifest, sort_keys=True, indent=2) + "\n", mode=0o644)
    return manifest


def read_manifest(package_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse model.json and check its required keys; ManifestError says what is wrong."""
    return parse_manifest(_read_bytes(Path(package_dir) / MANIFEST), Path(package_dir) / MANIFEST)


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest missing") from None
    except OSError as exc:
        raise ManifestError(f"{path}: unreadable: {exc}") from exc


def parse_manifest(raw: bytes, path: str | os.PathLike[str] = MANIFEST) -> dict[str, Any]:
    """The manifest in ``raw`` (the bytes of a model.json), its required keys and types checked."""
    try:
        manifest = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise ManifestError(f"{path}: not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict):
        raise ManifestError(f"{path}: must be a JSON object")
    missing = [key for key in REQUIRED_KEYS if key not in manifest]
    if missing:
        raise ManifestError(f"{path}: missing required keys {missing}")
    files = manifest["files"]
    if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
        raise ManifestError(f"{path}: 'files' must map relative paths to sha256 strings")
    if not isinstance(manifest["metrics"], dict):
        raise ManifestError(f"{path}: 'metrics' must be an object")
    return manifest


def safe_path(package: Path, rel: str) -> Path:
    """Resolve a manifest path inside the package, refusing anything that could escape it."""
    pure = PurePosixPath(rel)
    if not rel or "\\" in rel or pure.is_absolute() or ".." in pure.parts or rel == MANIFEST:
        raise ManifestError(f"{rel!r}: path not allowed in a model package")
    path = package / pure
    # A symlinked folder inside the package could still lead outside it.
    if not path.resolve().is_relative_to(package.resolve()):
        raise ManifestError(f"{rel!r}: path escapes the package")
    return path


def verify_package(package_dir: str | os.PathLike[str], *, require: tuple[str, ...] = ()) -> dict[str, Any]:
    """Check every file listed in model.json exists with the recorded sha256; return the manifest.

    ``require``: files that must be listed (a file that is not listed would be used unverified).
    """
    package = Path(package_dir)
    return _verify_files(package, read_manifest(package), require)


def _verify_files(package: Path, manifest: dict[str, Any], require: tuple[str, ...]) -> dict[str, Any]:
    for needed in require:
        if needed not in manifest["files"]:
            raise ManifestError(f"{needed}: not listed in {MANIFEST}, so it cannot be verified")
    for rel, expected in sorted(manifest["files"].items()):
        path = safe_path(package, rel)
        if not path.is_file():
            raise ManifestError(f"{rel}: missing (listed in {MANIFEST} with sha256 {expected})")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(
                f"{rel}: sha256 mismatch (altered): {MANIFEST} expects {expected}, the file has {actual}"
            )
    return manifest


@dataclass(frozen=True)
class ServingPackage:
    """A verified package that can be served: its manifest, identity and labels."""

    path: Path
    manifest: dict[str, Any]
    sha256: str  # of the model.json bytes that were verified
    labels: list[str]

    @property
    def model_file(self) -> Path:
        return self.path / MODEL_FILE


def verify_serving(package_dir: str | os.PathLike[str]) -> ServingPackage:
    """Verify a package that is to be scored or served: every hash, MODEL_FILE and the labels listed, the
    labels a JSON list. The identity is the sha256 of exactly the manifest bytes that were checked."""
    package = Path(package_dir)
    raw = _read_bytes(package / MANIFEST)
    manifest = parse_manifest(raw, package / MANIFEST)
    labels_file = manifest.get("labels_file", LABELS_FILE)
    if not isinstance(labels_file, str):
        raise ManifestError(f"{package / MANIFEST}: 'labels_file' must be a string")
    _verify_files(package, manifest, (MODEL_FILE, labels_file))
    try:
        labels = json.loads((package / labels_file).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ManifestError(f"{labels_file}: not a JSON list of labels: {exc!r}") from None
    if not isinstance(labels, list) or not labels:
        raise ManifestError(f"{labels_file}: not a JSON list of labels")
    return ServingPackage(package, manifest, hashlib.sha256(raw).hexdigest(), [str(label) for label in labels])


def manifest_sha256(package_dir: str | os.PathLike[str]) -> str:
    """sha256 of the model.json bytes: the identity of a model version."""
    path = Path(package_dir) / MANIFEST
    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest missing") from None
