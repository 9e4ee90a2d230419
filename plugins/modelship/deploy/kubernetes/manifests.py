"""The objects a release applies: an overlay rendered by kustomize, the app image pinned by digest, lineage
annotations on the Deployment and its pod template; and what to read back from a Deployment."""

from __future__ import annotations

import base64
import copy
import json
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from modelship.deploy.verify import VerificationFailed, expected_lineage
from modelship.lineage import ANN_COMMIT, ANN_IMAGE_DIGEST, ANN_MODEL_SHA256, ANN_MODEL_VERSION
from modelship.verdicts import Verdict

if TYPE_CHECKING:
    from kubernetes.client import V1Deployment

DEFAULT_APP_NAME = "modelship-app"
APP_CONTAINER = "app"
PULL_SECRET = "modelship-registry"
FIELD_MANAGER = "modelship"
APPLY_PATCH = "application/apply-patch+yaml"
JSON_PATCH = "application/json-patch+json"
# Only these may come out of an overlay; Secrets never do (they come from connections).
SUPPORTED_KINDS = frozenset({
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "ServiceAccount"),
})  # fmt: skip
_DIGEST_REF = re.compile(r"(?P<repository>[^@\s]+)@(?P<digest>sha256:[0-9a-f]{64})")




class RenderFailed(Verdict, Exception):
    """The overlay could not be rendered into the objects the target expects."""


def pin_and_annotate(objects: Sequence[dict], image: str, lineage: Mapping[str, Any]) -> list[dict]:
    """Copies of ``objects`` with the app container pinned to ``image`` and lineage annotations added."""
    match = _DIGEST_REF.fullmatch(image)
    if not match:
        raise ValueError(f"deploy images by digest (repository@sha256:<64 hex>), got {image!r}")
    digest = match["digest"]
    if lineage.get("digest") and lineage["digest"] != digest:
        raise ValueError(f"image {image} does not match the lineage's digest {lineage['digest']}")
    commit, model_version = expected_lineage(lineage)
    annotations = {ANN_COMMIT: commit, ANN_MODEL_VERSION: model_version, ANN_IMAGE_DIGEST: digest}
    if lineage.get("model_sha256"):
        annotations[ANN_MODEL_SHA256] = str(lineage["model_sha256"])

    out = copy.deepcopy(list(objects))
    deployments = 0
    for obj in out:
        key = (obj.get("apiVersion"), obj.get("kind"))
        if key[1] == "Secret":
            raise RenderFailed("an overlay rendered a Secret: credentials come from Airflow connections only")
        if key not in SUPPORTED_KINDS:
            raise RenderFailed(f"unsupported object {key[0]}/{key[1]}: only {sorted(SUPPORTED_KINDS)}")
        if key[1] != "Deployment":
            continue
        deployments += 1
        template = obj["spec"]["template"]
        containers = [c for c in template["spec"]["containers"] if c["name"] == APP_CONTAINER]
        if not containers:
            name = obj["metadata"]["name"]
            raise RenderFailed(f"Deployment {name} has no container named {APP_CONTAINER!r}")
        containers[0]["image"] = image
        obj["metadata"].setdefault("annotations", {}).update(annotations)
        template.setdefault("metadata", {}).setdefault("annotations", {}).update(annotations)
    if deployments != 1:
        raise RenderFailed(f"expected exactly one Deployment in the overlay, found {deployments}")
    return out


def dockerconfigjson(host: str, port: int | None, login: str, password: str) -> tuple[str, bytes]:
    """(registry, .dockerconfigjson bytes) for a docker-type connection: host[:port], no scheme."""
    server = re.sub(r"^[a-z]+://", "", host).rstrip("/")
    if port:
        server = f"{server}:{port}"
    auth = base64.b64encode(f"{login}:{password}".encode()).decode()
    config = {"auths": {server: {"username": login, "password": password, "auth": auth}}}
    return server, json.dumps(config).encode()




def selector(deployment: V1Deployment) -> str:
    """The Deployment's matchLabels as a label selector: its ReplicaSets and pods, every revision."""
    return ",".join(f"{k}={v}" for k, v in (deployment.spec.selector.match_labels or {}).items())


def template_annotations(deployment: V1Deployment) -> dict[str, str]:
    meta = deployment.spec.template.metadata
    return dict(meta.annotations or {}) if meta else {}


def app_container(deployment: V1Deployment):
    containers = deployment.spec.template.spec.containers
    return next((c for c in containers if c.name == APP_CONTAINER), containers[0])


def app_image(deployment: V1Deployment) -> str:
    return app_container(deployment).image


def app_port(deployment: V1Deployment) -> int:
    """The port the app listens on: its declared `http` port, else (pods on the host network declare none, see
    k8s/overlays/local) the port of its APP_BIND."""
    container = app_container(deployment)
    ports = container.ports or []
    port = next((p for p in ports if p.name == "http"), ports[0] if ports else None)
    if port is not None:
        return port.container_port
    bind = next((e.value for e in container.env or [] if e.name == "APP_BIND" and e.value), "")
    last = bind.split(",")[0].rpartition(":")[2]
    if not last.isdigit():
        raise VerificationFailed(f"container {APP_CONTAINER!r} declares no port and no APP_BIND to verify through")
    return int(last)
