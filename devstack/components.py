"""Local stand-ins for the cloud: Docker engine, registry, Azurite — started on loopback only.

`make up` and the test harness start the same components through this one module, so what the tests
prove is what users run. Each component keeps its pid file, log and data under one state folder and is
stopped by killing its process group (its children must not outlive it).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devstack import CACHE_DIR, StackError
from devstack.process import Process, alive
from devstack.rootfs import APP_BASE, BASE_IMAGE
from modelpkg.atomic import write_atomic
from modelship.net import port_open, wait_for

__all__ = ["AZURITE_VERSION", "BASE_IMAGE", "Azurite", "DockerEngine", "Registry", "StackError", "airflow_connections"]

AZURITE_VERSION = "3.37.0"
# Azurite's well-known development account: public, documented by Microsoft, valid only on Azurite.
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="


def airflow_connections(connections: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Connections as Airflow reads them from the environment (AIRFLOW_CONN_<ID>, JSON): the way the stack and
    the tests hand the DAGs their credentials."""
    return {f"AIRFLOW_CONN_{conn_id.upper()}": json.dumps(conn) for conn_id, conn in connections.items()}


@dataclass
class Azurite:
    """The real Azure Storage emulator (blob service only), from npm, telemetry off."""

    state_dir: Path
    port: int = 10000
    proc: Process = field(init=False)

    def __post_init__(self) -> None:
        self.proc = Process("azurite", self.state_dir)

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint=http://127.0.0.1:{self.port}/{AZURITE_ACCOUNT};"
        )

    @property
    def connection(self) -> dict[str, Any]:
        """Its Airflow connection: wasb, as the Azure provider's WasbHook reads it."""
        return {"conn_type": "wasb", "extra": {"connection_string": self.connection_string}}

    @staticmethod
    def install() -> Path:
        home = CACHE_DIR / "azurite"
        binary = home / "node_modules" / ".bin" / "azurite-blob"
        if not binary.exists():
            if not shutil.which("npm"):
                raise StackError("npm is not installed: run `make up` (it installs nodejs and npm)")
            home.mkdir(parents=True, exist_ok=True)
            subprocess.run(
                [
                    "npm",
                    "install",
                    "--no-audit",
                    "--no-fund",
                    "--prefix",
                    str(home),
                    f"azurite@{AZURITE_VERSION}",
                ],
                check=True,
                capture_output=True,
            )
        return binary

    def start(self) -> None:
        if self.proc.pid():
            return
        binary = self.install()
        data = self.state_dir / "azurite-data"
        data.mkdir(parents=True, exist_ok=True)
        self.proc.spawn([
            str(binary), "--blobHost", "127.0.0.1", "--blobPort", str(self.port), "--location", str(data),
            "--skipApiVersionCheck", "--disableTelemetry", "--silent",
        ])  # fmt: skip
        wait_for(lambda: port_open(self.port), f"Azurite on 127.0.0.1:{self.port}", log=self.proc.log_file)

    def stop(self) -> None:
        self.proc.stop()


@dataclass
class Registry:
    """Docker's Distribution registry (Debian's docker-registry) with htpasswd auth, on loopback."""

    state_dir: Path
    port: int = 5000
    username: str = "modelship"
    password: str = ""
    proc: Process = field(init=False)

    def __post_init__(self) -> None:
        self.proc = Process("registry", self.state_dir)
        if not self.password:
            # A random password per state folder, kept there: never a default secret in code.
            secret = self.state_dir / "registry.password"
            if not secret.exists():
                write_atomic(secret, os.urandom(18).hex(), mode=0o600)
            self.password = secret.read_text().strip()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def connection(self) -> dict[str, Any]:
        """Its Airflow connection: docker type, as an ACR's would be."""
        return {"conn_type": "docker", "host": self.address, "login": self.username, "password": self.password}

    def start(self) -> None:
        if self.proc.pid():
            return
        if not shutil.which("docker-registry"):
            raise StackError("docker-registry missing: run `make up` (apt: docker-registry)")
        htpasswd = self.write_htpasswd(self.state_dir / "registry.htpasswd")
        config = self.state_dir / "registry.yml"
        config.write_text(
            "version: 0.1\n"
            "log: {level: warn}\n"
            f"storage:\n  filesystem: {{rootdirectory: {self.state_dir / 'registry-data'}}}\n"
            "  delete: {enabled: true}\n"
            f"http:\n  addr: {self.address}\n"
            f"auth:\n  htpasswd: {{realm: modelship, path: {htpasswd}}}\n"
        )
        self.proc.spawn(["docker-registry", "serve", str(config)])
        wait_for(lambda: port_open(self.port), f"registry on {self.address}", log=self.proc.log_file)

    def write_htpasswd(self, path: Path) -> Path:
        """The registry's user file: one bcrypt entry for username/password (what the registry checks)."""
        if not shutil.which("htpasswd"):
            raise StackError("htpasswd missing: run `make up` (apt: apache2-utils)")
        # -i: the password from stdin, never on a command line (where `ps` would show it to every user).
        line = subprocess.run(
            ["htpasswd", "-Bni", self.username], input=self.password, check=True, capture_output=True, text=True
        ).stdout.strip()
        return write_atomic(path, line + "\n", mode=0o600)

    def stop(self) -> None:
        self.proc.stop()

    @classmethod
    def at(cls, state_dir: Path) -> Registry:
        """The registry a stack started in `state_dir` (its port read back from the config it wrote)."""
        config = Path(state_dir) / "registry.yml"
        found = re.search(r"addr: [^:\s]+:(\d+)", config.read_text()) if config.exists() else None
        if not found:
            raise StackError(f"no registry was ever started in {state_dir} ({config} is missing)")
        return cls(Path(state_dir), port=int(found.group(1)))

    def garbage_collect(self) -> str:
        """Reclaim the blobs no manifest references any more (after modelship gc deleted manifests).

        `docker-registry garbage-collect` runs with the registry stopped for the seconds it takes: upstream warns
        that a push during a collection can lose its layers; a push meanwhile is refused and retried instead.
        Untagged manifests are kept (no --delete-untagged): a release may pin one by digest. Returns the
        collector's summary ("N blobs marked, M blobs and K manifests eligible for deletion").
        """
        config = self.state_dir / "registry.yml"
        if not config.exists():
            raise StackError(f"registry in {self.state_dir} was never started: no {config}")
        if not (self.state_dir / "registry-data" / "docker" / "registry" / "v2" / "repositories").is_dir():
            return "nothing to collect (no repository yet)"  # the collector fails on an empty registry
        running = self.proc.pid() is not None
        self.stop()
        try:
            done = subprocess.run(["docker-registry", "garbage-collect", str(config)], capture_output=True, text=True,
                                  timeout=1800)  # fmt: skip
        finally:
            if running:
                self.start()
        if done.returncode != 0:
            raise StackError(f"docker-registry garbage-collect {config} failed: {done.stderr.strip()[-1000:]}")
        summary = [line for line in done.stdout.splitlines() if "blobs marked" in line]
        return summary[-1].strip() if summary else "nothing to collect"


def unmount_under(root: Path) -> None:
    """Unmount every mount point at or below `root`, deepest first (lazily: nothing may still use them)."""
    prefix = str(root.resolve())
    with open("/proc/self/mounts") as mounts:
        # Fields escape spaces and the like as octal (\040): decode them back to the path.
        points = [line.split()[1].encode().decode("unicode_escape") for line in mounts]
    for point in sorted({p for p in points if p == prefix or p.startswith(prefix + "/")}, key=len, reverse=True):
        subprocess.run(["umount", "-l", point], capture_output=True, check=False)


@dataclass
class DockerEngine:
    """dockerd with no bridge and no iptables: containers and builds use the host (loopback) network."""

    state_dir: Path
    proc: Process = field(init=False)

    def __post_init__(self) -> None:
        self.proc = Process("dockerd", self.state_dir)

    @property
    def socket(self) -> Path:
        return self.state_dir / "docker.sock"

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def _exec_root(self) -> Path:
        # containerd's socket lives under exec-root; unix socket paths must stay short (< 108 bytes).
        digest = hashlib.sha256(str(self.state_dir.resolve()).encode()).hexdigest()[:10]
        return Path("/run") / f"modelship-{digest}"

    def ping(self) -> bool:
        if not self.socket.exists():
            return False
        import docker

        try:
            docker.APIClient(base_url=self.url, timeout=3).ping()
        except Exception:
            return False
        return True

    def start(self) -> bool:
        """Running and answering once this returns; True when it was started now (False: it was running)."""
        if self.proc.pid() and self.ping():
            return False
        if not shutil.which("dockerd"):
            raise StackError("dockerd is not installed: run `make up` (apt: docker.io)")
        if self.proc.pid() is None:
            self._clear_leftovers()
        self.proc.spawn([
            "dockerd", "--bridge=none", "--iptables=false", "--ip6tables=false",
            "--data-root", str(self.state_dir / "docker-data"), "--exec-root", str(self._exec_root()),
            "--pidfile", str(self.state_dir / "dockerd.internal.pid"), "-H", self.url, "--log-level", "warn",
        ])  # fmt: skip
        wait_for(self.ping, "Docker engine", timeout=90, log=self.proc.log_file)
        return True

    def stop(self) -> None:
        self.proc.stop(timeout=30)
        (self.state_dir / "dockerd.internal.pid").unlink(missing_ok=True)
        self._clear_leftovers()

    def _clear_leftovers(self) -> None:
        """What a dockerd killed outright (SIGKILL, OOM) leaves: its containerd, or containerd's pid file naming
        a dead or zombie process that the next dockerd would wait for until it times out; and its mounts,
        which keep the state folder from being deleted."""
        exec_root = str(self._exec_root()).encode()
        killed = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (proc / "cmdline").read_bytes()
                if exec_root in cmdline and b"containerd" in cmdline:
                    os.kill(int(proc.name), signal.SIGKILL)
                    killed.append(int(proc.name))
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in killed) and time.monotonic() < deadline:
            time.sleep(0.1)  # a dying containerd still holds its database lock
        # No dockerd of ours runs and its containerd is gone: the pid file can only mislead the next one.
        (self._exec_root() / "containerd" / "containerd.pid").unlink(missing_ok=True)
        unmount_under(self.state_dir / "docker-data")

    def client(self, timeout: int = 300):
        import docker

        return docker.DockerClient(base_url=self.url, timeout=timeout)

    def ensure_base_image(self) -> str:
        """Import a debootstrapped Debian with python3 as the base image (no registry can be pulled from)."""
        client = self.client()
        try:
            return APP_BASE.ensure_image(client)
        finally:
            client.close()
