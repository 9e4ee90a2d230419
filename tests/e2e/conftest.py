"""The whole pipeline against real components: Azurite as the model store, the real registry and
Docker engine, a migrated Airflow DB for dag.test(), and this repository (or a throwaway clone of it
with one bad commit) as the source.

Caches that only save time (wheelhouse, the app's test venv) live under ~/.cache/modelship so repeated
CI runs on one machine skip the downloads; everything that carries state is per session.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import devstack
from devstack import components, rootfs
from modelship import net
from modelship.lineage import CONTAINER_PORT
from tests.e2e.pipeline import REPO, git, run_dag


@pytest.fixture(scope="session")
def pipeline_env(
    tmp_path_factory: pytest.TempPathFactory,
    azurite: components.Azurite,
    registry: components.Registry,
    docker_engine: components.DockerEngine,
    docker_client,
    airflow_db: Path,
) -> Iterator[dict[str, str]]:
    """Settings and connections for the DAGs, pointing at the session's real components."""
    state = tmp_path_factory.mktemp("modelship-state")
    # The source: a clone of this repository whose branch `main` is this checkout's HEAD (whatever branch the
    # checkout itself is on), so "the newest commit of the branch" is well defined and tests may add commits.
    source = tmp_path_factory.mktemp("source") / "repo"
    git("clone", "-q", "--no-hardlinks", str(REPO), str(source))
    git("checkout", "-q", "-B", "main", git("rev-parse", "HEAD"), cwd=source)
    env = {
        "MODELSHIP_STATE": str(state),
        "MODELSHIP_CACHE": str(devstack.CACHE_DIR),  # wheelhouse and test venv shared with tests/plugins
        "MODELSHIP_MODEL_STORE": "wasb:e2e-models",
        "MODELSHIP_BASE_IMAGE": rootfs.BASE_IMAGE,
        "MODELSHIP_DOCKER_HOST": docker_engine.url,
        "MODELSHIP_SOURCE_REPO": str(source),
        "MODELSHIP_SOURCE_BRANCH": "main",
        "MODELSHIP_DOCKER_DEPLOY_PORT": str(net.free_port()),
        **components.airflow_connections(
            {"modelship_blob": azurite.connection, "modelship_registry": registry.connection}
        ),
    }
    with pytest.MonkeyPatch.context() as mp:
        for key, value in env.items():
            mp.setenv(key, value)
        yield env
    # What the releases left serving (a failed story stops halfway) must not stay on the shared engine.
    ours = {"label": f"{CONTAINER_PORT}={env['MODELSHIP_DOCKER_DEPLOY_PORT']}"}
    for container in docker_client.containers.list(all=True, filters=ours):
        container.remove(force=True)


@pytest.fixture(scope="session")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good model versions, trained once per session (offline, from scikit-learn's digits)."""
    from training.train import train_package

    root = tmp_path_factory.mktemp("trained")
    versions = ("v1", "v2", "v3", "v4")
    for seed, version in enumerate(versions):
        train_package(root / version, version=version, seed=seed)
    return {version: root / version for version in versions}


@pytest.fixture(scope="session")
def promoted_v1(pipeline_env: dict[str, str], trained: dict[str, Path]) -> dict[str, Any]:
    from modelship.model_store import open_store

    store = open_store()
    manifest = store.publish(trained["v1"])
    store.promote("digits", "v1", "production")
    return manifest


@pytest.fixture(scope="session")
def ci_v1(pipeline_env: dict[str, str], promoted_v1: dict[str, Any]):
    """One green ci run of this repository's HEAD with model v1: (commit, dag_run)."""
    commit = git("rev-parse", "HEAD")
    return commit, run_dag("ci", {"commit": commit})
