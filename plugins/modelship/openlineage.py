"""modelship's artifacts as OpenLineage datasets: commit, model version, image, deployment.

Airflow's OpenLineage provider turns an Asset into a dataset only for URI schemes some provider knows
(file://, s3://…); modelship's Assets (``modelship://model`` …) are not among them, and one Asset stands
for every version of the artifact anyway. So this extractor maps each task's *returned value* (the
candidate / image / deployment dicts the steps hand each other as XCom) to datasets that name the exact
artifact:

============  ==============================  =======================================================
artifact      namespace                       name
============  ==============================  =======================================================
commit        ``git://<source repo>``         the full commit sha
model         ``modelstore://<kind>/<where>`` ``<model>/<version>`` (manifest sha256 as its version)
image         ``docker://<registry>``         ``<repository>@<digest>``
deployment    ``deploy://<target>``           where it serves (``127.0.0.1:<port>`` or ``<ns>/<overlay>``)
============  ==============================  =======================================================

Each dataset carries the standard ``version`` and ``datasetType`` facets and a ``modelship`` facet
with the identifiers (sha256, digest, commit, model version, tag, revision) as the task returned them.

Enabled with ``AIRFLOW__OPENLINEAGE__EXTRACTORS=modelship.openlineage.ModelshipExtractor`` (``make up``
sets it). It only speaks for DAGs tagged ``modelship``; any other TaskFlow task gets what the provider
would have given it (nothing here, so hook lineage and declared inlets/outlets apply as before).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import attr
from airflow.providers.openlineage.extractors.base import BaseExtractor, OperatorLineage
from openlineage.client.event_v2 import Dataset
from openlineage.client.facet_v2 import DatasetFacet, dataset_type_dataset, dataset_version_dataset

if TYPE_CHECKING:
    # Imported where it is used, never at module level: the provider imports this module when Airflow's
    # scheduler, dag-processor and executor start, and every task process forks from them. A modelship
    # module imported here would be cached in all of them, so tasks would run it as it was at start-up
    # and DAG files importing a newer name from it would fail until Airflow restarts.
    from modelship.settings import Settings

DAG_TAG = "modelship"
FACET = "modelship"
# A custom facet must name its schema by URL; consumers (Marquez, …) store it, they do not fetch it. The
# reserved .invalid domain says plainly that nothing is published there: the fields are documented below.
SCHEMA_URL = "https://modelship.invalid/spec/facets/1-0-0/ModelshipArtifactDatasetFacet.json"


@attr.define
class ModelshipArtifactDatasetFacet(DatasetFacet):
    """What modelship knows of an artifact: its kind and identifiers (absent ones are left out)."""

    artifact: str  # commit | model | image | deployment
    sha256: str | None = attr.field(default=None)  # model: manifest sha256
    digest: str | None = attr.field(default=None)  # image: registry manifest digest
    commit: str | None = attr.field(default=None)
    modelName: str | None = attr.field(default=None)  # noqa: N815 (OpenLineage facets are camelCase)
    modelVersion: str | None = attr.field(default=None)  # noqa: N815
    tag: str | None = attr.field(default=None)
    accuracy: float | None = attr.field(default=None)
    target: str | None = attr.field(default=None)
    revision: str | None = attr.field(default=None)

    # Identifiers, not secrets: keep Airflow's secrets masker away from them.
    _additional_skip_redact: ClassVar[list[str]] = [
        "artifact", "sha256", "digest", "commit", "modelName", "modelVersion", "tag", "target", "revision",
    ]  # fmt: skip

    @staticmethod
    def _get_schema() -> str:
        return SCHEMA_URL


def _dataset(namespace: str, name: str, version: str, dataset_type: str, **identifiers: Any) -> Dataset:
    facet = ModelshipArtifactDatasetFacet(
        artifact=dataset_type.lower(), **{k: v for k, v in identifiers.items() if v not in (None, "")}
    )
    return Dataset(
        namespace=namespace,
        name=name,
        facets={
            "version": dataset_version_dataset.DatasetVersionDatasetFacet(datasetVersion=version),
            "datasetType": dataset_type_dataset.DatasetTypeDatasetFacet(datasetType=dataset_type),
            FACET: facet,
        },
    )


# --- one function per artifact: namespaces and names in one place ----------------------------------------


def git_namespace(source_repo: str) -> str:
    """``git://host/path`` for a URL (scheme and user dropped), ``git://<abs path>`` for a local checkout."""
    from modelship.source import public_url

    if "://" in source_repo:
        source_repo = public_url(source_repo).split("://", 1)[1]
    elif ":" in source_repo.split("/", 1)[0]:  # scp-like git@host:org/repo.git
        host, path = source_repo.split(":", 1)
        source_repo = f"{host.split('@', 1)[-1]}/{path}"
    return f"git://{source_repo.rstrip('/')}"


def store_namespace(model_store: str) -> str:
    """``modelstore://wasb/<container>`` or ``modelstore://local/<path>`` from MODELSHIP_MODEL_STORE."""
    kind, _, where = model_store.partition(":")
    return f"modelstore://{kind}/{where.strip('/')}"


def commit_dataset(settings: Settings, commit: str) -> Dataset:
    return _dataset(git_namespace(settings.source_repo), commit, commit, "COMMIT", commit=commit)


def model_dataset(settings: Settings, name: str, version: str, sha256: str, accuracy: float | None = None) -> Dataset:
    return _dataset(
        store_namespace(settings.model_store),
        f"{name}/{version}",
        sha256,
        "MODEL",
        sha256=sha256,
        modelName=name,
        modelVersion=version,
        accuracy=accuracy,
    )


def image_dataset(reference: str, **identifiers: Any) -> Dataset:
    """``REGISTRY/REPOSITORY@sha256:…`` → namespace docker://REGISTRY, name REPOSITORY@sha256:…"""
    registry, _, repository_at_digest = reference.partition("/")
    digest = repository_at_digest.rpartition("@")[2]
    return _dataset(f"docker://{registry}", repository_at_digest, digest, "IMAGE", digest=digest, **identifiers)


def deployment_dataset(settings: Settings, event: Mapping[str, Any]) -> Dataset:
    target = str(event["target"])
    where = (
        f"127.0.0.1:{settings.docker_deploy_port}"
        if target == "docker"
        else f"{settings.kube_namespace}/{settings.kube_overlay}"
    )
    return _dataset(
        f"deploy://{target}",
        where,
        str(event.get("revision") or event["image_digest"]),
        "DEPLOYMENT",
        target=target,
        digest=event.get("image_digest"),
        commit=event.get("commit"),
        modelVersion=event.get("model_version"),
        revision=event.get("revision"),
    )


def lineage_of(value: Any, settings: Settings) -> OperatorLineage:
    """Inputs and outputs of a modelship task, from the artifact it returned (modelship.lineage; else none).

    deployment → in: image, out: deployment;  image event → in: commit + model, out: image;  release image,
    deployment record, quarantine → in: image;  build (ci's steps) → in: commit + model;  model event →
    out: model;  validated model → in: model.
    """
    from modelship.lineage import (
        Build,
        DeploymentEvent,
        DeploymentRecord,
        ImageEvent,
        ModelEvent,
        Quarantine,
        ReleaseImage,
        ValidatedModel,
        from_xcom,
    )

    artifact = from_xcom(value)
    if isinstance(artifact, DeploymentEvent):
        image = image_dataset(artifact.image, commit=artifact.commit, modelVersion=artifact.model_version)
        return OperatorLineage(inputs=[image], outputs=[deployment_dataset(settings, artifact.as_dict())])
    if isinstance(artifact, ImageEvent):
        image = image_dataset(artifact.ref, tag=artifact.tag, commit=artifact.commit,
                              modelVersion=artifact.model_version, sha256=artifact.model_sha256)  # fmt: skip
        return OperatorLineage(inputs=_sources(settings, artifact), outputs=[image])
    if isinstance(artifact, ReleaseImage | DeploymentRecord | Quarantine):
        image = image_dataset(artifact.image, commit=artifact.commit, modelVersion=artifact.model_version)
        return OperatorLineage(inputs=[image])
    if isinstance(artifact, Build):
        return OperatorLineage(inputs=_sources(settings, artifact))
    if isinstance(artifact, ModelEvent):  # ValidatedModel is one too
        model = model_dataset(settings, artifact.name, artifact.version, artifact.sha256, artifact.accuracy)
        if isinstance(artifact, ValidatedModel):  # model_refresh.validate read it
            return OperatorLineage(inputs=[model])
        return OperatorLineage(outputs=[model])  # model_refresh.promote: the `model` event
    return OperatorLineage()


def _sources(settings: Settings, built: Any) -> list[Dataset]:
    """The commit and the model version an image is (being) built from."""
    name = built.model_name or settings.model_name
    return [
        commit_dataset(settings, built.commit),
        model_dataset(settings, name, built.model_version, built.model_sha256),
    ]


class ModelshipExtractor(BaseExtractor):
    """TaskFlow tasks of modelship's DAGs: datasets from the task's return value (see lineage_of)."""

    @classmethod
    def get_operator_classnames(cls) -> list[str]:
        return ["_PythonDecoratedOperator"]  # @task; the provider has no extractor of its own for it

    def _ours(self) -> bool:
        dag = getattr(self.operator, "dag", None)
        return DAG_TAG in set(getattr(dag, "tags", None) or ())

    def _execute_extraction(self) -> OperatorLineage | None:
        # On start the task has returned nothing yet: its datasets come with the COMPLETE event.
        return OperatorLineage()

    def extract_on_complete(self, task_instance) -> OperatorLineage | None:
        if not self._ours():
            return OperatorLineage()
        from modelship.settings import Settings  # in the task's process: the code the task itself ran

        value = task_instance.xcom_pull(
            task_ids=task_instance.task_id, key="return_value", map_indexes=task_instance.map_index
        )
        return lineage_of(value, Settings.get())

    def extract_on_failure(self, task_instance) -> OperatorLineage | None:
        return OperatorLineage()  # a failed task returned nothing
