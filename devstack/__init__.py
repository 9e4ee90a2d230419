"""The development stack: everything that stands in for Azure on one machine, and nothing that ships.

    python -m devstack up [--k8s]       `make up`: Docker engine, registry, Azurite, Airflow (+ the local cluster)
    python -m devstack demo             `make demo`: the whole story through Airflow's REST API
    python -m devstack distributed up   `make up-distributed`: the compose stack (Postgres, Redis, Celery workers)
    python -m devstack cluster up       the local Kubernetes cluster alone (k8s-local/)

Never imported by the pipeline (plugins/modelship) and never copied into an image that ships: the runtime
knows only connections and settings, and this package is what points them at local stand-ins.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Expensive, reusable things (Azurite's npm install, root filesystems, image tarballs) are cached per machine,
# so a fresh clone on a used machine does not pay for them twice.
CACHE_DIR = Path(os.environ.get("MODELSHIP_CACHE", Path.home() / ".cache" / "modelship"))


class StackError(RuntimeError):
    """A local component could not be installed or started; the message says which and why."""
