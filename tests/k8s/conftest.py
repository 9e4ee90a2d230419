"""The local Kubernetes cluster (devstack/k8s-local) for tests that need a real API server and kubelet.

Opt-in: MODELSHIP_K8S=1. The first run on a machine builds the cluster from Debian's sources (~8 min,
cached in $K8S_LOCAL_HOME, default ~/.cache/k8s-local); later sessions only start it (~30 s). Without
the opt-in, tests that use `k8s_cluster` skip and say how to run them.

The cluster is shared by everything on the machine (devstack.cluster): the session holds a lease while it
runs, and stops the cluster at the end only if it started it and nobody else holds a lease (another test
session, `make up K8S=1`); MODELSHIP_K8S_KEEP=1 leaves it running for the next session. Tests keep to their
own namespaces. Other test folders load this module with `pytest_plugins = ["tests.k8s.conftest"]`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from devstack import StackError
from devstack.cluster import LocalCluster

OPT_IN = "MODELSHIP_K8S"
REPO = Path(__file__).resolve().parents[2]


def local_overlay_on(folder: Path, port: int) -> Path:
    """An overlay in `folder`: the local overlay with the app on `port` (the node's network is shared by every
    test and by `make up K8S=1`, so each user of the cluster takes a free port)."""
    base = os.path.relpath(REPO / "k8s" / "overlays" / "local", folder)  # kustomize refuses absolute paths
    (folder / "kustomization.yaml").write_text(f"""\
resources:
  - {base}
patches:
  - target: {{kind: Deployment, name: modelship-app}}
    patch: |-
      - {{op: replace, path: /spec/template/spec/containers/0/env/0/value, value: "127.0.0.1:{port}"}}
""")
    return folder


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[LocalCluster]:
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            "REAL-CLUSTER KUBERNETES TESTS NOT RUN: set MODELSHIP_K8S=1 to run them against devstack/k8s-local "
            "(first run on a machine builds it, ~8 min; then ~30 s to start)"
        )
    cluster = LocalCluster()
    try:
        started = cluster.acquire()
    except StackError as exc:
        pytest.fail(str(exc))
    try:
        yield cluster
    finally:
        cluster.release(stop=started and os.environ.get("MODELSHIP_K8S_KEEP") != "1")
