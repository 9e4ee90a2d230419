"""The model store in an Azure Blob container (``wasb:<container>``), through the Azure provider's WasbHook,
so Azurite and real Azure work alike. Every SDK call runs under modelship.retry's policy with the SDK's own
(silent, 15 s+) retries off, and with timeouts: a half-open connection must not hang a task forever."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from modelship import retry
from modelship.model_store.base import ModelStore
from modelship.model_store.errors import ModelNotFound, ModelStoreError, StoreUnavailable, _PreconditionFailed

T = TypeVar("T")
# Retries get their own logger so a CLI can show them while keeping routine INFO lines quiet.
retry_log = logging.getLogger("modelship.model_store.retry")
_PER_REQUEST: dict[str, Any] = {"retry_total": 0, "connection_timeout": 10, "read_timeout": 120}


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
        """fn() under the one retry policy; StoreUnavailable once its attempts are spent on an outage."""
        try:
            return retry.call(fn, f"blob store: {what}", policy=self.retry_policy, sleep=self._sleep,
                              logger=retry_log, level=logging.INFO)  # fmt: skip
        except Exception as exc:
            if not retry.is_transient(exc) or retry.no_space(exc):  # a full disk is not the store's outage
                raise
            raise StoreUnavailable(
                f"blob store unreachable after {self.retry_policy.attempts} attempts while {what}: "
                f"{retry.first_line(exc)}"
            ) from exc

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

    def _delete(self, key: str) -> None:
        from azure.core.exceptions import ResourceNotFoundError

        with contextlib.suppress(ResourceNotFoundError):  # gone already: a retry after a lost answer
            self._call(f"deleting {key}", self._blob(key).delete_blob)

    def _list(self, prefix: str) -> list[str]:
        from azure.core.exceptions import ResourceNotFoundError

        def names() -> list[str]:
            blobs = self.container_client.list_blobs(name_starts_with=prefix or None, **_PER_REQUEST)
            return [blob.name for blob in blobs]  # pages are fetched here, inside the retry

        try:
            return sorted(self._retry(names, f"listing {prefix or '/'}"))
        except ResourceNotFoundError:  # no container yet: nothing published
            return []
