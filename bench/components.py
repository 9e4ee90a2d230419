"""The real components every benchmark runs against, as `make up` and the test harness start them
(devstack.components): a private Docker engine (no bridge, host network), the Distribution registry with
htpasswd auth, and Azurite, each on a free loopback port in a private folder under STATE that is removed
afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Self

# Imported before any MODELSHIP_CACHE is set: devstack resolves the shared cache (Azurite's npm
# install, the base rootfs) at import time, and the benchmarks must keep using that one.
import devstack
from bench import STATE
from devstack import components, rootfs, stack
from modelship import net

SHARED_CACHE = devstack.CACHE_DIR


def private_cache(root: Path) -> Path:
    """A MODELSHIP_CACHE whose model cache is private and empty, the rest (wheelhouse, test venvs,
    Azurite's npm install, base rootfs) links to the shared cache: those are keyed by their inputs and
    rebuilding them would measure PyPI and debootstrap, not modelship."""
    cache = root / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    for name in ("wheels", "testenv", "azurite", "base"):
        (SHARED_CACHE / name).mkdir(exist_ok=True)
        link = cache / name
        if not link.is_symlink():
            link.symlink_to(SHARED_CACHE / name)
    (cache / "models").mkdir(exist_ok=True)
    return cache


def clear_model_cache(env: dict[str, str]) -> None:
    models = Path(env["MODELSHIP_CACHE"]) / "models"
    shutil.rmtree(models, ignore_errors=True)
    models.mkdir(parents=True)


class Running:
    """`with thing as t:` start() brings it up; stop() takes down whatever is up, also after a start() that
    failed half-way (a component left running would hold its port and folder past the benchmark)."""

    def start(self) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class BenchStack(Running):
    """Docker engine + registry + Azurite on free loopback ports, in a private folder; always stopped."""

    def __init__(self, name: str) -> None:
        self.root = STATE / name
        if self.root.exists():
            shutil.rmtree(self.root, ignore_errors=True)
        self.root.mkdir(parents=True)
        self.docker = components.DockerEngine(self.root / "docker")
        self.registry = components.Registry(self.root / "registry", port=net.free_port())
        self.azurite = components.Azurite(self.root / "azurite", port=net.free_port())
        self.cache = private_cache(self.root)

    def start(self) -> None:
        self.docker.start()
        self.docker.ensure_base_image()
        self.registry.start()
        self.azurite.start()

    def stop(self) -> None:
        for component in (self.azurite, self.registry, self.docker):
            with contextlib.suppress(Exception):
                component.stop()
        if not os.environ.get("MODELSHIP_BENCH_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)

    def env(self, container: str = "bench-models") -> dict[str, str]:
        """Settings and connections for modelship and the DAGs, like tests/e2e's pipeline_env."""
        return {
            "MODELSHIP_STATE": str(self.root / "modelship"),
            "MODELSHIP_CACHE": str(self.cache),
            "MODELSHIP_MODEL_STORE": f"wasb:{container}",
            "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
            "MODELSHIP_DOCKER_HOST": self.docker.url,
            "MODELSHIP_DOCKER_DEPLOY_PORT": str(net.free_port()),
            **stack.connections(self.registry, self.azurite),
        }

    def apply(self, env: dict[str, str]) -> None:
        os.environ.update(env)

    def docker_api(self):
        import docker

        return docker.APIClient(base_url=self.docker.url, timeout=600)


def app_tests_argv(engine_url: str, checkout: Path, cache: Path, *pytest_args: str) -> list[str]:
    """`docker run` of the app's tests as a plain script would: the ci test step's environment image (built or
    reused by modelship.apptests) and its pytest command, the checkout bind-mounted read-only, no network."""
    from modelship import apptests
    from modelship.settings import Settings

    env = apptests.environment(checkout, cache)
    command = apptests.pytest_command(("tests/app",), env, Settings.get().apptests_cpus)
    settings = [f"{key}={value}" for key, value in apptests.TEST_ENVIRONMENT.items()]
    return ["docker", "-H", engine_url, "run", "--rm", "--network", "none", "--user", apptests.TEST_USER,
            "--sysctl", "net.ipv4.tcp_migrate_req=1", "-v", f"{checkout}:{apptests.SRC}:ro", "-w", apptests.SRC,
            *[arg for setting in settings for arg in ("-e", setting)], env.image,
            *command[:-1], *pytest_args, command[-1]]  # fmt: skip
