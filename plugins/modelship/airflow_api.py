"""Airflow's REST API, through the official client (apache-airflow-client): the one way modelship talks
to a running Airflow from outside a task.

Used by `modelship history` / `status` / `image quarantined|release-quarantine` (deployment records and
quarantines are Asset events in Airflow's metadata), the Airflow UI page's actions (as the logged-in user),
`make demo`, the benchmarks and the tests against a real Airflow.

Credentials, from the environment (`make up` writes them into .state/modelship.env):
``MODELSHIP_AIRFLOW_URL`` (default http://127.0.0.1:8080) and either ``MODELSHIP_AIRFLOW_TOKEN`` (a JWT,
e.g. from your auth manager) or ``MODELSHIP_AIRFLOW_USER`` + ``MODELSHIP_AIRFLOW_PASSWORD`` /
``MODELSHIP_AIRFLOW_PASSWORD_FILE`` (the simple auth manager's JSON file of passwords), exchanged for a token
at POST /auth/token.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from airflow_client.client import ApiClient, Configuration
from airflow_client.client.api.asset_api import AssetApi
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.api.x_com_api import XComApi
from airflow_client.client.exceptions import ApiException, NotFoundException
from airflow_client.client.models.create_asset_events_body import CreateAssetEventsBody
from airflow_client.client.models.dag_patch_body import DAGPatchBody
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

DEFAULT_URL = "http://127.0.0.1:8080"
FINISHED = ("success", "failed")


class AirflowAPIError(RuntimeError):
    """A call to Airflow's REST API failed; the message names the call and Airflow's answer."""


def login(url: str, username: str, password: str, timeout: float = 30) -> str:
    """A JWT for `username` from the auth manager's token endpoint (POST /auth/token; not in the client)."""
    response = urllib3.PoolManager().request(  # urllib3 reads no proxy from the environment
        "POST",
        f"{url.rstrip('/')}/auth/token",
        body=json.dumps({"username": username, "password": password}),
        headers={"Content-Type": "application/json"},
        timeout=timeout,
        retries=urllib3.Retry(total=4, backoff_factor=0.5, allowed_methods=None, status_forcelist=(502, 503, 504)),
    )
    if response.status not in (200, 201):
        raise AirflowAPIError(f"POST {url}/auth/token as {username!r}: HTTP {response.status}")
    return json.loads(response.data)["access_token"]


class AirflowAPI:
    """A logged-in client: typed calls for what modelship asks of Airflow."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.client = ApiClient(Configuration(host=self.url, access_token=token))
        self.dags = DAGApi(self.client)
        self.dag_runs = DagRunApi(self.client)
        self.task_instances = TaskInstanceApi(self.client)
        self.xcom = XComApi(self.client)
        self.assets = AssetApi(self.client)
        self._asset_ids: dict[str, int] = {}

    @classmethod
    def login(cls, url: str, username: str, password: str) -> AirflowAPI:
        return cls(url, login(url, username, password))

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> AirflowAPI:
        """From MODELSHIP_AIRFLOW_* (see the module docstring); AirflowAPIError says what is missing."""
        env = os.environ if environ is None else environ
        url = env.get("MODELSHIP_AIRFLOW_URL") or DEFAULT_URL
        if env.get("MODELSHIP_AIRFLOW_TOKEN"):
            return cls(url, env["MODELSHIP_AIRFLOW_TOKEN"])
        user = env.get("MODELSHIP_AIRFLOW_USER") or "admin"
        password = env.get("MODELSHIP_AIRFLOW_PASSWORD")
        if not password and env.get("MODELSHIP_AIRFLOW_PASSWORD_FILE"):
            path = Path(env["MODELSHIP_AIRFLOW_PASSWORD_FILE"])
            try:
                password = json.loads(path.read_text()).get(user)
            except (OSError, ValueError) as exc:
                raise AirflowAPIError(f"cannot read the password of {user!r} from {path}: {exc}") from None
        if not password:
            raise AirflowAPIError(
                "no credentials for Airflow's REST API: set MODELSHIP_AIRFLOW_TOKEN, or MODELSHIP_AIRFLOW_USER and "
                "MODELSHIP_AIRFLOW_PASSWORD (or _PASSWORD_FILE); `make up` writes them into .state/modelship.env"
            )
        return cls.login(url, user, password)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> AirflowAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- DAGs and runs ---------------------------------------------------------------------------------

    def unpause(self, dag_id: str) -> None:
        self._call(f"unpause {dag_id}", self.dags.patch_dag, dag_id, DAGPatchBody(is_paused=False))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, note: str | None = None) -> str:
        """Start a run now; its run id."""
        body = TriggerDAGRunPostBody(conf=conf or {}, note=note)
        run = self._call(f"trigger {dag_id}", self.dag_runs.trigger_dag_run, dag_id, body)
        return run.dag_run_id

    def run(self, dag_id: str, run_id: str) -> Any:
        return self._call(f"read {dag_id} run {run_id}", self.dag_runs.get_dag_run, dag_id, run_id)

    def runs(self, dag_id: str, limit: int = 20) -> list[Any]:
        """The newest runs first."""
        found = self._call(f"list {dag_id} runs", self.dag_runs.get_dag_runs, dag_id, limit=limit,
                           order_by=["-run_after"])  # fmt: skip
        return list(found.dag_runs)

    def wait(self, dag_id: str, run_id: str, timeout: float = 900, interval: float = 2.0) -> Any:
        """Poll until the run has finished (success or failed); AirflowAPIError past the timeout."""
        deadline = time.monotonic() + timeout
        while True:
            run = self.run(dag_id, run_id)
            if _state(run.state) in FINISHED:
                return run
            if time.monotonic() >= deadline:
                state = _state(run.state)
                raise AirflowAPIError(f"{dag_id} run {run_id} did not finish within {timeout:.0f}s ({state})")
            time.sleep(interval)

    def tasks(self, dag_id: str, run_id: str) -> list[Any]:
        found = self._call(f"list task instances of {dag_id} {run_id}", self.task_instances.get_task_instances,
                           dag_id, run_id)  # fmt: skip
        return list(found.task_instances)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {ti.task_id: _state(ti.state) for ti in self.tasks(dag_id, run_id)}

    def return_value(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """What a task returned (None: nothing, skipped, or not run)."""
        try:
            entry = self.xcom.get_xcom_entry(dag_id, task_id, run_id, "return_value", deserialize=True,
                                             stringify=False)  # fmt: skip
        except NotFoundException:
            return None
        except ApiException as exc:
            raise AirflowAPIError(f"read {dag_id} {run_id} {task_id} return value: {_reason(exc)}") from None
        value = getattr(entry.actual_instance, "value", None) if hasattr(entry, "actual_instance") else entry.value
        return value

    def log_tail(self, dag_id: str, run_id: str, task_id: str, try_number: int, lines: int = 15) -> str:
        try:
            content = self.task_instances.get_log(dag_id, run_id, task_id, try_number, full_content=True)
        except ApiException as exc:
            return f"(log unavailable: {_reason(exc)})"
        events = getattr(content, "content", content)
        if isinstance(events, list):
            text = "\n".join(getattr(e, "event", None) or str(e) for e in events)
        else:
            text = str(events)
        return "\n".join(text.splitlines()[-lines:])

    # -- Assets ------------------------------------------------------------------------------------------

    def asset_id(self, name: str) -> int:
        if name not in self._asset_ids:
            found = self._call(f"look up asset {name}", self.assets.get_assets, name_pattern=name, limit=100)
            exact = [a.id for a in found.assets if a.name == name]
            if not exact:
                raise AirflowAPIError(f"Airflow has no asset named {name!r} (are the modelship DAGs deployed?)")
            self._asset_ids[name] = exact[0]
        return self._asset_ids[name]

    def asset_events(self, name: str, *, since: datetime | None = None, page: int = 100) -> Iterator[Any]:
        """Every event of the asset `name`, oldest first: .extra, .timestamp, .source_dag_id, .source_run_id…"""
        asset_id = self.asset_id(name)
        offset = 0
        while True:
            found = self._call(
                f"list {name} events",
                self.assets.get_asset_events,
                asset_id=asset_id,
                order_by=["timestamp"],
                limit=page,
                offset=offset,
                timestamp_gte=since,
            )
            yield from found.asset_events
            offset += len(found.asset_events)
            if not found.asset_events or offset >= found.total_entries:
                return

    def create_asset_event(self, name: str, extra: dict[str, Any]) -> Any:
        """Record an event of asset `name` as the logged-in user (Airflow's permissions decide)."""
        body = CreateAssetEventsBody(asset_id=self.asset_id(name), extra=extra)
        return self._call(f"create a {name} event", self.assets.create_asset_event, body)

    # -- plumbing ----------------------------------------------------------------------------------------

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ApiException as exc:
            raise AirflowAPIError(f"{what}: {_reason(exc)}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise AirflowAPIError(f"{what}: Airflow at {self.url} unreachable: {exc}") from None


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def _reason(exc: ApiException) -> str:
    body = (exc.body or "")[:300] if isinstance(exc.body, str) else ""
    return f"HTTP {exc.status} {exc.reason or ''} {body}".strip()
