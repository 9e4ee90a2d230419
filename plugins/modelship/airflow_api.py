"""Airflow's REST API, through the official client (apache-airflow-client): the one way modelship talks
to a running Airflow from outside a task.

Used by `modelship history` / `status` / `image quarantined|release-quarantine` (deployment records and
quarantines are Asset events in Airflow's metadata), the Airflow UI page's actions (as the logged-in user),
`make demo`, the README screenshots, the benchmarks and the tests against a real Airflow.

Every request has a timeout; a request that may be sent twice (GET and the other idempotent methods) rides out
a short outage — a 5xx while the API server's database restarts, a refused connection — with backoff, for
`patience` seconds. A POST is sent again only when its connection failed (it never reached Airflow).

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
from collections.abc import Collection, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import urllib3
from airflow_client.client import ApiClient, Configuration
from airflow_client.client.api.asset_api import AssetApi
from airflow_client.client.api.dag_api import DAGApi
from airflow_client.client.api.dag_run_api import DagRunApi
from airflow_client.client.api.import_error_api import ImportErrorApi
from airflow_client.client.api.task_instance_api import TaskInstanceApi
from airflow_client.client.api.x_com_api import XComApi
from airflow_client.client.exceptions import ApiException, NotFoundException
from airflow_client.client.models.asset_event_response import AssetEventResponse
from airflow_client.client.models.create_asset_events_body import CreateAssetEventsBody
from airflow_client.client.models.dag_patch_body import DAGPatchBody
from airflow_client.client.models.dag_response import DAGResponse
from airflow_client.client.models.dag_run_response import DAGRunResponse
from airflow_client.client.models.import_error_response import ImportErrorResponse
from airflow_client.client.models.task_instance_response import TaskInstanceResponse
from airflow_client.client.models.trigger_dag_run_post_body import TriggerDAGRunPostBody

DEFAULT_URL = "http://127.0.0.1:8080"
PASSWORDS_FILE = "simple_auth_manager_passwords.json.generated"  # the simple auth manager writes it in AIRFLOW_HOME
FINISHED = ("success", "failed")
TIMEOUT = 30.0  # seconds, each request
PATIENCE = 10.0  # seconds of backing off before an outage counts as an error (a CLI user is waiting)
BACKOFF = 0.5  # urllib3 sleeps 0, 1, 2, 4, 8, 8, … s between tries (BACKOFF * 2**(n-1), capped)
BACKOFF_MAX = 8.0


class AirflowAPIError(RuntimeError):
    """A call to Airflow's REST API failed; the message names the call and Airflow's answer."""


def retry_policy(patience: float, methods: Collection[str] = urllib3.Retry.DEFAULT_ALLOWED_METHODS) -> urllib3.Retry:
    """Retries of `methods` on a 5xx or a broken connection, as many as fit in `patience` seconds of backing
    off. Any method is retried when its connection could not be opened: nothing was sent."""
    tries, slept = 0, 0.0
    while slept + (pause := 0.0 if tries == 0 else min(BACKOFF_MAX, BACKOFF * 2**tries)) <= patience:
        tries, slept = tries + 1, slept + pause
    return urllib3.Retry(
        total=tries,
        backoff_factor=BACKOFF,
        backoff_max=BACKOFF_MAX,
        status_forcelist=(500, 502, 503, 504),
        allowed_methods=frozenset(methods),
        raise_on_status=False,  # the last answer stands, so the error names Airflow's status, not "max retries"
    )


def login(url: str, username: str, password: str, timeout: float = TIMEOUT, patience: float = PATIENCE) -> str:
    """A JWT for `username` from the auth manager's token endpoint (POST /auth/token; not in the client)."""
    try:
        response = urllib3.PoolManager().request(  # urllib3 reads no proxy from the environment
            "POST",
            f"{url.rstrip('/')}/auth/token",
            body=json.dumps({"username": username, "password": password}),
            headers={"Content-Type": "application/json"},
            timeout=timeout,
            retries=retry_policy(patience, methods={"POST"}),  # asking for a token twice creates nothing
        )
    except urllib3.exceptions.HTTPError as exc:
        raise AirflowAPIError(f"POST {url}/auth/token: Airflow unreachable: {exc}") from None
    if response.status not in (200, 201):
        raise AirflowAPIError(f"POST {url}/auth/token as {username!r}: HTTP {response.status}")
    return json.loads(response.data)["access_token"]


def password_from_file(path: Path, user: str) -> str:
    """`user`'s password from the simple auth manager's JSON file of generated passwords."""
    try:
        password = json.loads(path.read_text()).get(user)
    except (OSError, ValueError) as exc:
        raise AirflowAPIError(f"cannot read the password of {user!r} from {path}: {exc}") from None
    if not password:
        raise AirflowAPIError(f"{path} holds no password for {user!r}")
    return password


def healthy(url: str, timeout: float = 3) -> bool:
    """Whether the API server at `url` answers its health check (no login needed); one try, for polling."""
    try:
        response = urllib3.PoolManager().request(
            "GET", f"{url.rstrip('/')}/api/v2/monitor/health", timeout=timeout, retries=False
        )
    except urllib3.exceptions.HTTPError:
        return False
    return response.status == 200


class AirflowAPI:
    """A logged-in client: typed calls for what modelship asks of Airflow."""

    def __init__(self, url: str, token: str, *, patience: float = PATIENCE, timeout: float = TIMEOUT) -> None:
        self.url = url.rstrip("/")
        self.token = token  # also what the UI takes (the `_token` cookie, a Bearer header on /ui/*)
        self.timeout = timeout
        # PATCH too: the only patch sent sets is_paused, the same answer however often (a fresh stack's SQLite can
        # answer 500 "database is locked" while the scheduler writes).
        idempotent = urllib3.Retry.DEFAULT_ALLOWED_METHODS | {"PATCH"}
        self.client = ApiClient(
            Configuration(host=self.url, access_token=token, retries=retry_policy(patience, idempotent))
        )
        self._dag_api = DAGApi(self.client)
        self._run_api = DagRunApi(self.client)
        self._task_api = TaskInstanceApi(self.client)
        self._xcom_api = XComApi(self.client)
        self._asset_api = AssetApi(self.client)
        self._import_error_api = ImportErrorApi(self.client)
        self._asset_ids: dict[str, int] = {}

    @classmethod
    def login(cls, url: str, username: str, password: str, *, patience: float = PATIENCE) -> AirflowAPI:
        return cls(url, login(url, username, password, patience=patience), patience=patience)

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
            password = password_from_file(Path(env["MODELSHIP_AIRFLOW_PASSWORD_FILE"]), user)
        if not password:
            raise AirflowAPIError(
                "no credentials for Airflow's REST API: set MODELSHIP_AIRFLOW_TOKEN, or MODELSHIP_AIRFLOW_USER and "
                "MODELSHIP_AIRFLOW_PASSWORD (or _PASSWORD_FILE); `make up` writes them into .state/modelship.env"
            )
        return cls.login(url, user, password)

    def close(self) -> None:
        self.client.rest_client.pool_manager.clear()  # (the generated ApiClient has no close of its own)

    def __enter__(self) -> AirflowAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- DAGs and runs ---------------------------------------------------------------------------------

    def dags(self, limit: int = 100) -> list[DAGResponse]:
        return list(self._call("list DAGs", self._dag_api.get_dags, limit=limit).dags)

    def import_errors(self) -> list[ImportErrorResponse]:
        """The DAG files the dag-processor could not import, with their tracebacks."""
        return list(self._call("list import errors", self._import_error_api.get_import_errors).import_errors)

    def wait_for_dags(self, dag_ids: Iterable[str], timeout: float = 180, interval: float = 1.0) -> None:
        """Until the dag-processor has parsed every one of `dag_ids` (before that, Airflow has not heard of it)."""
        deadline = time.monotonic() + timeout
        for dag_id in dag_ids:
            while not self._known(dag_id):
                if time.monotonic() >= deadline:
                    raise AirflowAPIError(f"DAG {dag_id} not parsed within {timeout:.0f}s (see the dag-processor log)")
                time.sleep(interval)

    def unpause(self, dag_id: str) -> None:
        self._call(f"unpause {dag_id}", self._dag_api.patch_dag, dag_id, DAGPatchBody(is_paused=False))

    def trigger(self, dag_id: str, conf: dict[str, Any] | None = None, note: str | None = None) -> str:
        """Start a run now; its run id."""
        body = TriggerDAGRunPostBody(conf=conf or {}, note=note)
        run = self._call(f"trigger {dag_id}", self._run_api.trigger_dag_run, dag_id, body)
        return run.dag_run_id

    def run(self, dag_id: str, run_id: str) -> DAGRunResponse:
        return self._call(f"read {dag_id} run {run_id}", self._run_api.get_dag_run, dag_id, run_id)

    def runs(self, dag_id: str, limit: int = 20, state: str | None = None) -> list[DAGRunResponse]:
        """The newest runs first (only those in `state`, if given)."""
        found = self._call(f"list {dag_id} runs", self._run_api.get_dag_runs, dag_id, limit=limit,
                           order_by=["-run_after"], state=[state] if state else None)  # fmt: skip
        return list(found.dag_runs)

    def wait(self, dag_id: str, run_id: str, timeout: float = 900, interval: float = 2.0) -> DAGRunResponse:
        """Poll until the run has finished (success or failed); AirflowAPIError past the timeout."""
        return self.wait_all([(dag_id, run_id)], timeout, interval)[dag_id, run_id]

    def wait_all(
        self, runs: Iterable[tuple[str, str]], timeout: float = 900, interval: float = 2.0
    ) -> dict[tuple[str, str], DAGRunResponse]:
        """Poll until every (dag_id, run_id) has finished: the runs as they ended. Past the timeout,
        AirflowAPIError names each unfinished run with its tasks' states."""
        deadline = time.monotonic() + timeout
        pending, ended = list(runs), {}
        while True:
            for key in list(pending):
                run = self.run(*key)
                if _state(run.state) in FINISHED:
                    ended[key] = run
                    pending.remove(key)
            if not pending:
                return ended
            if time.monotonic() >= deadline:
                unfinished = "; ".join(f"{d} run {r}: {self.task_states(d, r)}" for d, r in pending)
                raise AirflowAPIError(f"did not finish within {timeout:.0f}s: {unfinished}")
            time.sleep(interval)

    def wait_for_new_run(self, dag_id: str, known: Iterable[str], timeout: float = 180, interval: float = 2.0) -> str:
        """The id of the oldest run of `dag_id` not in `known`: one that an Asset event or a watcher started."""
        known = set(known)
        deadline = time.monotonic() + timeout
        while True:
            new = [run.dag_run_id for run in self.runs(dag_id) if run.dag_run_id not in known]
            if new:
                return new[-1]  # runs() lists the newest first
            if time.monotonic() >= deadline:
                raise AirflowAPIError(f"no new {dag_id} run started within {timeout:.0f}s")
            time.sleep(interval)

    def tasks(self, dag_id: str, run_id: str) -> list[TaskInstanceResponse]:
        found = self._call(f"list task instances of {dag_id} {run_id}", self._task_api.get_task_instances,
                           dag_id, run_id)  # fmt: skip
        return list(found.task_instances)

    def task_states(self, dag_id: str, run_id: str) -> dict[str, str]:
        return {ti.task_id: _state(ti.state) for ti in self.tasks(dag_id, run_id)}

    def return_value(self, dag_id: str, run_id: str, task_id: str) -> Any:
        """What a task returned (None: nothing, skipped, or not run)."""
        try:
            entry = self._xcom_api.get_xcom_entry(dag_id, task_id, run_id, "return_value", deserialize=True,
                                             stringify=False, _request_timeout=self.timeout)  # fmt: skip
        except NotFoundException:
            return None
        except ApiException as exc:
            raise AirflowAPIError(f"read {dag_id} {run_id} {task_id} return value: {_reason(exc)}") from None
        value = getattr(entry.actual_instance, "value", None) if hasattr(entry, "actual_instance") else entry.value
        return value

    def log_tail(self, dag_id: str, run_id: str, task_id: str, try_number: int, lines: int = 15) -> str:
        try:
            content = self._task_api.get_log(dag_id, run_id, task_id, try_number, full_content=True,
                                                  _request_timeout=self.timeout)  # fmt: skip
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
            found = self._call(f"look up asset {name}", self._asset_api.get_assets, name_pattern=name, limit=100)
            exact = [a.id for a in found.assets if a.name == name]
            if not exact:
                raise AirflowAPIError(f"Airflow has no asset named {name!r} (are the modelship DAGs deployed?)")
            self._asset_ids[name] = exact[0]
        return self._asset_ids[name]

    def asset_events(
        self, name: str, *, since: datetime | None = None, run: tuple[str, str] | None = None, page: int = 100
    ) -> Iterator[AssetEventResponse]:
        """Every event of the asset `name`, oldest first: .extra, .timestamp, .source_dag_id, .source_run_id…
        Only those since `since`, and only those the run `run` = (dag_id, run_id) emitted, if given."""
        asset_id = self.asset_id(name)
        dag_id, run_id = run or (None, None)
        offset = 0
        while True:
            found = self._call(
                f"list {name} events",
                self._asset_api.get_asset_events,
                asset_id=asset_id,
                order_by=["timestamp"],
                limit=page,
                offset=offset,
                timestamp_gte=since,
                source_dag_id=dag_id,
                source_run_id=run_id,
            )
            yield from found.asset_events
            offset += len(found.asset_events)
            if not found.asset_events or offset >= found.total_entries:
                return

    def create_asset_event(self, name: str, extra: dict[str, Any]) -> Any:
        """Record an event of asset `name` as the logged-in user (Airflow's permissions decide)."""
        body = CreateAssetEventsBody(asset_id=self.asset_id(name), extra=extra)
        return self._call(f"create a {name} event", self._asset_api.create_asset_event, body)

    # -- plumbing ----------------------------------------------------------------------------------------

    def _known(self, dag_id: str) -> bool:
        try:
            self._dag_api.get_dag(dag_id, _request_timeout=self.timeout)
        except NotFoundException:
            return False
        except (ApiException, urllib3.exceptions.HTTPError) as exc:
            raise AirflowAPIError(f"read DAG {dag_id}: {exc}") from None
        return True

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except ApiException as exc:
            raise AirflowAPIError(f"{what}: {_reason(exc)}") from None
        except urllib3.exceptions.HTTPError as exc:
            raise AirflowAPIError(f"{what}: Airflow at {self.url} unreachable: {exc}") from None


def _state(value: Any) -> str:
    return str(getattr(value, "value", value))


def _reason(exc: ApiException) -> str:
    body = (exc.body or "")[:300] if isinstance(exc.body, str) else ""
    return f"HTTP {exc.status} {exc.reason or ''} {body}".strip()
