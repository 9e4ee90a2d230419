"""modelship.apptests on the harness's real Docker engine: the app's tests run in a throwaway container that
holds no credential, reaches no socket, folder or network of the worker, and runs within limits; what it
reports is a verdict only when the commit is to blame.

Small checkouts (pytest only in their test environment, built once per session in seconds) prove each
property; tests/e2e/test_hostile_commit.py runs a whole hostile commit through the ci DAG.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import docker
import pytest

from devstack import rootfs
from modelship import apptests
from tests.containment import PYTEST_ONLY, Canaries, Sentinel, make_checkout
from tests.logcapture import log_messages

pytestmark = [pytest.mark.docker]


@pytest.fixture(scope="session")
def apptests_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("apptests-cache")


@pytest.fixture
def engine_env(docker_engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The settings a ci worker has: the engine, the base image, a state folder; DOCKER_HOST set too."""
    env = {
        "MODELSHIP_DOCKER_HOST": docker_engine.url,
        "DOCKER_HOST": docker_engine.url,
        "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
        "MODELSHIP_STATE": str(tmp_path / "state"),
    }
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env


@pytest.fixture
def sentinel():
    listener = Sentinel()
    yield listener
    listener.close()


def leftovers(docker_client) -> list[str]:
    """Test containers and run images still on the engine."""
    containers = docker_client.containers.list(all=True, filters={"label": apptests.RUN_LABEL})
    run_images = docker_client.images.list(filters={"label": apptests.RUN_LABEL})
    return [c.name for c in containers] + [i.id for i in run_images]


# What the probe sees from inside the test container, reported as one JSON line in its failure.
PROBE = '''
import json, os, socket

def attempt(action):
    try:
        result = action()
        return "ok" if result is None or not isinstance(result, (str, bytes)) else result
    except Exception as exc:
        return type(exc).__name__

def unix(path):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(path)

def tcp(port):
    socket.create_connection(("127.0.0.1", port), timeout=3).close()

def own_loopback():
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        with socket.create_connection(server.getsockname(), timeout=3) as client:
            conn, _ = server.accept()
            client.sendall(b"ping")
            return conn.recv(4).decode()

def test_probe():
    status = dict(line.split(":", 1) for line in open("/proc/self/status"))
    view = {{
        "uid": os.getuid(),
        "env": {{k: v for k, v in os.environ.items()}},
        "docker.sock": attempt(lambda: unix("/var/run/docker.sock")),
        "engine": attempt(lambda: unix({engine_socket!r})),
        "state": attempt(lambda: open({state_file!r}).read()),
        "sentinel": attempt(lambda: tcp({sentinel})),
        "write /src": attempt(lambda: open("/src/written", "w")),
        "write /": attempt(lambda: open("/written", "w")),
        "write /tmp": attempt(lambda: open("/tmp/written", "w").write("ok") and "ok"),
        "loopback": attempt(own_loopback),
        "mounts": sorted(line.split()[1] for line in open("/proc/self/mounts")),
        "CapEff": status["CapEff"].strip(),
        "NoNewPrivs": status["NoNewPrivs"].strip(),
    }}
    assert False, "VIEW " + json.dumps(view)
'''


def probe_view(messages: list[str]) -> dict:
    for message in messages:
        found = re.search(r"AssertionError: VIEW (\{.*\})", message)
        if found:
            return json.loads(found.group(1))
    raise AssertionError("the probe's view is not in the log:\n" + "\n".join(messages[-40:]))


def test_the_tests_run_with_no_credential_socket_folder_or_network_of_the_worker(
    engine_env, docker_engine, docker_client, apptests_cache, sentinel, tmp_path, monkeypatch
) -> None:
    canaries = Canaries(Path(engine_env["MODELSHIP_STATE"]))
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_REGISTRY", canaries.conn_json)
    probe = PROBE.format(engine_socket=str(docker_engine.socket), state_file=str(canaries.path), sentinel=sentinel.port)
    checkout = make_checkout(tmp_path / "src", {"test_probe.py": "import time\ntime.sleep(2)\n" + probe})
    outcome: dict[str, BaseException] = {}
    seen: dict[str, dict] = {}

    def run() -> None:
        try:
            apptests.run(checkout, apptests_cache)
        except BaseException as exc:  # noqa: BLE001 (asserted below)
            outcome["error"] = exc

    with log_messages("modelship") as messages:
        worker = threading.Thread(target=run)
        worker.start()
        while worker.is_alive() and not seen:
            for container in docker_client.containers.list(filters={"label": apptests.RUN_LABEL}):
                seen[container.name] = container.attrs  # inspected while it runs
            time.sleep(0.2)
        worker.join(300)

    # Outside: the container as the engine runs it.
    assert len(seen) == 1, outcome
    [attrs] = seen.values()
    host = attrs["HostConfig"]
    assert attrs["Config"]["User"] == apptests.TEST_USER
    assert host["NetworkMode"] == "none"
    assert host["ReadonlyRootfs"] is True and set(host["Tmpfs"]) == {"/tmp"}
    assert not host["Binds"] and attrs["Mounts"] == []  # no socket, no state, no cache: nothing of the host
    assert host["CapDrop"] == ["ALL"] and host["SecurityOpt"] == ["no-new-privileges"]
    assert host["Memory"] == 3 * 2**30 and host["MemorySwap"] == 3 * 2**30  # the settings' defaults
    assert host["PidsLimit"] == 1024 and host["NanoCpus"] == 2 * 10**9
    base_env = set(docker_client.images.get(rootfs.BASE_IMAGE).attrs["Config"].get("Env") or [])
    allowed = {f"{k}={v}" for k, v in apptests.TEST_ENVIRONMENT.items()}
    assert allowed <= set(attrs["Config"]["Env"]) <= allowed | base_env  # the allow-list (and the base image's)

    # Inside: what the commit's code could reach.
    assert isinstance(outcome.get("error"), apptests.AppTestsFailed)  # the probe fails on purpose: a verdict
    view = probe_view(messages)
    assert view["uid"] == 10001
    assert not any(key.startswith(("AIRFLOW", "MODELSHIP", "DOCKER")) for key in view["env"]), view["env"]
    assert view["docker.sock"] == "FileNotFoundError" and view["engine"] == "FileNotFoundError"
    assert view["state"] == "FileNotFoundError"
    assert view["sentinel"] == "ConnectionRefusedError" and sentinel.knocks == 0  # no network out of it
    assert view["loopback"] == "ping"  # its own loopback works: the app's tests start servers there
    assert view["write /src"] in ("OSError", "PermissionError"), view  # a read-only copy of the checkout
    assert view["write /"] in ("OSError", "PermissionError") and view["write /tmp"] == "ok"
    assert not [m for m in view["mounts"] if m.startswith(("/var/run", "/run/docker", str(tmp_path)))], view
    assert view["CapEff"] == "0000000000000000" and view["NoNewPrivs"] == "1"
    text = "\n".join(messages) + str(outcome["error"])
    assert canaries.seen_in(text) == [] and canaries.file_unchanged()
    assert not (checkout / "written").exists()
    assert leftovers(docker_client) == []


def test_red_tests_are_a_verdict_naming_them_and_leave_nothing_behind(
    engine_env, docker_client, apptests_cache, tmp_path
) -> None:
    checkout = make_checkout(tmp_path / "src", {"test_red.py": "def test_green():\n    pass\n\n"
                                                             "def test_red():\n    assert 1 == 2\n"})  # fmt: skip
    with pytest.raises(apptests.AppTestsFailed) as caught:
        apptests.run(checkout, apptests_cache)
    assert "the app's tests failed: 1 failed, 1 passed" in str(caught.value)
    assert "FAILED tests/app/test_red.py::test_red" in str(caught.value)
    assert leftovers(docker_client) == []


# Each test says which process ran it: pytest-xdist names its workers gw0, gw1, ... in PYTEST_XDIST_WORKER.
IN_A_WORKER = """\
import os


def test_{name}():
    assert os.environ.get("PYTEST_XDIST_WORKER", "").startswith("gw"), "not run by an xdist worker"
"""


def test_tests_run_across_the_cpus_when_the_commit_asks_for_pytest_xdist(
    engine_env, docker_client, apptests_cache, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tests = {f"test_{name}.py": IN_A_WORKER.format(name=name) for name in ("a", "b", "c")}
    # Without pytest-xdist among its requirements, the same tests run in one process, and fail here.
    serial = make_checkout(tmp_path / "serial", tests)
    with pytest.raises(apptests.AppTestsFailed, match="3 failed"):
        apptests.run(serial, apptests_cache)
    xdist = PYTEST_ONLY + "execnet==2.1.2\npytest-xdist==3.8.0\n"
    parallel = make_checkout(tmp_path / "parallel", tests, requirements_test=xdist)
    assert apptests.environment(parallel, apptests_cache).parallel
    assert apptests.run(parallel, apptests_cache).startswith("3 passed")
    # One CPU for the test container: one process, whatever the requirements.
    monkeypatch.setenv("MODELSHIP_APPTESTS_CPUS", "1")
    with pytest.raises(apptests.AppTestsFailed, match="3 failed"):
        apptests.run(parallel, apptests_cache)
    assert leftovers(docker_client) == []


def test_a_commit_that_changes_no_requirement_installs_nothing(
    engine_env, docker_client, apptests_cache, tmp_path
) -> None:
    first = make_checkout(tmp_path / "one", {"test_one.py": "def test_one():\n    pass\n"})
    assert apptests.run(first, apptests_cache).startswith("1 passed")
    # Another commit: other tests, and a requirements file that differs in its comments only.
    second = make_checkout(tmp_path / "two", {"test_two.py": "def test_two():\n    pass\n"},
                           requirements_test=PYTEST_ONLY + "# a comment\n")  # fmt: skip
    with log_messages("modelship") as messages:
        started = time.monotonic()
        env = apptests.environment(second, apptests_cache)
        took = time.monotonic() - started
    assert not env.built and took < 5, (env, took)
    assert not [m for m in messages if "wheelhouse" in m or "building" in m], messages
    assert apptests.run(second, apptests_cache).startswith("1 passed")
    assert apptests.environment(first, apptests_cache).image == env.image


def test_tests_that_do_not_finish_are_killed_and_a_verdict(engine_env, docker_client, apptests_cache, tmp_path):
    checkout = make_checkout(tmp_path / "src", {"test_slow.py": "import time\ndef test_slow():\n    time.sleep(600)\n"})
    started = time.monotonic()
    with pytest.raises(apptests.AppTestsFailed, match="did not finish within 3s"):
        apptests.run(checkout, apptests_cache, timeout=3)
    assert time.monotonic() - started < 60
    assert leftovers(docker_client) == []


def test_tests_beyond_the_memory_limit_are_stopped_by_it(
    engine_env, docker_client, apptests_cache, tmp_path, monkeypatch
) -> None:
    monkeypatch.setenv("MODELSHIP_APPTESTS_MEMORY", "192m")
    checkout = make_checkout(tmp_path / "src", {"test_greedy.py": "def test_greedy():\n"
                                                                  "    held = b'x' * (1024 * 2**20)\n"
                                                                  "    assert held\n"})  # fmt: skip
    with pytest.raises(apptests.AppTestsFailed, match=r"ran out of memory: the test container may use 192m"):
        apptests.run(checkout, apptests_cache)
    assert leftovers(docker_client) == []


# ------------------------------------------------------------------------------------ the requirements


@pytest.mark.parametrize(
    "line",
    [
        "-r {canary}",  # pip would quote the file's lines back in its error
        "--find-links {state}",
        "--index-url http://127.0.0.1:{sentinel}/simple",
        "pytest==${{AIRFLOW_CONN_MODELSHIP_REGISTRY}}",  # pip expands ${VARIABLES} in requirements files
        "pytest @ file://{canary}",
        "pytest>=9",
    ],
    ids=["include-a-file", "find-links", "index-url", "variable", "url", "range"],
)
def test_requirements_lines_other_than_pins_are_refused_unread_by_pip(
    engine_env, docker_client, apptests_cache, sentinel, tmp_path, monkeypatch, line
) -> None:
    canaries = Canaries(Path(engine_env["MODELSHIP_STATE"]))
    monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_REGISTRY", canaries.conn_json)
    hostile = line.format(canary=canaries.path, state=canaries.path.parent, sentinel=sentinel.port)
    checkout = make_checkout(tmp_path / "src", {"test_x.py": "def test_x():\n    pass\n"},
                             requirements_test=PYTEST_ONLY + hostile + "\n")  # fmt: skip
    with log_messages("modelship") as messages, pytest.raises(apptests.AppTestsFailed) as caught:
        apptests.run(checkout, apptests_cache)
    assert "requirements-test.txt line 3: " in str(caught.value) and "refused" in str(caught.value)
    assert canaries.seen_in(str(caught.value) + "\n".join(messages)) == []
    assert sentinel.knocks == 0
    assert not [m for m in messages if "pip" in m], messages  # pip never started


def test_a_requirements_file_that_is_a_symbolic_link_is_refused(engine_env, apptests_cache, tmp_path) -> None:
    canaries = Canaries(Path(engine_env["MODELSHIP_STATE"]))
    checkout = make_checkout(tmp_path / "src", {"test_x.py": "def test_x():\n    pass\n"})
    (checkout / "app" / "requirements-test.txt").unlink()
    (checkout / "app" / "requirements-test.txt").symlink_to(canaries.path)
    with pytest.raises(apptests.AppTestsFailed, match="requirements-test.txt is a symbolic link"):
        apptests.run(checkout, apptests_cache)


# A source package whose setup.py leaves a mark where it runs, and records who ran it.
SETUP_PY = """\
import os, pathlib
from setuptools import setup
pathlib.Path({marker!r}).parent.mkdir(parents=True, exist_ok=True)
pathlib.Path({marker!r}).write_text("setup.py ran here")
pathlib.Path("sdistcanary/built.py").write_text(f"UID = {{os.getuid()}}\\nENV = {{sorted(os.environ)!r}}\\n")
setup(name="sdistcanary", version="1.0", packages=["sdistcanary"])
"""


def source_package(root: Path, marker: Path) -> Path:
    """sdistcanary-1.0.tar.gz in `root`, built without running its setup.py."""
    import tarfile

    tree = root / "build" / "sdistcanary-1.0"
    (tree / "sdistcanary").mkdir(parents=True)
    (tree / "sdistcanary" / "__init__.py").write_text("")
    (tree / "setup.py").write_text(SETUP_PY.format(marker=str(marker)))
    (tree / "PKG-INFO").write_text("Metadata-Version: 2.1\nName: sdistcanary\nVersion: 1.0\n")
    archive = root / "sdistcanary-1.0.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tree, arcname="sdistcanary-1.0")
    return archive


def test_a_source_only_requirement_is_refused_and_its_setup_py_never_runs_on_the_worker(
    engine_env, apptests_cache, tmp_path, monkeypatch
) -> None:
    links = tmp_path / "links"
    links.mkdir()
    marker = tmp_path / "marks" / "setup-py-ran"
    source_package(links, marker)
    for key, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(links)}.items():
        monkeypatch.setenv(key, value)  # the worker's pip finds the source package, and nothing else
    checkout = make_checkout(tmp_path / "src", {"test_x.py": "def test_x():\n    pass\n"},
                             requirements_test="sdistcanary==1.0\n")  # fmt: skip
    with pytest.raises(apptests.AppTestsFailed, match="MODELSHIP_APPTESTS_ALLOW_SDIST=1 allows them") as caught:
        apptests.run(checkout, apptests_cache)
    assert "sdistcanary" in str(caught.value)
    assert not marker.exists()


def test_with_sdists_allowed_setup_py_runs_in_the_build_as_an_unprivileged_user_with_no_credential(
    engine_env, docker_client, apptests_cache, tmp_path, monkeypatch
) -> None:
    # A package index on loopback: the source package, and the wheels of pytest and setuptools.
    index = tmp_path / "index" / "simple"
    marker = tmp_path / "marks" / "setup-py-ran"
    downloads = tmp_path / "downloads"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(downloads),
                    "pytest==9.2.0", "setuptools", "wheel"], check=True)  # fmt: skip
    packages = [*downloads.glob("*.whl"), source_package(tmp_path / "sdist", marker)]
    for package in packages:
        name = re.sub(r"[-_.]+", "-", package.name.split("-")[0]).lower()
        (index / name).mkdir(parents=True, exist_ok=True)
        os.link(package, index / name / package.name)
    server = subprocess.Popen([sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "0"],
                              cwd=index.parent, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        port = int(re.search(r"port (\d+)", server.stdout.readline()).group(1))
        monkeypatch.setenv("MODELSHIP_APPTESTS_ALLOW_SDIST", "1")
        monkeypatch.setenv("MODELSHIP_APPTESTS_INDEX_URL", f"http://127.0.0.1:{port}/simple")
        monkeypatch.setenv("AIRFLOW_CONN_MODELSHIP_REGISTRY", Canaries(tmp_path / "state").conn_json)
        test = ("import sdistcanary.built as built\n"
                "def test_built_by_the_unprivileged_user_with_no_credential():\n"
                "    assert built.UID == 10001\n"
                "    assert not [n for n in built.ENV if n.startswith(('AIRFLOW', 'MODELSHIP', 'DOCKER'))]\n")
        requirements = PYTEST_ONLY + f"sdistcanary==1.0\n# {uuid.uuid4().hex}\n"
        checkout = make_checkout(tmp_path / "src", {"test_sdist.py": test}, requirements_test=requirements)
        assert apptests.run(checkout, apptests_cache).startswith("1 passed")
    finally:
        server.terminate()
        server.wait(10)
    assert not marker.exists()  # setup.py ran in the build, not here
    env = apptests.environment(checkout, apptests_cache)
    docker_client.images.remove(env.image, force=True)  # a one-off environment


def test_an_index_that_does_not_answer_is_transient_not_a_verdict(
    engine_env, apptests_cache, sentinel, tmp_path, monkeypatch
) -> None:
    sentinel.close()  # its port: nobody listens there now
    for key, value in {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": f"http://127.0.0.1:{sentinel.port}/simple",
                       "PIP_FIND_LINKS": "", "PIP_EXTRA_INDEX_URL": "", "PIP_RETRIES": "1",
                       "PIP_NO_CACHE_DIR": "1"}.items():  # fmt: skip
        monkeypatch.setenv(key, value)
    # Requirements no environment has yet: their wheels must be downloaded.
    checkout = make_checkout(tmp_path / "src", {"test_x.py": "def test_x():\n    pass\n"},
                             requirements_test=PYTEST_ONLY + "six==1.17.0\n")  # fmt: skip
    with pytest.raises(apptests.TestEnvironmentUnavailable, match="did not answer") as caught:
        apptests.run(checkout, apptests_cache)
    assert not isinstance(caught.value, apptests.AppTestsFailed)
    from modelship.retry import is_transient

    assert is_transient(caught.value)


def test_expired_leftovers_of_a_dead_worker_are_swept_and_fresh_ones_kept(engine_env, docker_client) -> None:
    now = int(time.time())
    made = []
    try:
        for name, expires in (("expired", now - 1), ("in-use", now + 600)):
            labels = {apptests.RUN_LABEL: name, apptests.RUN_EXPIRES_LABEL: str(expires)}
            made.append(docker_client.containers.create(rootfs.BASE_IMAGE, ["true"], labels=labels,
                                                        name=f"modelship-apptests-{name}-{now}"))  # fmt: skip
        removed = apptests.sweep_leftovers(docker_client.api)
        assert removed == [f"modelship-apptests-expired-{now}"]
        assert [c.name for c in docker_client.containers.list(all=True, filters={"label": apptests.RUN_LABEL})] == [
            f"modelship-apptests-in-use-{now}"
        ]
    finally:
        for container in made:
            with contextlib.suppress(docker.errors.NotFound):
                container.remove(force=True)
