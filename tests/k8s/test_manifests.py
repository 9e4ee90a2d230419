"""The kustomize base and overlays: they render, they are valid Kubernetes objects, and the AKS overlay
keeps the security posture the base promises. Offline: only `kubectl kustomize`, no cluster.

Schema validation offline: `kubectl apply --dry-run=client` needs a server for its OpenAPI schema, so the
rendered objects are checked against the Kubernetes API types the `kubernetes` Python client is generated
from (its models' openapi_types / attribute_map): every field must exist at its place with the right
JSON type, and each object must build into its model with the client's own required-field checks.
(Quantities are strings in those types: write `cpu: "1"`, not `cpu: 1`.)
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
OVERLAYS = ("aks", "local")
MODELS = {("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service"}


def render(path: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    assert kubectl, "kubectl (with kustomize) is part of this machine image and of CI: it is missing"
    out = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return [obj for obj in yaml.safe_load_all(out.stdout) if obj]


def by_kind(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    [obj] = [o for o in objects if o["kind"] == kind]
    return obj


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(K8S / "overlays" / name) for name in OVERLAYS} | {"base": render(K8S / "base")}


# --- strict schema check against the client's generated API types -----------------------------------------

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "bool": (bool,),
    "float": (int, float),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),  # IntOrString, Quantity, raw JSON
}


def schema_errors(data: Any, type_name: str, path: str = "") -> list[str]:
    """Every field of ``data`` that the Kubernetes type ``type_name`` does not have, or has as another type."""
    from kubernetes import client

    if data is None:
        return []
    if type_name.startswith("list["):
        if not isinstance(data, list):
            return [f"{path}: expected a list, got {type(data).__name__}"]
        return [e for i, item in enumerate(data) for e in schema_errors(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith(("dict(", "dict[")):  # "dict[str, str]" (older clients: "dict(str, str)")
        if not isinstance(data, dict):
            return [f"{path}: expected a map, got {type(data).__name__}"]
        value_type = type_name[type_name.index(",") + 1 : -1].strip()
        return [e for k, v in data.items() for e in schema_errors(v, value_type, f"{path}.{k}")]
    if type_name in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[type_name]) and not (type_name == "int" and isinstance(data, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {type(data).__name__} {data!r}"]
    model = getattr(client, type_name)
    if not isinstance(data, dict):
        return [f"{path}: expected a {type_name} object, got {type(data).__name__}"]
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    errors = []
    for key, value in data.items():
        if key not in fields:
            errors.append(f"{path}.{key}: unknown field in {type_name}")
        else:
            errors.extend(schema_errors(value, model.openapi_types[fields[key]], f"{path}.{key}"))
    return errors


def build_model(obj: dict[str, Any]) -> Any:
    """Deserialize into the client's model: its constructors reject missing required fields."""
    from kubernetes import client

    api = client.ApiClient()
    return api._ApiClient__deserialize(obj, MODELS[(obj["apiVersion"], obj["kind"])])


def test_the_schema_check_catches_what_it_is_for() -> None:
    # The validator itself must be able to fail: a typo'd field, a mistyped port, a missing required field.
    bad = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "x"},
        "spec": {
            "selector": {"matchLabels": {"a": "b"}},
            "template": {
                "spec": {
                    "containers": [
                        {"name": "app", "image": "i", "readinessProbes": {}, "ports": [{"containerPort": "80"}]}
                    ]
                }
            },
        },
    }
    errors = schema_errors(bad, "V1Deployment")
    assert any("readinessProbes: unknown field" in e for e in errors), errors
    assert any("containerPort: expected int" in e for e in errors), errors
    with pytest.raises(ValueError, match="containers"):
        build_model({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
                     "spec": {"selector": {}, "template": {"spec": {}}}})  # fmt: skip


# --- rendering and validity ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_renders_to_one_deployment_and_one_service_of_core_api_groups(rendered, name: str) -> None:
    objects = rendered[name]
    assert sorted((o["apiVersion"], o["kind"]) for o in objects) == [("apps/v1", "Deployment"), ("v1", "Service")]


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_rendered_objects_are_valid_kubernetes_api_objects(rendered, name: str) -> None:
    for obj in rendered[name]:
        type_name = MODELS[(obj["apiVersion"], obj["kind"])]
        assert schema_errors(obj, type_name, obj["kind"]) == []
        assert build_model(obj).metadata.name == "modelship-app"


@pytest.mark.parametrize("name", OVERLAYS)
def test_overlays_set_namespace_and_image_repository(rendered, name: str) -> None:
    deployment = by_kind(rendered[name], "Deployment")
    assert all(o["metadata"]["namespace"] == "modelship" for o in rendered[name])
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] != "modelship-app" and container["image"].endswith("/modelship/digits-app")


# --- exposure ----------------------------------------------------------------------------------------------


def test_load_balancer_only_in_the_overlays(rendered) -> None:
    assert by_kind(rendered["base"], "Service")["spec"].get("type", "ClusterIP") == "ClusterIP"
    for name in OVERLAYS:
        assert by_kind(rendered[name], "Service")["spec"]["type"] == "LoadBalancer", name


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_service_reaches_the_pods_named_port(rendered, name: str) -> None:
    service, deployment = by_kind(rendered[name], "Service"), by_kind(rendered[name], "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    [port] = service["spec"]["ports"]
    assert port["port"] == 80
    [container] = deployment["spec"]["template"]["spec"]["containers"]
    if "ports" in container:
        assert port["targetPort"] in {p["name"] for p in container["ports"]}
    else:  # the local overlay's pods declare no port (host network): the app's port by number
        bind = {e["name"]: e["value"] for e in container["env"]}["APP_BIND"]
        assert port["targetPort"] == int(bind.rpartition(":")[2])
    assert {"app.kubernetes.io/name", "app.kubernetes.io/instance", "app.kubernetes.io/part-of"} <= pod_labels.keys()


# --- security posture (what AKS runs) ----------------------------------------------------------------------


def test_aks_pods_run_unprivileged_on_a_read_only_root(rendered) -> None:
    pod = by_kind(rendered["aks"], "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(key), key
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    for container in pod["containers"] + pod.get("initContainers", []):
        sc = container["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc.get("privileged") is not True
        assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add")
        assert sc.get("runAsUser", 10001) != 0
        assert container["resources"]["requests"] and container["resources"]["limits"]
        assert not any(p.get("hostPort") for p in container.get("ports", []))
    # The one writable path is an emptyDir at /tmp.
    [mount] = pod["containers"][0]["volumeMounts"]
    assert mount["mountPath"] == "/tmp"
    assert [v for v in pod["volumes"] if v["name"] == mount["name"]][0].keys() == {"name", "emptyDir"}
    assert pod["imagePullSecrets"] == [{"name": "modelship-registry"}]


@pytest.mark.parametrize("name", OVERLAYS)
def test_rollouts_keep_capacity_drain_before_stopping_and_gate_on_readiness(rendered, name: str) -> None:
    spec = by_kind(rendered[name], "Deployment")["spec"]
    # Never below full capacity: one extra pod at a time, an old one goes only once a new one is ready.
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert spec["revisionHistoryLimit"] >= 2  # rollback needs the previous ReplicaSet
    pod = spec["template"]["spec"]
    [container] = pod["containers"]
    assert {"startupProbe", "readinessProbe", "livenessProbe"} <= container.keys()
    if not pod.get("hostNetwork"):  # (the local overlay's probes: test_local_overlay_shares_…)
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
        assert container["startupProbe"]["httpGet"]["path"] == "/healthz"
    # A pod being replaced keeps serving while endpoints drain (preStop), then finishes what it has (SIGTERM is
    # gunicorn's graceful stop) well within the grace period.
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep" and int(pre_stop[1]) >= 5
    env = {e["name"]: e["value"] for e in container["env"]}
    assert pod["terminationGracePeriodSeconds"] > int(pre_stop[1]) + int(env["APP_GRACEFUL_TIMEOUT"])


def test_aks_serves_on_its_pod_network_port(rendered) -> None:
    spec = by_kind(rendered["aks"], "Deployment")["spec"]
    assert spec["replicas"] == 2
    [container] = spec["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["APP_BIND"] == "0.0.0.0:8000" and container["ports"][0]["containerPort"] == 8000


def test_local_overlay_shares_one_host_network_port_between_old_and_new_pods(rendered) -> None:
    spec = by_kind(rendered["local"], "Deployment")["spec"]
    assert spec["replicas"] == 1
    pod = spec["template"]["spec"]
    assert pod["hostNetwork"] is True
    [container] = pod["containers"]
    # No declared port: with hostNetwork it would be a hostPort, and the scheduler would keep the new pod off
    # the node until the old one is gone. The app shares the port (SO_REUSEPORT) instead.
    assert "ports" not in container
    env = {e["name"]: e["value"] for e in container["env"]}
    host, _, port = env["APP_BIND"].rpartition(":")
    assert host == "127.0.0.1" and port.isdigit()
    # Probes of the shared port could be answered by another pod: they ask this pod's own workers instead.
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert "httpGet" not in container[probe], probe
        assert env["APP_READY_DIR"] in " ".join(container[probe]["exec"]["command"]), probe
    # Everything else of the posture still holds locally.
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True


# --- no secrets ------------------------------------------------------------------------------------------

_SECRETISH = re.compile(
    r"(?i)password|passwd|secret_?key|(?<![A-Za-z])token:|-----BEGIN|dockerconfigjson|AccountKey=|\bauth\b"
)


@pytest.mark.parametrize("name", ["base", *OVERLAYS])
def test_no_secret_material_in_rendered_output(rendered, name: str) -> None:
    assert all(o["kind"] != "Secret" for o in rendered[name])
    text = yaml.safe_dump_all(rendered[name])
    assert not _SECRETISH.findall(text)
    # Only the *name* of the pull secret appears; its contents come from the registry connection at deploy.
    assert text.count("modelship-registry") == 1
