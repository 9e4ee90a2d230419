"""deploy/helm/values-aks.yaml: the official Airflow chart with the KubernetesExecutor on AKS.

`helm` cannot be installed on this machine (Debian has no package and nothing else can be downloaded),
and the chart itself cannot be fetched, so the values file is checked for the structure the chart (>= 1.19,
Airflow 3) expects and for what modelship needs from it, not rendered. Where `helm` and the chart are at
hand: `helm template modelship apache-airflow/airflow -f deploy/helm/values-aks.yaml`.
"""

from __future__ import annotations

import re
import shutil
import warnings
from typing import Any

import pytest
import yaml

from tests.distributed.conftest import REPO

VALUES = REPO / "deploy" / "helm" / "values-aks.yaml"
COMPOSE = REPO / "docker-compose.airflow.yml"


@pytest.fixture(scope="module")
def values() -> dict[str, Any]:
    if not shutil.which("helm"):
        warnings.warn(
            "helm is unavailable here (no Debian package, no download): values-aks.yaml is checked structurally, "
            "not rendered by the chart",
            stacklevel=1,
        )
    return yaml.safe_load(VALUES.read_text())


def test_kubernetes_executor_on_the_airflow_version_the_project_pins(values: dict[str, Any]) -> None:
    assert values["executor"] == "KubernetesExecutor"
    pinned = re.search(r"^apache-airflow==(\S+)$", (REPO / "requirements.txt").read_text(), re.M)
    assert pinned and values["airflowVersion"] == pinned.group(1)
    assert values["redis"]["enabled"] is False  # no broker without Celery
    assert values["dagProcessor"]["enabled"] is True and values["triggerer"]["enabled"] is True


def test_no_secret_is_in_the_file_only_secret_names(values: dict[str, Any]) -> None:
    for key in ("fernetKey", "apiSecretKey", "jwtSecret", "webserverSecretKey"):
        assert values.get(key) is None, key
    for key in ("fernetKeySecretName", "apiSecretKeySecretName", "jwtSecretName"):
        assert values[key], key
    assert values["data"]["metadataSecretName"] and "metadataConnection" not in values["data"]
    assert values["postgresql"]["enabled"] is False  # Azure Database for PostgreSQL, not an in-cluster one


def test_task_pods_share_the_state_volume_at_the_path_the_compose_stack_uses(values: dict[str, Any]) -> None:
    # ci's tasks hand a per-run workspace to each other: every task pod must see the same MODELSHIP_STATE.
    compose_state = re.search(r"MODELSHIP_STATE: (\S+)", COMPOSE.read_text())
    assert compose_state
    mounts = {m["name"]: m["mountPath"] for m in values["workers"]["extraVolumeMounts"]}
    volumes = {v["name"]: v for v in values["workers"]["extraVolumes"]}
    assert mounts["modelship-state"] == compose_state.group(1)
    assert volumes["modelship-state"]["persistentVolumeClaim"]["claimName"]
    settings = yaml.safe_load(values["extraConfigMaps"]["modelship-settings"]["data"])
    assert settings["MODELSHIP_STATE"] == compose_state.group(1)
    assert settings["MODELSHIP_DEPLOY_TARGET"] == "kubernetes"
    assert settings["MODELSHIP_DOCKER_HOST"].startswith("tcp://")  # no Docker socket in a pod


def test_connections_come_from_a_secret_with_the_projects_connection_ids(values: dict[str, Any]) -> None:
    sources = yaml.safe_load(values["extraEnvFrom"])
    assert {"secretRef": {"name": "modelship-connections"}} in sources
    text = VALUES.read_text()
    for conn in ("AIRFLOW_CONN_MODELSHIP_BLOB", "AIRFLOW_CONN_MODELSHIP_REGISTRY", "AIRFLOW_CONN_MODELSHIP_KUBERNETES"):
        assert conn in text, conn


def test_the_image_is_the_bundled_one_and_no_service_is_public(values: dict[str, Any]) -> None:
    assert values["images"]["airflow"]["repository"].endswith(".azurecr.io/modelship/airflow")
    assert values["dags"]["gitSync"]["enabled"] is False  # the code is baked in (Dockerfile.bundled)
    assert (REPO / "dockerfiles" / "airflow" / "Dockerfile.bundled").is_file()
    assert values["apiServer"]["service"]["type"] == "ClusterIP"
    assert values["config"]["logging"]["remote_logging"] == "True"  # task pods vanish; their logs must not
