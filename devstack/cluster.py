"""The local Kubernetes cluster (k8s-local/): built once per machine, started on demand, shared.

One cluster serves the whole machine (its API server listens on 127.0.0.1:6443): `make up K8S=1`, test
sessions and benchmarks all use it. Each user holds a *lease* while it needs the cluster; `release()` stops
the cluster only when the last lease is gone, so one test session ending never pulls the cluster from under
another (or from under `make up`). A lease is a file under $K8S_LOCAL_HOME/leases: named after a live pid
(a test session: a crashed one's lease is ignored), or after a name (`make-up`: kept until `make down`).

The first build compiles Kubernetes v1.20 from Debian's sources (≈ 8 min on 2 cores, cached in
$K8S_LOCAL_HOME, default ~/.cache/k8s-local); later starts take ≈ 30 s.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devstack import StackError
from modelship.fs import locked
from modelship.net import ensure_tcp_migrate_req

KIT = Path(__file__).resolve().parent / "k8s-local"
HOME = Path(os.environ.get("K8S_LOCAL_HOME") or Path.home() / ".cache" / "k8s-local")
# The registry containerd knows by name (k8s-local/init.sh); any other loopback registry works too.
REGISTRY = "127.0.0.1:5000"


@dataclass(frozen=True)
class LocalCluster:
    home: Path = HOME

    @property
    def kubeconfig(self) -> Path:
        return self.home / "kubeconfig-admin"

    @property
    def connection(self) -> dict[str, Any]:
        """Its Airflow connection: the kubeconfig's content in the extra, as an AKS cluster's would be."""
        return {"conn_type": "kubernetes", "extra": {"kube_config": self.kubeconfig.read_text()}}

    @property
    def kubectl(self) -> Path:
        return self.home / "bin" / "kubectl"

    @property
    def containerd_socket(self) -> Path:
        return self.home / "data" / "containerd" / "containerd.sock"

    @property
    def leases(self) -> Path:
        return self.home / "leases"

    # -- the kit's scripts ------------------------------------------------------------------------------

    def _script(self, name: str, timeout: float) -> None:
        self.home.mkdir(parents=True, exist_ok=True)
        log = self.home / f"devstack-{name}.log"
        with open(log, "ab") as out:
            done = subprocess.run(
                ["bash", str(KIT / f"{name}.sh")],
                env={**os.environ, "K8S_LOCAL_HOME": str(self.home)},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                timeout=timeout,
                check=False,
            )
        if done.returncode != 0:
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-25:])
            raise StackError(f"devstack/k8s-local/{name}.sh failed (exit {done.returncode}), log {log}:\n{tail}")

    def built(self) -> bool:
        return (self.home / "bin" / "kube-apiserver").exists() and self.kubectl.exists()

    def ready(self) -> bool:
        if not self.kubectl.exists() or not self.kubeconfig.exists():
            return False
        done = subprocess.run(
            [str(self.kubectl), "--kubeconfig", str(self.kubeconfig), "get", "--raw", "/readyz"],
            capture_output=True,
            timeout=20,
            check=False,
        )
        return done.returncode == 0

    def _locked(self) -> contextlib.AbstractContextManager[None]:
        # One user at a time builds, starts or stops it; the others wait here.
        self.home.mkdir(parents=True, exist_ok=True)
        return locked(self.home / "devstack.lock")

    # -- leases ------------------------------------------------------------------------------------------

    def _live_leases(self) -> list[str]:
        live = []
        for lease in sorted(self.leases.glob("*")) if self.leases.is_dir() else []:
            if lease.name.startswith("pid-"):
                try:
                    os.kill(int(lease.name[4:]), 0)
                except (ValueError, ProcessLookupError):
                    lease.unlink(missing_ok=True)  # its holder died without releasing
                    continue
                except PermissionError:
                    pass  # alive, another user's
            live.append(lease.name)
        return live

    def acquire(self, holder: str | None = None) -> bool:
        """Build (once), start if needed, and hold a lease; True when this call started the cluster."""
        name = holder or f"pid-{os.getpid()}"
        with self._locked():
            if not self.built():
                print("building the local Kubernetes cluster from Debian's sources (once per machine, ≈ 8 min)…",
                      flush=True)  # fmt: skip
                self._script("build", timeout=3600)
            started = False
            if not self.ready():
                self._script("init", timeout=120)
                self._script("up", timeout=600)
                started = True
            self.leases.mkdir(parents=True, exist_ok=True)
            (self.leases / name).touch()
        # Pods on the host network share the app's port during a rollout: the old pod's queued requests must
        # move to the new one's listeners when it closes them (modelship.net).
        if not ensure_tcp_migrate_req():
            print("warning: net.ipv4.tcp_migrate_req could not be set: a rollout may reset a few queued requests")
        return started

    def release(self, holder: str | None = None, *, stop: bool = True) -> bool:
        """Drop the lease; stop the cluster if it was the last one (and `stop`). True when stopped."""
        name = holder or f"pid-{os.getpid()}"
        with self._locked():
            (self.leases / name).unlink(missing_ok=True)
            if not stop or self._live_leases() or not self.ready():
                return False
            self._script("down", timeout=300)
            return True

    def users(self) -> list[str]:
        with self._locked():
            return self._live_leases()
