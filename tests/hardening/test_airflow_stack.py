"""A real Airflow deployment — scheduler, dag-processor and api-server, LocalExecutor, as `make up` runs
them — in a private AIRFLOW_HOME on a free loopback port, with the session's Azurite, registry and Docker
engine behind its connections. `dag.test()` cannot prove what this module proves: it runs tasks one at a
time, in-process, writes no task log files and masks nothing.

- Access: the REST API, the UI's API and the execution API refuse requests without a token; the
  no-credential login routes are closed; a token from POST /auth/token opens the REST API and the UI.
- Secrets: a task that logs connection secrets the careless way gets them masked in its log *file*; after
  real ci and release runs, no log under AIRFLOW_HOME holds the registry password or the storage key, and
  neither does an image the ci pipeline built. The admin password file is owner-only and the password never
  printed; no process's command line (what `ps` shows every user) held a password while all this ran.
- Concurrency: two ci runs (two commits) and a release triggered at once through the REST API leave one
  tag per commit whose labels name that commit, `image` events whose digests are the registry's, and a
  `deployment` event naming a digest the registry has.
"""

from __future__ import annotations

import base64
import json
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

import devstack
from devstack import components, rootfs
from modelpkg.manifest import manifest_sha256
from modelship import images, net
from modelship.airflow_api import AirflowAPI
from modelship.lineage import LABEL_MODEL_SHA256, LABEL_MODEL_VERSION, LABEL_REVISION
from modelship.registry import RegistryClient
from tests.e2e.pipeline import REPO
from tests.hardening.support import AirflowStack, image_leaks, leaks, quick_commits
from tests.plugins.deploy_fixtures import Standin, build_standin
from tests.pswatch import Sightings, shown_by_ps

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]

REPOSITORY = "modelship/digits-app"
PROBE_DAG = '''\
"""hardening_secrets_probe: logs connection secrets the careless way, so a test can see them masked."""
import logging

import pendulum
from airflow.sdk import BaseHook, dag, task


@dag(dag_id="hardening_secrets_probe", schedule=None, start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
     catchup=False, tags=["hardening"])
def hardening_secrets_probe():
    @task
    def leak():
        from modelship.model_store import BlobModelStore

        BlobModelStore("probe", "modelship_blob").container_client  # opened as fetch_model opens it
        registry = BaseHook.get_connection("modelship_registry")
        blob = BaseHook.get_connection("modelship_blob")
        connection_string = blob.extra_dejson["connection_string"]
        account_key = dict(p.split("=", 1) for p in connection_string.split(";") if p)["AccountKey"]
        log = logging.getLogger("probe")
        log.info("registry password: %s", registry.password)
        log.info("registry uri: %s", registry.get_uri())
        log.info("blob extra: %s", blob.extra_dejson)
        log.info("account key: %s", account_key)
        print("printed:", registry.password, account_key)

    leak()


hardening_secrets_probe()
'''


@dataclass
class World:
    stack: AirflowStack
    commits: tuple[str, str]
    standin: Standin
    standin_digest: str
    model_sha256: str
    deploy_port: int
    registry: components.Registry
    ps: Sightings  # command lines holding a password, sampled from before the start until the module ends


@pytest.fixture(scope="module")
def world(
    tmp_path_factory: pytest.TempPathFactory,
    registry: components.Registry,
    azurite: components.Azurite,
    docker_engine: components.DockerEngine,
    docker_client,
    hardening_model: Path,
) -> Iterator[World]:
    from modelship.model_store import BlobModelStore

    root = tmp_path_factory.mktemp("airflow-stack")
    commits = tuple(quick_commits(root / "src", 2))
    container = f"stack-{uuid.uuid4().hex[:12]}"
    connections = components.airflow_connections(
        {"modelship_blob": azurite.connection, "modelship_registry": registry.connection}
    )
    with pytest.MonkeyPatch.context() as patch:
        for key, value in connections.items():
            patch.setenv(key, value)
        store = BlobModelStore(container, "modelship_blob")
        store.publish(hardening_model)
        store.promote("digits", "v1")
        # What the release deploys while the two ci runs build: an image already in the registry.
        standin = build_standin(docker_client, "modelship-hardening/standin:release", "hardening-release")
        digest = images.push_image(docker_client, standin.id, REPOSITORY, "standin-release",
                                   registry_conn="modelship_registry").digest  # fmt: skip
    deploy_port = net.free_port()
    env = {
        **connections,
        "MODELSHIP_STATE": str(root / "state"),
        "MODELSHIP_CACHE": str(devstack.CACHE_DIR),  # wheelhouse and app test venv, shared with e2e
        "MODELSHIP_MODEL_STORE": f"wasb:{container}",
        "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
        "MODELSHIP_DOCKER_HOST": docker_engine.url,
        "DOCKER_HOST": docker_engine.url,
        "MODELSHIP_SOURCE_REPO": str(root / "src"),
        "MODELSHIP_DOCKER_DEPLOY_PORT": str(deploy_port),
    }
    probe = root / "hardening_secrets_probe.py"
    probe.write_text(PROBE_DAG)
    stack = AirflowStack(root, [REPO / "dags" / "ci.py", REPO / "dags" / "release.py", probe], env)
    passwords = [registry.password, components.AZURITE_KEY]
    try:
        # Every 20 ms for the whole module (short-lived commands are proven one by one elsewhere, e.g.
        # test_source_credentials.py); the admin password joins the list once the stack has written it.
        with shown_by_ps(passwords, interval=0.02) as ps:
            stack.start(["ci", "release", "hardening_secrets_probe"])
            admin = stack.home / "simple_auth_manager_passwords.json.generated"
            passwords.append(json.loads(admin.read_text())["admin"])
            yield World(stack, commits, standin, digest, manifest_sha256(hardening_model), deploy_port, registry, ps)
    finally:
        stack.stop()
        for leftover in docker_client.containers.list(all=True, filters={"label": f"io.modelship.port={deploy_port}"}):
            leftover.remove(force=True)


@pytest.fixture(scope="module")
def client(world: World) -> Iterator[AirflowAPI]:
    with world.stack.client() as client:
        yield client


def credentials(registry: components.Registry) -> dict[str, bytes]:
    return {
        "registry password": registry.password.encode(),
        "registry auth (base64 user:password)": base64.b64encode(f"{registry.username}:{registry.password}".encode()),
        "storage account key": components.AZURITE_KEY.encode(),
    }


# --- access ----------------------------------------------------------------------------------------------


def anonymous() -> requests.Session:
    session = requests.Session()
    session.trust_env = False
    return session


def test_the_rest_api_refuses_requests_without_a_valid_token(world: World) -> None:
    base, session = world.stack.base, anonymous()
    assert session.get(f"{base}/api/v2/dags", timeout=10).status_code == 401
    assert session.get(f"{base}/api/v2/connections", timeout=10).status_code == 401
    trigger = session.post(f"{base}/api/v2/dags/ci/dagRuns", json={"logical_date": None, "conf": {}}, timeout=10)
    assert trigger.status_code == 401
    forged = {"Authorization": "Bearer " + ".".join(["eyJhbGciOiJIUzUxMiJ9", "eyJzdWIiOiIxIn0", "c2lnbmF0dXJl"])}
    assert session.get(f"{base}/api/v2/dags", headers=forged, timeout=10).status_code == 403  # bad signature
    wrong = session.post(f"{base}/auth/token", json={"username": "admin", "password": "not-it"}, timeout=10)
    assert wrong.status_code == 401
    # The no-credential routes of the simple auth manager stay closed (all_admins is off).
    assert session.get(f"{base}/auth/token", timeout=10).status_code == 403
    assert session.get(f"{base}/auth/token/login", timeout=10, allow_redirects=False).status_code == 403


def test_a_token_from_the_login_opens_the_rest_api(world: World, client: AirflowAPI) -> None:
    dag_ids = {dag.dag_id for dag in client.dags()}
    assert {"ci", "release"} <= dag_ids


def test_the_ui_shows_nothing_before_login(world: World, client: AirflowAPI) -> None:
    base, session = world.stack.base, anonymous()
    logged_in = {"Authorization": f"Bearer {client.token}"}
    # The page itself is a static shell; everything it shows comes from /ui/*, which wants the login's token.
    for path in ("/ui/config", "/ui/dags"):
        assert session.get(f"{base}{path}", timeout=10).status_code == 401, path
        assert session.get(f"{base}{path}", headers=logged_in, timeout=10).status_code == 200, path
    assert "<html" in session.get(f"{base}/auth/login", timeout=10).text  # where the UI sends a visitor


def test_the_execution_api_wants_a_task_token(world: World) -> None:
    # What task processes use to read connections and report state: never open to anyone on the host.
    base, session = world.stack.base, anonymous()
    # (Generous timeouts: the api-server builds the execution API's versioned app on its first request.)
    assert session.get(f"{base}/execution/connections/modelship_registry", timeout=60).status_code == 401
    state = f"{base}/execution/task-instances/{uuid.uuid4()}/state"
    assert session.patch(state, json={"state": "success"}, timeout=60).status_code == 401


# --- concurrency ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def concurrent_runs(world: World, client: AirflowAPI) -> dict[str, str]:
    """ci for commit A, ci for commit B and a release, triggered back to back; waits for all three."""
    first, second = world.commits
    standin_ref = f"{world.registry.address}/{REPOSITORY}:standin-release"
    runs = {
        "ci-a": ("ci", client.trigger("ci", {"commit": first})),
        "ci-b": ("ci", client.trigger("ci", {"commit": second})),
        "release": ("release", client.trigger("release", {"target": "docker", "image": standin_ref})),
    }
    ended = client.wait_all(runs.values(), timeout=1200)
    failed = {name: client.task_states(*run) for name, run in runs.items() if ended[run].state != "success"}
    assert not failed, failed
    return {name: run_id for name, (_, run_id) in runs.items()}


def test_two_ci_runs_and_a_release_at_once_leave_consistent_tags_and_events(
    world: World, client: AirflowAPI, concurrent_runs: dict[str, str]
) -> None:
    registry = RegistryClient(world.registry.address, world.registry.username, world.registry.password)
    try:
        for name, commit in zip(("ci-a", "ci-b"), world.commits, strict=True):
            tag = f"{commit[:12]}-v1"
            digest = registry.digest(REPOSITORY, tag)
            assert digest, (tag, registry.tags(REPOSITORY))
            labels = registry.labels(REPOSITORY, digest)
            assert labels[LABEL_REVISION] == commit  # each tag holds its own commit, not the other run's
            assert labels[LABEL_MODEL_VERSION] == "v1" and labels[LABEL_MODEL_SHA256] == world.model_sha256
            [event] = [e.extra for e in client.asset_events("image", run=("ci", concurrent_runs[name]))]
            assert event["commit"] == commit and event["tag"] == tag
            assert event["digest"] == digest  # the event points at exactly what the registry serves
            assert event["repository"] == f"{world.registry.address}/{REPOSITORY}"
        [deployment] = [e.extra for e in client.asset_events("deployment", run=("release", concurrent_runs["release"]))]
        assert deployment["image_digest"] == world.standin_digest
        assert registry.exists(REPOSITORY, deployment["image_digest"])
        assert deployment["commit"] == world.standin.commit and deployment["target"] == "docker"
    finally:
        registry.close()
    with requests.get(f"http://127.0.0.1:{world.deploy_port}/version", timeout=10) as serving:
        assert serving.json()["commit"] == world.standin.commit


def test_no_log_of_those_runs_holds_a_credential(world: World, concurrent_runs: dict[str, str]) -> None:
    # Task logs (masked by Airflow), and the components' own output: the scheduler's holds an unmasked copy
    # of every task log line (LocalExecutor), so a credential a step printed would show there first.
    logs = list((world.stack.home / "logs").rglob("*.log")) + list(world.stack.home.glob("airflow-*.log"))
    tasks = {p.parent.name for p in logs if p.parent.name.startswith("task_id=")}
    # The runs did use both connections: resolve/push (registry), fetch_model (blob), deploy (registry).
    assert {"task_id=resolve", "task_id=fetch_model", "task_id=push", "task_id=deploy"} <= tasks, tasks
    found = {str(p.relative_to(world.stack.home)): leaks([p.read_bytes()], credentials(world.registry)) for p in logs}
    assert {path: names for path, names in found.items() if names} == {}


def test_an_image_the_ci_pipeline_built_holds_no_credential(world: World, docker_client, concurrent_runs) -> None:
    tag = f"{world.commits[0][:12]}-v1"
    image = docker_client.images.get(f"{world.registry.address}/{REPOSITORY}:{tag}")
    assert image_leaks(docker_client, image.id, credentials(world.registry)) == {
        "history": set(),
        "config": set(),
        "layers": set(),
    }


# --- a task that logs secrets (last: its unmasked copy in the scheduler log must not reach the scan above) ---


def test_connection_secrets_logged_by_a_task_are_masked_in_its_log_file(world: World, client: AirflowAPI) -> None:
    run_id = client.trigger("hardening_secrets_probe", {})
    run = client.wait("hardening_secrets_probe", run_id, timeout=300)
    assert run.state == "success", client.task_states("hardening_secrets_probe", run_id)
    [log_file] = (world.stack.home / "logs" / "dag_id=hardening_secrets_probe").rglob("attempt=1.log")
    text = log_file.read_text()
    events = [json.loads(line).get("event", "") for line in text.splitlines() if line.startswith("{")]
    assert "registry password: ***" in events
    assert "account key: ***" in events  # the key alone, not only the connection string it came from
    assert "printed: *** ***" in events  # print() goes through the same masking
    assert any(e.startswith("registry uri: docker://") and ":***@" in e for e in events), events
    assert leaks([text.encode()], credentials(world.registry)) == set()
    # Airflow's LocalExecutor also copies task output to the scheduler's stdout, unmasked (Airflow 3.3.2):
    # that file is readable by its owner only, like the connections themselves.
    scheduler_log = world.stack.home / "airflow-scheduler.log"
    assert stat.S_IMODE(scheduler_log.stat().st_mode) == 0o600


def test_the_admin_password_file_is_owner_only_and_the_password_never_printed(world: World) -> None:
    passwords = world.stack.home / "simple_auth_manager_passwords.json.generated"
    assert stat.S_IMODE(passwords.stat().st_mode) == 0o600  # written before the api-server, as `make up` does
    admin = json.loads(passwords.read_text())["admin"]
    logs = {p.name: p.read_text(errors="replace") for p in world.stack.home.glob("airflow-*.log")}
    assert "airflow-api-server.log" in logs
    assert {name for name, text in logs.items() if admin in text or "Password for user" in text} == set()


def test_no_command_line_showed_a_password_while_the_stack_started_and_ran(world: World, concurrent_runs) -> None:
    assert world.ps.samples > 100 and world.ps.processes > 1000, world.ps  # it did look, throughout
    assert world.ps.found == {}


def test_every_airflow_component_listens_on_loopback_only(world: World) -> None:
    """What `make up` starts one by one (not `airflow standalone`) so that no log server binds all interfaces."""
    from tests.listeners import listening, not_loopback, pids_in_session

    pids = [member for proc in world.stack.procs if (leader := proc.pid()) for member in pids_in_session(leader)]
    assert pids and not_loopback(pids) == []
    assert world.stack.port in {port for _, _, port in listening(pids)}  # the api-server, on 127.0.0.1
