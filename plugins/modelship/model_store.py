"""The model store: published model versions, aliases that point at them, and verified fetches.

One interface, two backends sharing the same layout and the same logic (only the storage primitives
differ): a folder (``local:/abs/path``) and an Azure Blob container (``wasb:<container>``, through
``WasbHook``, so Azurite and real Azure work alike)::

    <name>/versions/<version>/<files...>     files first, model.json LAST
    <name>/aliases/<alias>.json              {"version", "manifest_sha256", "promoted_at", "previous"}

A version exists only once its model.json exists: readers ignore a folder without one (a publish that
died half-way). Versions are immutable: publish refuses to overwrite one. An alias moves only by
compare-and-swap (ETag on Azure, a lock file on disk), so of two concurrent promotions one wins and the
other raises PromotionConflict instead of silently undoing the first.

fetch() verifies every sha256 against model.json before the package appears at its destination, and
keeps verified packages in a local cache keyed by the manifest sha256 (the version's identity): a repeat
fetch of an unchanged model transfers only the manifest.

Every blob call is retried with exponential backoff on transient failures (connection refused, timeouts,
5xx), never on answers that retrying cannot change (404, 409, 412).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, TypeVar

from modelpkg.manifest import MANIFEST, REQUIRED_KEYS, ManifestError, safe_path, verify_package
from modelship.settings import Settings

log = logging.getLogger(__name__)
# Retries get their own logger so a CLI can show them while keeping routine INFO lines quiet.
retry_log = logging.getLogger(f"{__name__}.retry")

T = TypeVar("T")

# Names, versions and aliases become path segments and blob-name segments: keep them boring.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
# Options for every Azure call. Timeouts: without them a half-open connection could hang a task forever.
# retry_total=0 turns off the SDK's own retries (silent, 15 s+ backoff): retry() below logs each attempt
# and ends with a clear StoreUnavailable instead.
_PER_REQUEST: dict[str, Any] = {"retry_total": 0, "connection_timeout": 10, "read_timeout": 120}


# --- Errors -------------------------------------------------------------------------------------------


class ModelStoreError(Exception):
    """Anything the model store refuses or cannot do; the message names model, version or file."""


class ModelNotFound(ModelStoreError):
    """No such model, version or alias."""


class VersionExists(ModelStoreError):
    """The version is already published; versions are immutable."""


class PromotionConflict(ModelStoreError):
    """The alias moved between reading it and writing it (or was not where the caller expected)."""


class IntegrityError(ModelStoreError, ManifestError):
    """Stored bytes do not match their manifest (or an alias does not match its version)."""


class InvalidName(ModelStoreError, ValueError):
    """A model name, version or alias that cannot be a path segment."""


class StoreUnavailable(ModelStoreError):
    """The storage service did not answer, even after the retries."""


class _PreconditionFailed(Exception):
    """A conditional write lost: the object exists / changed (internal; mapped to a public error)."""


class _Any:
    def __repr__(self) -> str:
        return "ANY"


# promote(expected_current=ANY): do not check where the alias was (the write is still compare-and-swap).
ANY: Final = _Any()


# --- Retry --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Retry:
    """Exponential backoff: base, 2*base, 4*base ... capped at max_delay; `attempts` calls in all."""

    attempts: int = 5
    base: float = 0.5
    max_delay: float = 8.0

    def delay(self, attempt: int) -> float:
        return min(self.max_delay, self.base * 2 ** (attempt - 1))


def is_transient(exc: BaseException) -> bool:
    """True for failures a retry can fix: no connection, timeouts, throttling and 5xx."""
    from azure.core.exceptions import HttpResponseError, ServiceRequestError, ServiceResponseError

    if isinstance(exc, ServiceRequestError | ServiceResponseError | ConnectionError | TimeoutError):
        return True
    if isinstance(exc, HttpResponseError):
        status = exc.status_code or 0
        return status >= 500 or status in (408, 429)
    return False


def retry(fn: Callable[[], T], what: str, policy: Retry = Retry(), sleep: Callable[[float], None] = time.sleep) -> T:
    """Call fn until it succeeds, retrying transient failures; StoreUnavailable once attempts run out."""
    for attempt in range(1, policy.attempts + 1):
        try:
            return fn()
        except Exception as exc:
            if not is_transient(exc):
                raise
            if attempt == policy.attempts:
                reason = _first_line(exc)
                raise StoreUnavailable(
                    f"blob store unreachable after {policy.attempts} attempts while {what}: {reason}"
                ) from exc
            delay = policy.delay(attempt)
            retry_log.info(
                "blob store unreachable (attempt %d/%d), retrying in %.1fs: %s: %s",
                attempt, policy.attempts, delay, what, _first_line(exc),
            )  # fmt: skip
            sleep(delay)
    raise AssertionError("unreachable")  # the loop always returns or raises


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


# --- Helpers ------------------------------------------------------------------------------------------


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


_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2 RENAME_EXCHANGE); False where not supported."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    renameat2 = getattr(_libc, "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _replace_dir(staging: Path, dest: Path) -> None:
    """Put the finished package at dest in one step; an existing dest is swapped out, then removed."""
    if not dest.exists() and not dest.is_symlink():
        os.rename(staging, dest)
        return
    if dest.is_symlink() or not dest.is_dir():
        raise ModelStoreError(f"{dest}: exists and is not a directory; refusing to replace it")
    if _exchange(staging, dest):
        shutil.rmtree(staging)  # now holds the old contents
        return
    # No renameat2 (not Linux): move the old folder aside first; dest is briefly absent.
    aside = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".old", dir=dest.parent))
    os.rename(dest, aside / "old")
    os.rename(staging, dest)
    shutil.rmtree(aside)


def _link_or_copy(src: Path, dst: Path) -> None:
    # Hardlinks cost nothing; the package is verified after linking, so a cache file edited through a
    # hardlink is caught (and the cache entry dropped) rather than served.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


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

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


# --- The store ----------------------------------------------------------------------------------------


class ModelStore:
    """Publish, list, promote and fetch model versions. Subclasses provide the storage primitives."""

    def __init__(self, cache_dir: str | os.PathLike[str] | None = None, retry_policy: Retry = Retry()) -> None:
        # cache_dir holds verified packages as <cache_dir>/<manifest sha256>/; None disables the cache.
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
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

    # Fetch.
    def fetch(self, name: str, version_or_alias: str, dest: str | os.PathLike[str]) -> dict[str, Any]:
        """Download, verify and atomically place a package at dest; return its manifest.

        Nothing appears at dest (and no temp folder stays beside it) unless every sha256 matched.
        """
        version, manifest, raw = self._resolve(name, version_or_alias)
        sha = hashlib.sha256(raw).hexdigest()
        dest = Path(dest).absolute()
        dest.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".fetch", dir=dest.parent))
        try:
            os.chmod(staging, 0o755)  # mkdtemp makes 0700; a non-root serving user must read the model
            if not self._fill_from_cache(sha, staging):
                self._download_package(name, version, manifest, raw, staging)
                self._add_to_cache(sha, staging)
            _replace_dir(staging, dest)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        log.info("fetched model %s version %s (sha256 %s) to %s", name, version, sha, dest)
        return manifest

    def _download_package(self, name: str, version: str, manifest: dict[str, Any], raw: bytes, into: Path) -> None:
        for rel in sorted(manifest["files"]):
            try:
                target = safe_path(into, rel)
            except ManifestError as exc:
                raise IntegrityError(f"model {name} version {version}: {exc}") from exc
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                size = self._download(self._version_key(name, version, rel), target)
            except ModelNotFound:
                raise IntegrityError(
                    f"model {name} version {version}: {rel} is listed in {MANIFEST} but missing from {self}"
                ) from None
            self.stats.files_downloaded += 1
            self.stats.bytes_downloaded += size
        (into / MANIFEST).write_bytes(raw)
        try:
            verify_package(into)
        except ManifestError as exc:
            raise IntegrityError(f"model {name} version {version} in {self}: {exc}") from exc

    def _fill_from_cache(self, sha: str, into: Path) -> bool:
        if self.cache_dir is None:
            return False
        entry = self.cache_dir / sha
        if not (entry / MANIFEST).is_file():
            return False
        try:
            for src in sorted(entry.rglob("*")):
                dst = into / src.relative_to(entry)
                if src.is_dir():
                    dst.mkdir(exist_ok=True)
                else:
                    _link_or_copy(src, dst)
            verify_package(into)
            if hashlib.sha256((into / MANIFEST).read_bytes()).hexdigest() != sha:
                raise ManifestError(f"cached {MANIFEST} does not hash to {sha}")
        except (OSError, ManifestError) as exc:
            log.warning("model cache entry %s is damaged (%s); dropping it and downloading again", entry, exc)
            shutil.rmtree(entry, ignore_errors=True)
            for child in into.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
            return False
        self.stats.cache_hits += 1
        return True

    def _add_to_cache(self, sha: str, package: Path) -> None:
        # Best effort: a full disk or a racing fetch must not fail the fetch itself.
        if self.cache_dir is None:
            return
        entry = self.cache_dir / sha
        tmp: Path | None = None
        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            if entry.exists():
                return
            tmp = Path(tempfile.mkdtemp(prefix=f".{sha[:12]}.", suffix=".tmp", dir=self.cache_dir))
            for src in sorted(package.rglob("*")):
                dst = tmp / src.relative_to(package)
                if src.is_dir():
                    dst.mkdir(exist_ok=True)
                else:
                    _link_or_copy(src, dst)
            os.rename(tmp, entry)
            tmp = None
        except OSError as exc:
            log.warning("could not add model %s to the cache %s: %s", sha, self.cache_dir, exc)
        finally:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)


# --- Local folder ---------------------------------------------------------------------------------------


class LocalModelStore(ModelStore):
    """The store as a folder: for one machine, tests, and `make up` without Azure."""

    def __init__(self, root: str | os.PathLike[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = Path(root)
        if not self.root.is_absolute():
            raise ModelStoreError(f"local model store path must be absolute, got {root!r}")

    def __repr__(self) -> str:
        return f"local:{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # One lock for every conditional write: check-then-replace must not interleave between processes.
        self.root.mkdir(parents=True, exist_ok=True)
        with open(self.root / ".modelship.lock", "a") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _read(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, hashlib.sha256(data).hexdigest()  # content is the tag: records carry a timestamp

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _put_bytes(self, path: Path, data: bytes) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def _write(self, key: str, data: bytes, *, if_absent: bool = False, if_tag: str | None = None) -> None:
        path = self._path(key)
        if not if_absent and if_tag is None:
            self._put_bytes(path, data)
            return
        with self._locked():
            current = self._read(key)
            if if_absent and current is not None:
                raise _PreconditionFailed(key)
            if if_tag is not None and (current is None or current[1] != if_tag):
                raise _PreconditionFailed(key)
            self._put_bytes(path, data)

    def _upload_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(fd)
        try:
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o644)
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.stats.files_uploaded += 1
        self.stats.bytes_uploaded += target.stat().st_size

    def _download(self, key: str, path: Path) -> int:
        try:
            shutil.copyfile(self._path(key), path)
        except (FileNotFoundError, NotADirectoryError):
            raise ModelNotFound(f"{key} not found in {self}") from None
        return path.stat().st_size

    def _list(self, prefix: str) -> list[str]:
        base = self.root / prefix if prefix else self.root
        if not base.is_dir():
            return []
        keys = []
        for root, dirs, files in os.walk(base):
            dirs[:] = [d for d in dirs if not d.startswith(".")]
            for name in files:
                if not name.startswith("."):
                    keys.append((Path(root) / name).relative_to(self.root).as_posix())
        return sorted(keys)


# --- Azure Blob Storage ---------------------------------------------------------------------------------


class BlobModelStore(ModelStore):
    """The store in an Azure Blob container, through the Airflow connection `wasb_conn_id`."""

    def __init__(self, container: str, wasb_conn_id: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.container = container
        self.wasb_conn_id = wasb_conn_id
        self._client: Any = None  # ContainerClient, built on first use (never at construction or parse time)

    def __repr__(self) -> str:
        return f"wasb:{self.container} (connection {self.wasb_conn_id})"

    @property
    def container_client(self) -> Any:
        if self._client is None:
            from airflow.providers.microsoft.azure.hooks.wasb import WasbHook
            from airflow.sdk.exceptions import AirflowNotFoundException

            hook = WasbHook(wasb_conn_id=self.wasb_conn_id)
            try:
                service = hook.get_conn()
            except AirflowNotFoundException as exc:
                env = f"AIRFLOW_CONN_{self.wasb_conn_id.upper()}"
                raise ModelStoreError(
                    f"model store {self}: Airflow connection {self.wasb_conn_id!r} is not defined "
                    f"(create it in Airflow, set {env}, or point MODELSHIP_WASB_CONN_ID elsewhere)"
                ) from exc
            # Airflow masks the connection string in task logs only as a whole; the account key inside it
            # (and one given as a separate field) would show if anything logged it alone.
            account_key = getattr(getattr(service, "credential", None), "account_key", None)
            if account_key:
                from airflow.sdk.log import mask_secret

                mask_secret(account_key)
            self._client = service.get_container_client(self.container)
        return self._client

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One SDK call (with the per-request options) under our retry."""
        return self._retry(lambda: fn(*args, **_PER_REQUEST, **kwargs), what)

    def _retry(self, fn: Callable[[], T], what: str) -> T:
        return retry(fn, what, self.retry_policy, sleep=self._sleep)

    def _sleep(self, seconds: float) -> None:
        self.stats.retries += 1
        time.sleep(seconds)

    def _blob(self, key: str) -> Any:
        return self.container_client.get_blob_client(key)

    def _read(self, key: str) -> tuple[bytes, str] | None:
        from azure.core.exceptions import ResourceNotFoundError

        def read() -> tuple[bytes, str]:
            stream = self._blob(key).download_blob(**_PER_REQUEST)
            return stream.readall(), stream.properties.etag

        try:
            return self._retry(read, f"reading {key}")
        except ResourceNotFoundError:  # blob or container missing
            return None

    def _exists(self, key: str) -> bool:
        return self._call(f"checking {key}", self._blob(key).exists)

    def _prepare_for_write(self) -> None:
        from azure.core.exceptions import ResourceExistsError

        with contextlib.suppress(ResourceExistsError):
            self._call(f"creating container {self.container}", self.container_client.create_container)

    def _write(self, key: str, data: bytes, *, if_absent: bool = False, if_tag: str | None = None) -> None:
        from azure.core.exceptions import ResourceExistsError, ResourceModifiedError

        conditions: dict[str, Any] = {"overwrite": True}
        if if_absent:
            conditions = {"if_none_match": "*"}  # with overwrite=False: fails if the blob exists
        elif if_tag is not None:
            conditions = {"overwrite": True, "if_match": if_tag}
        try:
            self._call(f"writing {key}", self._blob(key).upload_blob, data, **conditions)
        except (ResourceExistsError, ResourceModifiedError) as exc:  # 409 BlobAlreadyExists / 412
            raise _PreconditionFailed(key) from exc

    def _upload_file(self, key: str, path: Path) -> None:
        def upload() -> Any:
            with open(path, "rb") as handle:  # reopened on every attempt: a retry re-sends from byte 0
                return self._blob(key).upload_blob(handle, overwrite=True, **_PER_REQUEST)

        self._retry(upload, f"uploading {key}")
        self.stats.files_uploaded += 1
        self.stats.bytes_uploaded += path.stat().st_size

    def _download(self, key: str, path: Path) -> int:
        from azure.core.exceptions import ResourceNotFoundError

        def download() -> int:
            stream = self._blob(key).download_blob(**_PER_REQUEST)
            with open(path, "wb") as handle:  # truncated on every attempt
                return stream.readinto(handle)

        try:
            return self._retry(download, f"downloading {key}")
        except ResourceNotFoundError:
            raise ModelNotFound(f"{key} not found in {self}") from None

    def _list(self, prefix: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        def names() -> list[str]:
            blobs = self.container_client.list_blobs(name_starts_with=prefix or None, **_PER_REQUEST)
            return [blob.name for blob in blobs]  # pages are fetched here, inside the retry

        try:
            return sorted(self._retry(names, f"listing {prefix or '/'}"))
        except ResourceNotFoundError:  # no container yet: nothing published
            return []


def open_store(
    settings: Settings | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    retry_policy: Retry = Retry(),
) -> ModelStore:
    """The store named by settings.model_store: "local:/abs/path" or "wasb:<container>".

    cache_dir: where verified packages are cached (default settings.cache_dir / "models").
    """
    settings = settings or Settings.get()
    cache = Path(cache_dir) if cache_dir is not None else settings.cache_dir / "models"
    scheme, _, location = settings.model_store.partition(":")
    if scheme == "local" and location:
        return LocalModelStore(location, cache_dir=cache, retry_policy=retry_policy)
    if scheme == "wasb" and location:
        return BlobModelStore(location, settings.wasb_conn_id, cache_dir=cache, retry_policy=retry_policy)
    raise ValueError(
        f"model store {settings.model_store!r} (MODELSHIP_MODEL_STORE) is not understood: "
        "use local:/absolute/path or wasb:<container>"
    )
