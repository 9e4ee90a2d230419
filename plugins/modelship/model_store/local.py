"""The model store as a folder (``local:/abs/path``): for one machine, tests, and `make up` without Azure."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from pathlib import Path
from typing import Any

from modelpkg.atomic import atomic_path, write_atomic
from modelship.fs import locked
from modelship.model_store.base import ModelStore
from modelship.model_store.errors import ModelNotFound, ModelStoreError, _PreconditionFailed


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

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        # One lock for every conditional write: check-then-replace must not interleave between processes.
        self.root.mkdir(parents=True, exist_ok=True)
        return locked(self.root / ".modelship.lock")

    def _read(self, key: str) -> tuple[bytes, str] | None:
        try:
            data = self._path(key).read_bytes()
        except (FileNotFoundError, NotADirectoryError):
            return None
        return data, hashlib.sha256(data).hexdigest()  # content is the tag: records carry a timestamp

    def _exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def _write(self, key: str, data: bytes, *, if_absent: bool = False, if_tag: str | None = None) -> None:
        path = self._path(key)
        if not if_absent and if_tag is None:
            write_atomic(path, data)
            return
        with self._locked():
            current = self._read(key)
            if if_absent and current is not None:
                raise _PreconditionFailed(key)
            if if_tag is not None and (current is None or current[1] != if_tag):
                raise _PreconditionFailed(key)
            write_atomic(path, data)

    def _upload_file(self, key: str, path: Path) -> None:
        target = self._path(key)
        with atomic_path(target) as tmp:
            shutil.copyfile(path, tmp)
        self.stats.files_uploaded += 1
        self.stats.bytes_uploaded += target.stat().st_size

    def _download(self, key: str, path: Path) -> int:
        try:
            shutil.copyfile(self._path(key), path)
        except (FileNotFoundError, NotADirectoryError):
            raise ModelNotFound(f"{key} not found in {self}") from None
        return path.stat().st_size

    def _delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def _forget(self, prefix: str) -> None:
        # Hidden leftovers (a publish's staging files) and the empty folders: the version's folder goes whole.
        folder = self._path(prefix.rstrip("/"))
        if folder.is_dir() and folder.resolve().is_relative_to(self.root.resolve()):
            shutil.rmtree(folder, ignore_errors=True)

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
