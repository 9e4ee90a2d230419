"""The model-package manifest (model.json): the one description of a trained model.

A model package is a folder: the model files plus model.json, which records what the model is (name,
version, framework, input, metrics) and the sha256 of every other file in the folder. Training writes it,
the model store and the DAGs read and verify it, and the sha256 of the model.json bytes themselves is the
identity of a model version everywhere (image labels, /version, cache keys): change any file or any
metadata and the identity changes.

The serving image cannot import this module (it ships only app/), so app/classifier/model.py carries its
own short copy of the verification; keep the two in step.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath
from typing import Any

MANIFEST = "model.json"
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
    text = json.dumps(manifest, sort_keys=True, indent=2) + "\n"
    # Temp file in the same folder + os.replace: a reader never sees a half-written model.json.
    fd, tmp = tempfile.mkstemp(prefix=f".{MANIFEST}.", suffix=".tmp", dir=package)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; the serving user must be able to read it
        os.replace(tmp, package / MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return manifest


def read_manifest(package_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Parse model.json and check its required keys; ManifestError says what is wrong."""
    path = Path(package_dir) / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest missing") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
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


def _safe_path(package: Path, rel: str) -> Path:
    """Resolve a manifest path inside the package, refusing anything that could escape it."""
    pure = PurePosixPath(rel)
    if not rel or "\\" in rel or pure.is_absolute() or ".." in pure.parts or rel == MANIFEST:
        raise ManifestError(f"{rel!r}: path not allowed in a model package")
    path = package / pure
    # A symlinked folder inside the package could still lead outside it.
    if not path.resolve().is_relative_to(package.resolve()):
        raise ManifestError(f"{rel!r}: path escapes the package")
    return path


def verify_package(package_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Check every file listed in model.json exists with the recorded sha256; return the manifest."""
    package = Path(package_dir)
    manifest = read_manifest(package)
    for rel, expected in sorted(manifest["files"].items()):
        path = _safe_path(package, rel)
        if not path.is_file():
            raise ManifestError(f"{rel}: listed in {MANIFEST} but missing (expected sha256 {expected})")
        actual = sha256_file(path)
        if actual != expected:
            raise ManifestError(f"{rel}: sha256 mismatch: expected {expected}, actual {actual}")
    return manifest


def manifest_sha256(package_dir: str | os.PathLike[str]) -> str:
    """sha256 of the model.json bytes: the identity of a model version."""
    path = Path(package_dir) / MANIFEST
    try:
        return sha256_file(path)
    except FileNotFoundError:
        raise ManifestError(f"{path}: manifest missing") from None
