"""A hostile commit through the ci DAG (dag.test(), real checkout, engine, registry and Azurite).

The commit replaces the app's tests with attacks on the worker: read the environment, the state folder and
Docker's config; drive the engine through /var/run/docker.sock, the harness engine's socket or DOCKER_HOST;
log into the registry, write to Azurite and ask the Airflow API (at the ports it could learn), with whatever
it found; write outside its container. It also commits symbolic links to the state folder. Each attack fails
with "blocked: …" when it got nothing and with "GOT …" and what it got otherwise, so both end up in the task's
output. Canary secrets are planted in an AIRFLOW_CONN_* variable and in the state folder's modelship.env.

Expected: ci is red at `test` (a verdict), every attack was blocked, no canary (nor the registry password)
appears in anything the run logged or printed, and nothing outside the test container changed: the engine's
containers and images, the registry's repositories, tags and digests, Azurite's blobs, the canary file.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest
import requests

from devstack import components
from tests.containment import Canaries, Sentinel
from tests.e2e.pipeline import REPO, git, run_dag, task_states
from tests.logcapture import log_messages

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]

ATTACKS = ("environment", "worker files", "docker engine", "registry", "azurite", "airflow api", "writes")

HOSTILE_TESTS = '''
"""Not tests: attacks on the CI worker that runs them."""
import base64, glob, json, os, socket, urllib.error, urllib.request

import pytest

STATE_DIR = {state!r}
CANARY_FILE = {canary!r}
CACHE_DIR = {cache!r}
ENGINE_SOCKET = {engine_socket!r}
REGISTRY = {registry!r}
AZURITE_PORT = {azurite_port}
AIRFLOW_API_PORT = {airflow_port}
FOUND = {{}}  # what each attack found, for the next ones
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({{}}))


def outcome(attack, got, tried):
    if got:
        pytest.fail(f"GOT {{attack}}: {{got!r}}", pytrace=False)
    pytest.fail(f"blocked: {{attack}}: {{tried}}", pytrace=False)


def http(method, url, headers=None, body=None):
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {{}})
    try:
        with OPENER.open(request, timeout=5) as response:
            return response.status, response.read(2000).decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except Exception as exc:
        return None, type(exc).__name__


def test_environment():
    # What the container was started with: its first process's environment. Not this process's: the repository's
    # own conftest sets AIRFLOW_HOME & co. in-process, and pytest-xdist's workers are started with that.
    given = {{}}
    for entry in open("/proc/1/environ", "rb").read().decode(errors="replace").split("\\0"):
        if "=" in entry:
            given.setdefault(*entry.split("=", 1))
    wanted = ("AIRFLOW", "CONN", "PASSWORD", "SECRET", "TOKEN", "KEY", "DOCKER", "MODELSHIP", "AZURE")
    got = {{k: v for k, v in given.items() if any(w in k.upper() for w in wanted)}}
    FOUND.update(got)
    outcome("environment", got, f"names given: {{sorted(given)}}")


def test_worker_files():
    paths = [CANARY_FILE, os.path.join(STATE_DIR, "modelship.env"), "/src/app/leak",
             "/src/tests/app/state/modelship.env", os.path.expanduser("~/.docker/config.json"),
             "/root/.docker/config.json", "/proc/1/environ",
             *glob.glob(os.path.join(STATE_DIR, "**", "*"), recursive=True)]
    got, tried = {{}}, {{}}
    for path in paths:
        try:
            text = open(path, errors="replace").read()
        except Exception as exc:
            tried[path] = type(exc).__name__
            continue
        tried[path] = "read"
        if any(word in text for word in ("canary", "AIRFLOW_CONN", "password", "auths")):
            got[path] = text
    FOUND.update(got)
    outcome("worker files", got, tried)


def test_docker_engine():
    sockets = ["/var/run/docker.sock", "/run/docker.sock", ENGINE_SOCKET]
    host = os.environ.get("DOCKER_HOST", "")
    if host.startswith("unix://"):
        sockets.append(host[len("unix://"):])
    got, tried = {{}}, {{}}
    for path in sockets:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(5)
                s.connect(path)
                s.sendall(b"GET /containers/json?all=1 HTTP/1.0\\r\\nHost: docker\\r\\n\\r\\n")
                got[path] = s.recv(4000).decode(errors="replace")
        except Exception as exc:
            tried[path] = type(exc).__name__
    for port in (2375, 2376):
        status, said = http("GET", f"http://127.0.0.1:{{port}}/containers/json")
        tried[port] = status or said
        if status:
            got[port] = said
    outcome("docker engine", got, tried)


def credentials():
    found = [("modelship", "modelship"), ("admin", "admin")]
    for value in FOUND.values():
        try:
            conn = json.loads(value)
            found.append((conn.get("login", ""), conn.get("password", "")))
        except Exception:
            found.append(("modelship", value))
    return found


def test_registry():
    got, tried = {{}}, []
    for user, password in credentials():
        auth = base64.b64encode(f"{{user}}:{{password}}".encode()).decode()
        status, said = http("GET", f"http://{{REGISTRY}}/v2/_catalog", {{"Authorization": f"Basic {{auth}}"}})
        tried.append(status or said)
        if status == 200:
            got["catalog"] = said
            upload = f"http://{{REGISTRY}}/v2/hostile/blobs/uploads/"
            status, _ = http("POST", upload, {{"Authorization": f"Basic {{auth}}"}})
            got["upload"] = status
    outcome("registry", got, tried)


def test_azurite():
    base = f"http://127.0.0.1:{{AZURITE_PORT}}/devstoreaccount1"
    got, tried = {{}}, []
    status, said = http("GET", f"{{base}}?comp=list")
    tried.append(status or said)
    if status == 200:
        got["list"] = said
    status, said = http("PUT", f"{{base}}/e2e-models/hostile.txt", {{"x-ms-blob-type": "BlockBlob"}}, b"hostile")
    tried.append(status or said)
    if status in (200, 201):
        got["write"] = status
    outcome("azurite", got, tried)


def test_airflow_api():
    got, tried = {{}}, []
    for user, password in credentials():
        body = json.dumps({{"username": user, "password": password}}).encode()
        token = f"http://127.0.0.1:{{AIRFLOW_API_PORT}}/auth/token"
        status, said = http("POST", token, {{"Content-Type": "application/json"}}, body)
        tried.append(status or said)
        if status:
            got[user] = said
    status, said = http("GET", f"http://127.0.0.1:{{AIRFLOW_API_PORT}}/api/v2/connections")
    tried.append(status or said)
    if status:
        got["connections"] = said
    outcome("airflow api", got, tried)


def test_writes():
    got, tried = {{}}, {{}}
    for path in (CANARY_FILE, os.path.join(STATE_DIR, "hostile"), os.path.join(CACHE_DIR, "hostile"), "/src/hostile",
                 "/src/app/leak", "/hostile"):
        try:
            with open(path, "a") as handle:
                handle.write("hostile")
            got[path] = "written"
        except Exception as exc:
            tried[path] = type(exc).__name__
    outcome("writes", got, tried)
'''


def hostile_commit(clone: Path, **where: object) -> str:
    """A throwaway clone of this repository with one commit: the app's tests replaced by the attacks, links to
    the state folder; the requirements unchanged (the test environment ci_v1 built is reused)."""
    git("clone", "-q", "--no-hardlinks", str(REPO), str(clone))
    tests = clone / "tests" / "app"
    git("rm", "-q", *[str(p.relative_to(clone)) for p in tests.glob("test_*.py")], cwd=clone)
    (tests / "test_hostile.py").write_text(textwrap.dedent(HOSTILE_TESTS.format(**where)))
    (clone / "app" / "leak").symlink_to(where["canary"])
    (tests / "state").symlink_to(where["state"], target_is_directory=True)
    git("add", "-A", cwd=clone)
    git("-c", "user.name=mallory", "-c", "user.email=mallory@localhost", "commit", "-qm", "improve tests", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


def outside_the_container(docker_client, registry: components.Registry, azurite: components.Azurite) -> dict:
    """What the commit must not change: the engine's containers and images, the registry, Azurite's blobs."""
    from azure.storage.blob import BlobServiceClient

    session = requests.Session()
    session.trust_env = False
    session.auth = (registry.username, registry.password)
    base = f"http://{registry.address}/v2"
    repositories = session.get(f"{base}/_catalog", timeout=10).json()["repositories"]
    tags = {}
    for repository in repositories:
        for tag in session.get(f"{base}/{repository}/tags/list", timeout=10).json().get("tags") or []:
            accept = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.oci.image.index.v1+json"
            head = session.head(f"{base}/{repository}/manifests/{tag}", timeout=10, headers={"Accept": accept})
            tags[f"{repository}:{tag}"] = head.headers.get("Docker-Content-Digest")
    service = BlobServiceClient.from_connection_string(azurite.connection_string)
    blobs = {
        f"{container.name}/{blob.name}": blob.etag
        for container in service.list_containers()
        for blob in service.get_container_client(container.name).list_blobs()
    }
    return {
        "containers": sorted(c.id for c in docker_client.containers.list(all=True)),
        "images": sorted(i.id for i in docker_client.images.list(all=True)),
        "registry": tags,
        "blobs": blobs,
    }


def test_a_hostile_commit_is_red_sees_no_secret_and_changes_nothing_outside_its_container(
    ci_v1, pipeline_env, registry: components.Registry, azurite: components.Azurite, docker_engine, docker_client,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    state = Path(pipeline_env["MODELSHIP_STATE"])
    canaries = Canaries(state)
    airflow_api = Sentinel()  # stands for the Airflow API: counts every connection
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_CANARY", canaries.conn_json)
    monkeypatch.setenv("DOCKER_HOST", docker_engine.url)
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", f"http://127.0.0.1:{airflow_api.port}")
    commit = hostile_commit(
        tmp_path / "src", state=str(state), canary=str(canaries.path), cache=pipeline_env["MODELSHIP_CACHE"],
        engine_socket=str(docker_engine.socket), registry=registry.address, azurite_port=azurite.port,
        airflow_port=airflow_api.port,
    )  # fmt: skip
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(tmp_path / "src"))
    before = outside_the_container(docker_client, registry, azurite)

    with log_messages("modelship") as logged, log_messages("airflow") as airflow_logged:
        dag_run = run_dag("ci", {"commit": commit})
    printed = capfd.readouterr()
    after = outside_the_container(docker_client, registry, azurite)
    airflow_api.close()

    states = task_states(dag_run)
    assert str(dag_run.state) == "failed", states
    assert states["test"] == "failed" and states["push"] in ("upstream_failed", "skipped"), states
    everything = "\n".join([*logged, *airflow_logged, printed.out, printed.err])
    # Every attack ran, and every one was blocked.
    for attack in ATTACKS:
        assert re.search(rf"blocked: {attack}: ", everything), f"no {attack!r} attack:\n{everything[-5000:]}"
    assert "GOT " not in everything, [line for line in everything.splitlines() if "GOT " in line]
    assert "the app's tests failed: 7 failed" in everything
    # No secret in what the run logged or printed.
    assert canaries.seen_in(everything) == []
    assert registry.password not in everything
    # Nothing outside the test container changed.
    assert after == before
    assert canaries.file_unchanged()
    assert airflow_api.knocks == 0
    assert not (Path(pipeline_env["MODELSHIP_CACHE"]) / "hostile").exists() and not (state / "hostile").exists()
