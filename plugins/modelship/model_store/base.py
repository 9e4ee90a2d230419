"""The store's logic, once for every backend: names and keys, manifests and aliases, publish (files first,
model.json last), promote (compare-and-swap), fetch (verified, atomic, cached), delete (model.json first).
Backends provide seven storage primitives (modelship.model_store.local, .blob)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from modelpkg.atomic import atomic_dir
from modelpkg.manifest import MANIFEST, REQUIRED_KEYS, ManifestError, safe_path, sha256_file, verify_package
from modelship.model_store.cache import PackageCache
from modelship.model_store.errors import (
    ANY,
    IntegrityError,
    InvalidName,
    ModelNotFound,
    ModelStoreError,
    PromotionConflict,
    VersionExists,
    _PreconditionFailed,
)
from modelship.retry import DEFAULT, NoSpace, Policy, no_space

log = logging.getLogger("modelship.model_store")

# Names, versions and aliases become path segments and blob-name segments: keep them boring.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _check_name(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise InvalidName(
            f"{kind} {value!r} is not allowed: use letters, digits, '.', '_' or '-' (max 128, not starting "
            "with '.', '_' or '-')"
        )
    return value


def _version_sort_key(version: str) -> list[tuple[int, int | str]]:
    """Natural order, so v2 sorts before v10 and 1.9 before 1.10."""
    return [(0, int(part)) if part.isdigit() else (1, part) for part in re.split(r"(\d+)", version) if part]


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _parse_json(data: bytes, where: str) -> dict[str, Any]:
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise IntegrityError(f"{where}: not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise IntegrityError(f"{where}: must be a JSON object")
    return value


def _dump(record: dict[str, Any]) -> bytes:
    return (json.dumps(record, sort_keys=True, indent=2) + "\n").encode("utf-8")


@dataclass
class StoreStats:
    """What this store object moved; tests assert on these counters, not on time."""

    files_downloaded: int = 0  # model files (not manifests or aliases)
    bytes_downloaded: int = 0
    files_uploaded: int = 0
    bytes_uploaded: int = 0
    metadata_reads: int = 0  # manifests and alias records
    cache_hits: int = 0
    retries: int = 0
    redownloads: int = 0  # files downloaded a second time because the first copy did not match its sha256

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


class ModelStore:
    """Publish, list, promote and fetch model versions. Subclasses provide the storage primitives."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, retry_policy: Policy = DEFAULT) -> None:
        # cache_dir holds verified packages as <cache_dir>/<manifest sha256>/; None disables the cache.
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.cache = PackageCache(self.cache_dir) if self.cache_dir is not None else None
        self.retry_policy = retry_policy
        self.stats = StoreStats()

    # Primitives (keys are '/'-separated names relative to the store root).
    def _read(self, key: str) -> tuple[bytes, str] | None:
        """(data, tag) or None if absent; tag changes whenever the object does."""
        raise NotImplementedError

    def _exists(self, key: str) -> bool:
        raise NotImplementedError

    def _write(self, key: str, data: bytes, *, if_absent: bool = False, if_tag: str | None = None) -> None:
        """Write bytes; with a condition, raise _PreconditionFailed when it does not hold."""
        raise NotImplementedError

    def _upload_file(self, key: str, path: Path) -> None:
        raise NotImplementedError

    def _download(self, key: str, path: Path) -> int:
        """Download one object to path; return its size. A missing object raises ModelNotFound."""
        raise NotImplementedError

    def _list(self, prefix: str) -> list[str]:
        """Every key under prefix (which ends with '/')."""
        raise NotImplementedError

    def _delete(self, key: str) -> None:
        """Remove one object; one that is already gone is no error (a retried delete whose answer was lost)."""
        raise NotImplementedError

    def _forget(self, prefix: str) -> None:
        """After every key under prefix was deleted: whatever the backend keeps besides keys (empty folders)."""

    def _prepare_for_write(self) -> None:
        """Create whatever must exist before the first write (folder, container)."""

    # Keys.
    @staticmethod
    def _version_key(name: str, version: str, rel: str = MANIFEST) -> str:
        return f"{name}/versions/{version}/{rel}"

    @staticmethod
    def _alias_key(name: str, alias: str) -> str:
        return f"{name}/aliases/{alias}.json"

    # Reads.
    def _manifest_bytes(self, name: str, version: str) -> bytes:
        found = self._read(self._version_key(name, version))
        if found is None:
            raise ModelNotFound(f"model {name} has no version {version!r} in {self}")
        self.stats.metadata_reads += 1
        return found[0]

    def _parse_manifest(self, data: bytes, name: str, version: str) -> dict[str, Any]:
        where = f"{self}: {self._version_key(name, version)}"
        manifest = _parse_json(data, where)
        missing = [key for key in REQUIRED_KEYS if key not in manifest]
        if missing:
            raise IntegrityError(f"{where}: missing required keys {missing}")
        if not isinstance(manifest["files"], dict):
            raise IntegrityError(f"{where}: 'files' must map relative paths to sha256 strings")
        # The folder name and the manifest must agree, or a copied folder could impersonate a version.
        if (manifest["name"], manifest["version"]) != (name, version):
            raise IntegrityError(
                f"{where}: manifest says model {manifest['name']} version {manifest['version']}, "
                f"but is stored as model {name} version {version}"
            )
        return manifest

    def read_manifest(self, name: str, version: str) -> dict[str, Any]:
        """The manifest of one published version; ModelNotFound if there is none."""
        _check_name("model name", name)
        _check_name("version", version)
        return self._parse_manifest(self._manifest_bytes(name, version), name, version)

    def manifest_sha256(self, name: str, version: str) -> str:
        """sha256 of the stored model.json bytes: the version's identity."""
        _check_name("model name", name)
        _check_name("version", version)
        return hashlib.sha256(self._manifest_bytes(name, version)).hexdigest()

    def read_alias(self, name: str, alias: str) -> dict[str, Any] | None:
        """The alias record, or None if the alias was never set."""
        record, _ = self._read_alias(name, alias)
        return record

    def _read_alias(self, name: str, alias: str) -> tuple[dict[str, Any] | None, str | None]:
        _check_name("model name", name)
        _check_name("alias", alias)
        found = self._read(self._alias_key(name, alias))
        if found is None:
            return None, None
        self.stats.metadata_reads += 1
        record = _parse_json(found[0], f"{self}: {self._alias_key(name, alias)}")
        if not isinstance(record.get("version"), str) or not isinstance(record.get("manifest_sha256"), str):
            raise IntegrityError(f"{self}: alias {name}:{alias} has no version/manifest_sha256")
        return record, found[1]

    def list_models(self) -> list[str]:
        names = {key.split("/", 1)[0] for key in self._list("") if key.endswith("/" + MANIFEST)}
        return sorted(n for n in names if _NAME_RE.match(n))

    def list_versions(self, name: str) -> list[dict[str, Any]]:
        """Published versions (those with a manifest) in natural version order, with their metrics."""
        _check_name("model name", name)
        prefix = f"{name}/versions/"
        versions = []
        for key in self._list(prefix):
            parts = key[len(prefix) :].split("/")
            # Only <version>/model.json: a folder without a manifest is an unfinished publish.
            if len(parts) == 2 and parts[1] == MANIFEST and _NAME_RE.match(parts[0]):
                versions.append(parts[0])
        result = []
        for version in sorted(versions, key=_version_sort_key):
            data = self._manifest_bytes(name, version)
            manifest = self._parse_manifest(data, name, version)
            result.append({
                "version": version,
                "sha256": hashlib.sha256(data).hexdigest(),
                "created_at": manifest.get("created_at"),
                "metrics": manifest["metrics"],
            })  # fmt: skip
        return result

    def list_aliases(self, name: str) -> dict[str, dict[str, Any]]:
        """{alias: record} for every alias of the model."""
        _check_name("model name", name)
        prefix = f"{name}/aliases/"
        aliases = {}
        for key in self._list(prefix):
            alias = key[len(prefix) :]
            if alias.endswith(".json") and "/" not in alias and _NAME_RE.match(alias[:-5]):
                record = self.read_alias(name, alias[:-5])
                if record is not None:
                    aliases[alias[:-5]] = record
        return dict(sorted(aliases.items()))

    def _resolve(self, name: str, ref: str) -> tuple[str, dict[str, Any], bytes]:
        _check_name("model name", name)
        _check_name("version or alias", ref)
        alias, _ = self._read_alias(name, ref)
        version = alias["version"] if alias else ref
        try:
            data = self._manifest_bytes(name, version)
        except ModelNotFound:
            if alias:
                raise ModelNotFound(
                    f"alias {name}:{ref} points at version {version!r}, which is not in {self}"
                ) from None
            raise ModelNotFound(f"model {name} has no version or alias {ref!r} in {self}") from None
        if alias and hashlib.sha256(data).hexdigest() != alias["manifest_sha256"]:
            raise IntegrityError(
                f"alias {name}:{ref} was promoted with manifest sha256 {alias['manifest_sha256']}, but "
                f"version {version} now has {hashlib.sha256(data).hexdigest()}"
            )
        return version, self._parse_manifest(data, name, version), data

    def resolve(self, name: str, version_or_alias: str) -> tuple[str, dict[str, Any]]:
        """(version, manifest) for a version or an alias name (aliases are looked up first)."""
        version, manifest, _ = self._resolve(name, version_or_alias)
        return version, manifest

    # Writes.
    def publish(self, package_dir: str | os.PathLike[str], name: str | None = None) -> dict[str, Any]:
        """Upload a verified package as a new version (files first, model.json last); return its manifest."""
        package = Path(package_dir)
        try:
            manifest = verify_package(package)
            raw = (package / MANIFEST).read_bytes()
        except (OSError, ManifestError) as exc:
            raise IntegrityError(f"{package}: refusing to publish: {exc}") from exc
        # The bytes we upload must be the manifest we verified (the version's identity is their sha256).
        if json.loads(raw) != manifest:
            raise IntegrityError(f"{package}: {MANIFEST} changed while publishing")
        if name is not None and manifest["name"] != name:
            raise ModelStoreError(f"{package}: package is model {manifest['name']!r}, not {name!r}")
        name = _check_name("model name", str(manifest["name"]))
        version = _check_name("version", str(manifest["version"]))
        where = f"model {name} version {version}"
        if self._exists(self._version_key(name, version)):
            raise VersionExists(f"{where} is already published in {self}; versions are immutable, publish a new one")
        if self._exists(self._alias_key(name, version)):
            raise ModelStoreError(f"{where}: {version!r} is already an alias of {name}; choose another version")
        self._prepare_for_write()
        for rel in sorted(manifest["files"]):
            self._upload_file(self._version_key(name, version, rel), package / rel)
        try:
            self._write(self._version_key(name, version), raw, if_absent=True)
        except _PreconditionFailed:
            # Either someone published the same version meanwhile, or our own write succeeded and only
            # its answer was lost (then the retry found it): identical bytes mean the latter.
            found = self._read(self._version_key(name, version))
            if found is None or found[0] != raw:
                raise VersionExists(f"{where} was published by someone else while uploading to {self}") from None
        log.info("published %s (manifest sha256 %s) to %s", where, hashlib.sha256(raw).hexdigest(), self)
        return manifest

    def promote(
        self, name: str, version: str, alias: str = "production", expected_current: str | None | object = ANY
    ) -> dict[str, Any]:
        """Point alias at version by compare-and-swap; return the new alias record.

        expected_current: the version the caller saw the alias at (None: not set); ANY skips that check.
        Raises PromotionConflict if the alias is elsewhere, or moves while we write.
        """
        _check_name("model name", name)
        _check_name("version", version)
        _check_name("alias", alias)
        sha = hashlib.sha256(self._manifest_bytes(name, version)).hexdigest()
        if self._exists(self._version_key(name, alias)):
            raise ModelStoreError(f"alias {alias!r} is also a version of {name}; it would shadow that version")
        current, tag = self._read_alias(name, alias)
        current_version = current["version"] if current else None
        if current and (current_version, current["manifest_sha256"]) == (version, sha):
            log.info("alias %s:%s already points at %s; nothing to do", name, alias, version)
            return current  # idempotent: a re-run after a lost answer must not fail
        if expected_current is not ANY and expected_current != current_version:
            raise PromotionConflict(
                f"alias {name}:{alias} moved from {expected_current or 'nothing'} to "
                f"{current_version or 'nothing'} while promoting {version}"
            )
        record = {
            "version": version,
            "manifest_sha256": sha,
            "promoted_at": _now(),
            "previous": current_version,
        }
        data = _dump(record)
        try:
            if tag is None:
                self._write(self._alias_key(name, alias), data, if_absent=True)
            else:
                self._write(self._alias_key(name, alias), data, if_tag=tag)
        except _PreconditionFailed:
            now, _ = self._read_alias(name, alias)
            if now == record:  # our write landed; only its answer was lost
                return record
            raise PromotionConflict(
                f"alias {name}:{alias} moved from {current_version or 'nothing'} to "
                f"{(now or {}).get('version') or 'nothing'} while promoting {version}"
            ) from None
        log.info("promoted %s:%s from %s to %s (sha256 %s)", name, alias, current_version, version, sha)
        return record

    # Delete.
    def delete_version(self, name: str, version: str) -> int:
        """Delete a published version; the number of objects removed.

        model.json goes FIRST: from that moment no reader sees the version at all (list, resolve and fetch all
        go by the manifest, and a folder without one is ignored), so nobody ever reads half a version. Then
        its files. A deletion cut off half-way leaves only files without a manifest; calling this again
        finishes it. Refused while an alias names the version (move the alias first).
        """
        _check_name("model name", name)
        _check_name("version", version)
        for alias, record in self.list_aliases(name).items():
            if record["version"] == version:
                raise ModelStoreError(
                    f"model {name} version {version} is promoted as {alias!r} in {self}: not deleting it "
                    "(promote another version first)"
                )
        prefix = f"{name}/versions/{version}/"
        manifest = self._version_key(name, version)
        keys = self._list(prefix)
        if not keys:
            raise ModelNotFound(f"model {name} has no version {version!r} in {self}")
        if manifest in keys:
            self._delete(manifest)
        rest = [key for key in keys if key != manifest]
        for key in rest:
            self._delete(key)
        self._forget(prefix)
        log.info("deleted model %s version %s from %s (%d objects, model.json first)", name, version, self,
                 len(keys))  # fmt: skip
        return len(keys)

    # Fetch.
    def fetch(self, name: str, version_or_alias: str, dest: str | os.PathLike[str]) -> dict[str, Any]:
        """Download, verify and atomically place a package at dest; return its manifest.

        Nothing appears at dest (and no temp folder stays beside it) unless every sha256 matched. A file whose
        sha256 does not match was most likely damaged on the way: it is downloaded once more, fresh; only a
        second mismatch is the verdict (IntegrityError: the stored bytes are not what the manifest says).
        A full disk is NoSpace (transient: the task's retry fetches again once space was freed).
        """
        version, manifest, raw = self._resolve(name, version_or_alias)
        sha = hashlib.sha256(raw).hexdigest()
        dest = Path(dest).absolute()
        try:
            with atomic_dir(dest) as staging:  # 0755: a non-root serving user must read the model
                if self.cache is not None and self.cache.fill(sha, staging):
                    self.stats.cache_hits += 1
                else:
                    self._download_package(name, version, manifest, raw, staging)
                    if self.cache is not None:
                        self.cache.add(sha, staging)
        except OSError as exc:
            if not no_space(exc):
                raise
            raise NoSpace(
                f"no space left on device while fetching model {name} version {version} into {dest.parent} "
                f"({_free(dest.parent)} free there): nothing was placed at {dest}. Free space (`modelship gc` "
                "prunes old images, model versions and caches); the task's retry fetches it again"
            ) from exc
        log.info("fetched model %s version %s (sha256 %s) to %s", name, version, sha, dest)
        return manifest

    def _download_package(self, name: str, version: str, manifest: dict[str, Any], raw: bytes, into: Path) -> None:
        for rel in sorted(manifest["files"]):
            try:
                target = safe_path(into, rel)
            except ManifestError as exc:
                raise IntegrityError(f"model {name} version {version}: {exc}") from exc
            target.parent.mkdir(parents=True, exist_ok=True)
            expected = manifest["files"][rel]
            got = self._download_file(name, version, rel, target)
            if got != expected:
                # Damaged in transit (a flipped bit, a proxy), or damaged in the store: one fresh download tells.
                log.warning("model %s version %s: %s arrived with sha256 %s, expected %s; downloading it once more",
                            name, version, rel, got, expected)  # fmt: skip
                self.stats.redownloads += 1
                again = self._download_file(name, version, rel, target)
                if again != expected:
                    raise IntegrityError(
                        f"model {name} version {version} in {self}: {rel}: sha256 mismatch on both downloads: "
                        f"{MANIFEST} expects {expected}, the first copy had {got}, the second {again}. The stored "
                        "file is not what was published (tampered with, or damaged in the store)"
                    )
        (into / MANIFEST).write_bytes(raw)
        try:
            verify_package(into)
        except ManifestError as exc:
            raise IntegrityError(f"model {name} version {version} in {self}: {exc}") from exc

    def _download_file(self, name: str, version: str, rel: str, target: Path) -> str:
        """Download one file of a version to target (replacing it); the sha256 of what arrived."""
        try:
            size = self._download(self._version_key(name, version, rel), target)
        except ModelNotFound:
            raise IntegrityError(
                f"model {name} version {version}: {rel} is listed in {MANIFEST} but missing from {self}"
            ) from None
        self.stats.files_downloaded += 1
        self.stats.bytes_downloaded += size
        return sha256_file(target)


def _free(folder: Path) -> str:
    """Free space on the filesystem of folder (or of its nearest existing parent), e.g. "12.0 MiB"."""
    import shutil

    for candidate in (folder, *folder.parents):
        try:
            return f"{shutil.disk_usage(candidate).free / 2**20:.1f} MiB"
        except OSError:
            continue
    return "unknown"
