"""The kubernetes target (AKS, or any cluster a kubeconfig reaches), one concern per module:

    manifests   render an overlay, pin the image by digest, annotate lineage; read a Deployment back
    rollout     where a rollout stands and how to undo it (pure logic, kubectl's rules)
    cluster     the API calls: apply, namespace, imagePullSecret, observe, wait
    target      the release: deploy → verify → roll back, status
"""

from modelship.deploy.kubernetes.manifests import RenderFailed, dockerconfigjson, pin_and_annotate
from modelship.deploy.kubernetes.rollout import (
    REVISION,
    STARTUP_SLACK,
    RollbackFailed,
    RolloutFailed,
    RolloutState,
    hopeless,
    previous_replica_set,
    rollout_state,
    startup_budget,
    summarize_pods,
    undo_patch,
)
from modelship.deploy.kubernetes.target import KubernetesTarget

__all__ = [
    "REVISION", "STARTUP_SLACK", "KubernetesTarget", "RenderFailed", "RollbackFailed", "RolloutFailed", "RolloutState",
    "dockerconfigjson", "hopeless", "pin_and_annotate", "previous_replica_set", "rollout_state", "startup_budget",
    "summarize_pods", "undo_patch",
]  # fmt: skip
