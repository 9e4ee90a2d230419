"""Defaults and connection ids, in one place.

Every value can be overridden by an environment variable (the name is next to it). Credentials are
never settings: they live in Airflow connections, and only the connection *ids* are named here.
Values are read when a task runs (``get()``), never at DAG-parse time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


# Every DAG's tasks: an owner, and retries with exponential backoff for the network steps (verdicts such as
# failing tests or a failed gate skip the retries: modelship.verdicts). The integrity test checks all of it.
DEFAULT_ARGS = {
    "owner": "modelship",
    "retries": 3,
    "retry_delay": timedelta(seconds=10),
    "retry_exponential_backoff": True,
    "max_retry_delay": timedelta(minutes=2),
    "execution_timeout": timedelta(minutes=30),
}


def _env(name: str, default: str) -> str:
    return os.environ.get(name) or default


def _names(value: str) -> tuple[str, ...]:
    """A comma- (or space-) separated list: "kubernetes, docker" → ("kubernetes", "docker")."""
    return tuple(item for item in value.replace(",", " ").split() if item)


@dataclass(frozen=True)
class Settings:
    # Connection ids (documented in README "Connections").
    wasb_conn_id: str  # MODELSHIP_WASB_CONN_ID: Azure Blob Storage (conn type wasb)
    registry_conn_id: str  # MODELSHIP_REGISTRY_CONN_ID: container registry (conn type docker)
    kube_conn_id: str  # MODELSHIP_KUBE_CONN_ID: Kubernetes cluster (conn type kubernetes)
    smtp_conn_id: str  # MODELSHIP_SMTP_CONN_ID: where failure notices are mailed from (conn type smtp)
    chat_conn_id: str  # MODELSHIP_CHAT_CONN_ID: a Slack or Teams incoming webhook for failure notices (http)

    # Model store: "local:/abs/path" or "wasb:<container>" (through wasb_conn_id).
    model_store: str  # MODELSHIP_MODEL_STORE
    model_name: str  # MODELSHIP_MODEL_NAME
    model_alias: str  # MODELSHIP_MODEL_ALIAS: the alias CI builds from and model_refresh promotes

    # Source and build.
    source_repo: str  # MODELSHIP_SOURCE_REPO: a git URL or path; default this project's own repository
    source_branch: str  # MODELSHIP_SOURCE_BRANCH
    image_repository: str  # MODELSHIP_IMAGE_REPOSITORY: repository path inside the registry
    base_image: str  # MODELSHIP_BASE_IMAGE: python:3.11-slim where it can be pulled
    docker_host: str  # MODELSHIP_DOCKER_HOST (else DOCKER_HOST): the engine that builds and runs

    # Release.
    deploy_target: str  # MODELSHIP_DEPLOY_TARGET: "docker" (one host) or "kubernetes"
    release_schedule: str  # MODELSHIP_RELEASE_SCHEDULE: cron, nightly by default
    docker_deploy_port: int  # MODELSHIP_DOCKER_DEPLOY_PORT: where the docker target serves the app
    kube_namespace: str  # MODELSHIP_KUBE_NAMESPACE
    kube_overlay: str  # MODELSHIP_KUBE_OVERLAY: k8s/overlays/<name>, or a path to an overlay folder
    rollout_timeout: float  # MODELSHIP_ROLLOUT_TIMEOUT: seconds a kubernetes rollout may take before it is rolled back
    # MODELSHIP_APPROVAL_TARGETS: targets whose releases wait for a person to approve them in the Airflow UI,
    # comma-separated (e.g. "kubernetes"); none by default. Read when the release DAG is parsed.
    approval_targets: tuple[str, ...]
    approval_timeout: float  # MODELSHIP_APPROVAL_TIMEOUT: seconds an approval may wait; then it is a rejection

    # Failure notices: to whom (MODELSHIP_NOTIFY_EMAIL, comma-separated; none: no e-mail), through smtp_conn_id.
    notify_email: tuple[str, ...]

    # Local state: per-run workspaces, caches (model cache, wheelhouse, test environments).
    state_dir: Path  # MODELSHIP_STATE

    # The app's tests (modelship.apptests): a throwaway container with no network and these limits.
    apptests_memory: str = "3g"  # MODELSHIP_APPTESTS_MEMORY: memory (and memory+swap) of the test container
    apptests_cpus: float = 2.0  # MODELSHIP_APPTESTS_CPUS: CPUs the tests may use
    apptests_pids: int = 1024  # MODELSHIP_APPTESTS_PIDS: processes and threads the tests may start
    apptests_timeout: float = 1200.0  # MODELSHIP_APPTESTS_TIMEOUT: seconds before the tests are killed (red)
    # MODELSHIP_APPTESTS_ALLOW_SDIST=1: the test requirements may be source packages. Their setup.py then runs
    # while the test environment is built: inside the image build (uid 10001, no credentials, no mounts), but on
    # the host network, which the install needs to reach MODELSHIP_APPTESTS_INDEX_URL. Off: wheels only, and
    # the build has no network at all. docs/security.md, "Containment".
    apptests_allow_sdist: bool = False
    apptests_index_url: str = "https://pypi.org/simple"  # MODELSHIP_APPTESTS_INDEX_URL: for sdists; no credential

    # Retention (modelship.retention: `modelship gc`, the maintenance DAG). What serves, is promoted, quarantined,
    # a rollback target or the desired state is always kept on top of these.
    keep_images: int = 10  # MODELSHIP_KEEP_IMAGES: newest app images kept in the registry and on the engine
    keep_model_versions: int = 5  # MODELSHIP_KEEP_MODEL_VERSIONS: newest versions kept per model in the store
    cache_max_idle_days: float = 14.0  # MODELSHIP_CACHE_MAX_IDLE_DAYS: test envs and wheelhouses unused longer go
    gc_grace_hours: float = 6.0  # MODELSHIP_GC_GRACE_HOURS: engine images younger than this stay (a ci run's)
    maintenance_schedule: str = "0 3 * * 0"  # MODELSHIP_MAINTENANCE_SCHEDULE: weekly, after a nightly release
    registry_gc_command: str = ""  # MODELSHIP_REGISTRY_GC_COMMAND: reclaims the registry's blobs after deletes

    @property
    def cache_dir(self) -> Path:
        # MODELSHIP_CACHE: caches may outlive the state folder (wheelhouse, test venvs, model cache).
        return Path(_env("MODELSHIP_CACHE", str(self.state_dir / "cache")))

    @property
    def work_dir(self) -> Path:
        return self.state_dir / "work"

    @property
    def overlay_dir(self) -> Path:
        """The kustomize overlay the kubernetes target renders: a name under k8s/overlays/, or a path."""
        if "/" in self.kube_overlay:
            return Path(self.kube_overlay)
        return REPO_ROOT / "k8s" / "overlays" / self.kube_overlay

    @classmethod
    def get(cls) -> Settings:
        state = Path(_env("MODELSHIP_STATE", str(REPO_ROOT / ".state")))
        return cls(
            wasb_conn_id=_env("MODELSHIP_WASB_CONN_ID", "modelship_blob"),
            registry_conn_id=_env("MODELSHIP_REGISTRY_CONN_ID", "modelship_registry"),
            kube_conn_id=_env("MODELSHIP_KUBE_CONN_ID", "modelship_kubernetes"),
            smtp_conn_id=_env("MODELSHIP_SMTP_CONN_ID", "modelship_smtp"),
            chat_conn_id=_env("MODELSHIP_CHAT_CONN_ID", "modelship_chat"),
            model_store=_env("MODELSHIP_MODEL_STORE", f"local:{state / 'models'}"),
            model_name=_env("MODELSHIP_MODEL_NAME", "digits"),
            model_alias=_env("MODELSHIP_MODEL_ALIAS", "production"),
            source_repo=_env("MODELSHIP_SOURCE_REPO", str(REPO_ROOT)),
            source_branch=_env("MODELSHIP_SOURCE_BRANCH", "main"),
            image_repository=_env("MODELSHIP_IMAGE_REPOSITORY", "modelship/digits-app"),
            base_image=_env("MODELSHIP_BASE_IMAGE", "python:3.11-slim"),
            docker_host=_env("MODELSHIP_DOCKER_HOST", _env("DOCKER_HOST", "unix:///var/run/docker.sock")),
            deploy_target=_env("MODELSHIP_DEPLOY_TARGET", "docker"),
            release_schedule=_env("MODELSHIP_RELEASE_SCHEDULE", "0 2 * * *"),
            docker_deploy_port=int(_env("MODELSHIP_DOCKER_DEPLOY_PORT", "8000")),
            kube_namespace=_env("MODELSHIP_KUBE_NAMESPACE", "modelship"),
            kube_overlay=_env("MODELSHIP_KUBE_OVERLAY", "aks"),
            rollout_timeout=float(_env("MODELSHIP_ROLLOUT_TIMEOUT", "600")),
            approval_targets=_names(_env("MODELSHIP_APPROVAL_TARGETS", "")),
            approval_timeout=float(_env("MODELSHIP_APPROVAL_TIMEOUT", str(24 * 3600))),
            notify_email=_names(_env("MODELSHIP_NOTIFY_EMAIL", "")),
            state_dir=state,
            apptests_memory=_env("MODELSHIP_APPTESTS_MEMORY", "3g"),
            apptests_cpus=float(_env("MODELSHIP_APPTESTS_CPUS", "2")),
            apptests_pids=int(_env("MODELSHIP_APPTESTS_PIDS", "1024")),
            apptests_timeout=float(_env("MODELSHIP_APPTESTS_TIMEOUT", "1200")),
            apptests_allow_sdist=_env("MODELSHIP_APPTESTS_ALLOW_SDIST", "0").lower() in ("1", "true", "yes", "on"),
            apptests_index_url=_env("MODELSHIP_APPTESTS_INDEX_URL", "https://pypi.org/simple"),
            keep_images=int(_env("MODELSHIP_KEEP_IMAGES", "10")),
            keep_model_versions=int(_env("MODELSHIP_KEEP_MODEL_VERSIONS", "5")),
            cache_max_idle_days=float(_env("MODELSHIP_CACHE_MAX_IDLE_DAYS", "14")),
            gc_grace_hours=float(_env("MODELSHIP_GC_GRACE_HOURS", "6")),
            maintenance_schedule=_env("MODELSHIP_MAINTENANCE_SCHEDULE", "0 3 * * 0"),
            registry_gc_command=_env("MODELSHIP_REGISTRY_GC_COMMAND", ""),
        )
