"""The local Kubernetes cluster (shared/k8s-local) for tests that need a real API server and kubelet.

Opt-in: MODELSHIP_K8S=1. The first run on a machine builds the cluster from Debian's sources (~8 min,
cached in $K8S_LOCAL_HOME, default ~/.cache/k8s-local); later sessions only start it (~30 s). Without
the opt-in, tests that use `k8s_cluster` skip and say how to run them.

The cluster is shared by everything on the machine, so the fixture stops it at the end only if it
started it (MODELSHIP_K8S_KEEP=1 leaves it running for the next session). Tests keep to their own
namespaces. Other test folders load this module with `pytest_plugins = ["tests.k8s.conftest"]`.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KIT = Path(os.environ.get("MODELSHIP_K8S_LOCAL_KIT", REPO.parent / "shared" / "k8s-local"))
HOME = Path(os.environ.get("K8S_LOCAL_HOME") or Path.home() / ".cache" / "k8s-local")
OPT_IN = "MODELSHIP_K8S"


@dataclass(frozen=True)
class LocalCluster:
    home: Path
    started_here: bool

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig-admin"

    @property
    def containerd_socket(self) -> Path:
        return self.home / "data" / "containerd" / "containerd.sock"


def _script(name: str, timeout: float) -> None:
    log = HOME / f"modelship-test-{name}.log"
    with open(log, "ab") as out:
        result = subprocess.run(
            ["bash", str(KIT / f"{name}.sh")],
            env={**os.environ, "K8S_LOCAL_HOME": str(HOME)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            timeout=timeout,
        )
    if result.returncode != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
        pytest.fail(f"shared/k8s-local/{name}.sh failed (exit {result.returncode}), log {log}:\n{tail}")


def _api_ready() -> bool:
    kubectl = HOME / "bin" / "kubectl"
    if not kubectl.exists() or not (HOME / "kubeconfig-admin").exists():
        return False
    result = subprocess.run(
        [str(kubectl), "--kubeconfig", str(HOME / "kubeconfig-admin"), "get", "--raw", "/readyz"],
        capture_output=True,
        timeout=20,
    )
    return result.returncode == 0


@pytest.fixture(scope="session")
def k8s_cluster() -> Iterator[LocalCluster]:
    if os.environ.get(OPT_IN) != "1":
        pytest.skip(
            "REAL-CLUSTER KUBERNETES TESTS NOT RUN: set MODELSHIP_K8S=1 to run them against shared/k8s-local "
            "(first run on a machine builds it, ~8 min; then ~30 s to start)"
        )
    if not KIT.is_dir():
        pytest.fail(f"MODELSHIP_K8S=1 but the cluster kit is not at {KIT} (set MODELSHIP_K8S_LOCAL_KIT)")
    HOME.mkdir(parents=True, exist_ok=True)
    # One session at a time builds or starts it; a second pytest on the machine waits here.
    with open(HOME / "modelship-test.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (HOME / "bin" / "kube-apiserver").exists():
            _script("build", timeout=3600)
        started = False
        if not _api_ready():
            _script("init", timeout=120)
            _script("up", timeout=600)
            started = True
    cluster = LocalCluster(HOME, started_here=started)
    try:
        yield cluster
    finally:
        if started and os.environ.get("MODELSHIP_K8S_KEEP") != "1":
            _script("down", timeout=300)
