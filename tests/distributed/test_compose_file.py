"""docker-compose.airflow.yml (and its bridge override) as docker-compose 1.29 reads it: it parses, and
every service, volume and variable it refers to exists. Cheap: no container is started."""

from __future__ import annotations

import json
import re
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from devstack import compose as distributed
from devstack import images as devimages
from tests.distributed.conftest import ENABLED, REPO
from tests.pswatch import shown_by_ps

BRIDGE_FILE = REPO / "docker-compose.bridge.yml"
SERVICES = {
    "postgres", "redis", "registry", "azurite", "airflow-init", "airflow-api-server", "airflow-scheduler",
    "airflow-dag-processor", "airflow-triggerer", "airflow-worker-1", "airflow-worker-2",
}  # fmt: skip


@pytest.fixture(scope="module")
def compose_bin() -> str:
    if ENABLED:
        return distributed.ensure_compose()  # the opt-in run installs what it needs, like `make up-distributed`
    found = shutil.which("docker-compose")
    if not found:
        pytest.skip("SKIPPED: docker-compose is not installed (apt: docker-compose; MODELSHIP_DISTRIBUTED=1 adds it)")
    return found


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> distributed.Distributed:
    """The env files `make up-distributed` writes, for a stack that is never started."""
    dist = distributed.Distributed(tmp_path_factory.mktemp("compose-config"), distributed.Ports.free())
    dist.write_files()
    return dist


def config(compose_bin: str, dist: distributed.Distributed, *files: Path, env_file: bool = True):
    argv = [compose_bin]
    for file in files or (distributed.COMPOSE_FILE,):
        argv += ["-f", str(file)]
    if env_file:
        argv += ["--env-file", str(dist.compose_env)]
    return subprocess.run([*argv, "config"], capture_output=True, text=True, cwd=REPO,
                          env={"PATH": "/usr/bin:/bin:/usr/local/bin"})  # fmt: skip


@pytest.fixture(scope="module")
def resolved(compose_bin: str, generated: distributed.Distributed) -> dict[str, Any]:
    done = config(compose_bin, generated)
    assert done.returncode == 0, done.stderr
    # An unset variable is only a warning to compose ("Defaulting to a blank string"): not here.
    assert "is not set" not in done.stderr, done.stderr
    return yaml.safe_load(done.stdout)


def test_the_compose_file_parses_with_the_generated_env_files(resolved: dict[str, Any]) -> None:
    assert set(resolved["services"]) == SERVICES


def test_every_service_uses_the_host_network_and_every_dependency_exists(resolved: dict[str, Any]) -> None:
    for name, service in resolved["services"].items():
        assert service.get("network_mode") == "host", name
        for dependency in service.get("depends_on", {}):
            assert dependency in resolved["services"], (name, dependency)
    conditions = resolved["services"]["airflow-scheduler"]["depends_on"]
    assert conditions["airflow-init"]["condition"] == "service_completed_successfully"
    assert conditions["postgres"]["condition"] == "service_healthy"


def test_every_named_volume_is_declared(resolved: dict[str, Any]) -> None:
    declared = set(resolved.get("volumes", {}))
    # compose 1.29 prints mounts as "source:target[:mode]"; a named volume's source is not a path.
    sources = [v.split(":")[0] for s in resolved["services"].values() for v in s.get("volumes", [])]
    used = {source for source in sources if not source.startswith(("/", "."))}
    assert used and used <= declared, used - declared


def test_the_azure_stand_ins_listen_where_the_connections_point(
    resolved: dict[str, Any], generated: distributed.Distributed
) -> None:
    services = resolved["services"]
    registry = services["registry"]["environment"]
    assert registry["REGISTRY_HTTP_ADDR"] == generated.stack.registry.address
    assert registry["REGISTRY_AUTH"] == "htpasswd"
    # The htpasswd file mounted into the registry holds the connection's user, and checks its password.
    [mount] = [v for v in services["registry"]["volumes"] if v.endswith(":/auth/htpasswd:ro")]
    htpasswd, login = mount.split(":")[0], generated.stack.registry
    assert stat.S_IMODE(Path(htpasswd).parent.stat().st_mode) == 0o700  # the host's other users cannot read it
    # -i: the password on stdin (-b would put it on the command line, where `ps` shows it to every user).
    check = subprocess.run(["htpasswd", "-vi", htpasswd, login.username], input=login.password.encode(),
                           capture_output=True)  # fmt: skip
    assert check.returncode == 0, check.stderr
    command = services["azurite"]["command"]
    assert command[command.index("--blobHost") + 1] == "127.0.0.1"
    assert command[command.index("--blobPort") + 1] == str(generated.ports.azurite)
    # The workers start only once both answer: a task must not find them still starting.
    for worker in ("airflow-worker-1", "airflow-worker-2"):
        depends = services[worker]["depends_on"]
        assert depends["registry"]["condition"] == depends["azurite"]["condition"] == "service_healthy"
        assert depends["airflow-init"]["condition"] == "service_completed_successfully"


@pytest.mark.parametrize("bridge", [False, True], ids=["host-network", "bridge-override"])
def test_redis_gets_its_password_from_a_file_never_from_a_command_line(
    bridge: bool, resolved: dict[str, Any], compose_bin: str, generated: distributed.Distributed, tmp_path: Path
) -> None:
    """The redis service's own command, run by a shell as in the container, with a stand-in redis-server that
    records what it was given: no command line held the password (sampled throughout), the config file did."""
    if bridge:
        done = config(compose_bin, generated, distributed.COMPOSE_FILE, BRIDGE_FILE)
        assert done.returncode == 0, done.stderr
        resolved = yaml.safe_load(done.stdout)
    redis = resolved["services"]["redis"]
    password = redis["environment"]["REDIS_PASSWORD"]
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stand_in = bin_dir / "redis-server"
    stand_in.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" > {tmp_path}/argv\ncp "$1" {tmp_path}/conf\n'
                        f'stat -c %a "$1" > {tmp_path}/mode\nsleep 0.2\n')  # fmt: skip
    stand_in.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "REDIS_PASSWORD": password, "TMPDIR": str(tmp_path)}
    with shown_by_ps([password]) as seen:
        # `config` prints $$ as it is; the container gets one $ (compose's escape), as here.
        command = [arg.replace("$$", "$") for arg in redis["command"]]
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert seen.found == {} and seen.samples > 5, seen
    argv = (tmp_path / "argv").read_text()
    assert password not in argv and "--appendonly\nyes" in argv, argv
    assert (tmp_path / "conf").read_text() == f"requirepass {password}\n"
    assert (tmp_path / "mode").read_text().strip() == "600"


def test_two_workers_with_distinct_hostnames_and_no_log_server(resolved: dict[str, Any]) -> None:
    workers = [s for n, s in resolved["services"].items() if n.startswith("airflow-worker-")]
    assert len({w["hostname"] for w in workers}) == 2
    for worker in workers:
        # Airflow's log server would bind every interface: workers never start it.
        assert "--skip-serve-logs" in worker["command"]
    for name in ("airflow-scheduler", "airflow-triggerer"):
        assert "--skip-serve-logs" in resolved["services"][name]["command"]


def test_connections_and_settings_reach_the_containers_intact(
    resolved: dict[str, Any], generated: distributed.Distributed
) -> None:
    env = resolved["services"]["airflow-worker-1"]["environment"]
    registry = json.loads(env["AIRFLOW_CONN_MODELSHIP_REGISTRY"])  # JSON survives the env file unquoted
    assert registry["host"] == generated.stack.registry.address and registry["password"]
    blob = json.loads(env["AIRFLOW_CONN_MODELSHIP_BLOB"])
    assert f"127.0.0.1:{generated.ports.azurite}" in blob["extra"]["connection_string"]
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == f"http://127.0.0.1:{generated.ports.api}/execution/"
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert env["MODELSHIP_DOCKER_DEPLOY_PORT"] == str(generated.ports.deploy)
    # Every service that runs Airflow gets the same secrets (tokens signed by one are checked by another).
    airflow = [s for n, s in resolved["services"].items() if n.startswith("airflow-")]
    assert len({s["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] for s in airflow}) == 1


def test_without_the_generated_secrets_compose_refuses_to_start(compose_bin: str, generated) -> None:
    done = config(compose_bin, generated, env_file=False)
    assert done.returncode != 0
    assert "run make up-distributed" in done.stderr


def test_every_variable_the_files_use_is_generated_or_has_a_default(generated: distributed.Distributed) -> None:
    generated_vars = set(generated.compose_variables())
    for file in (distributed.COMPOSE_FILE, BRIDGE_FILE):
        text = "\n".join(line for line in file.read_text().splitlines() if not line.lstrip().startswith("#"))
        for name, default in re.findall(r"(?<!\$)\$\{([A-Z0-9_]+)(:-[^}]*)?", text):
            assert name in generated_vars or default, f"{file.name}: ${{{name}}} is neither generated nor defaulted"


def test_the_compose_files_default_images_are_the_ones_make_up_distributed_builds() -> None:
    text = distributed.COMPOSE_FILE.read_text()
    for spec in devimages.IMAGES:
        assert f"${{{spec.env}:-{spec.name}}}" in text, spec


def test_the_bridge_override_parses_and_keeps_the_workers_on_the_host_network(compose_bin: str, generated) -> None:
    done = config(compose_bin, generated, distributed.COMPOSE_FILE, BRIDGE_FILE)
    assert done.returncode == 0, done.stderr
    services = yaml.safe_load(done.stdout)["services"]
    assert not services["postgres"].get("network_mode")  # the project's bridge network
    assert services["airflow-api-server"]["ports"]
    assert services["airflow-worker-1"]["network_mode"] == "host"
    assert "@postgres:5432/" in services["airflow-scheduler"]["environment"]["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
