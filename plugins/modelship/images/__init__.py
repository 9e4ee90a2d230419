"""Build, smoke-test and push the serving image (Docker provider's DockerHook / docker-py low-level API).

CI's build, smoke-test and push steps: `wheelhouse` + `build_context` + `build_image` turn app/ and a model
package into an image whose labels carry its lineage; `smoke_test` runs that image the way production will and
asks it the questions a user would; `push_image` sends it to the registry and returns the digest everything
downstream refers to.

    engine      DockerHook / APIClient / DockerClient: the credential-free engine_client, the logged-in
                docker_hook (push, base-image pulls), and what an engine outage is
    wheelhouse  the app's wheels, once per requirements set (pinned requirements only, wheels only)
    build       context, build (no network for RUN steps), lineage labels, the base image
    smoke       the smoke test (and the sweep of a dead worker's leftovers)
    push        push with retries; the registry's digest

Every function takes a `DockerHook`, a `docker.APIClient` or a `docker.DockerClient` so the DAGs can hand
over a hook (engine_client, or docker_hook for the push), and tests the harness's client.
"""

from modelship.images.build import (
    LINEAGE_LABELS,
    BaseImageUnavailable,
    ImageBuildError,
    ImageRef,
    Lineage,
    build_context,
    build_image,
    ensure_base_image,
)
from modelship.images.engine import EngineUnavailable, docker_hook, engine_client
from modelship.images.push import ImagePushError, Pushed, push_image
from modelship.images.smoke import (
    SMOKE_EXPIRES_LABEL,
    SMOKE_GRACE,
    SMOKE_LABEL,
    SMOKE_MEM_LIMIT,
    SMOKE_PIDS_LIMIT,
    SMOKE_SAMPLE_INDEX,
    SmokeTestFailed,
    sample_digit,
    smoke_test,
    sweep_smoke_leftovers,
)
from modelship.images.wheelhouse import (
    IndexUnavailable,
    RequirementsRefused,
    WheelhouseError,
    pinned_requirements,
    wheelhouse,
)

__all__ = [
    "LINEAGE_LABELS", "SMOKE_EXPIRES_LABEL", "SMOKE_GRACE", "SMOKE_LABEL", "SMOKE_MEM_LIMIT", "SMOKE_PIDS_LIMIT",
    "SMOKE_SAMPLE_INDEX", "BaseImageUnavailable", "EngineUnavailable", "ImageBuildError", "ImagePushError", "ImageRef",
    "IndexUnavailable", "Lineage", "Pushed", "RequirementsRefused", "SmokeTestFailed", "WheelhouseError",
    "build_context", "build_image", "docker_hook", "engine_client", "ensure_base_image", "pinned_requirements",
    "push_image", "sample_digit", "smoke_test", "sweep_smoke_leftovers", "wheelhouse",
]  # fmt: skip
