"""modelship.overview: the one read behind `modelship status | history` and the Deployments page.

The Asset events come from a stand-in for the REST client (the real api-server path is in
tests/e2e/test_deployments_page.py); the model store, the source repository and the unreachable targets are
real: a local store, a git repository, a Docker socket that does not exist and a cluster with no connection.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from modelship import overview
from modelship.lineage import DeploymentRecord, ImageEvent, ModelEvent, Quarantine

T0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
REPO = "127.0.0.1:5000/modelship/digits-app"


def digest(n: int) -> str:
    return f"sha256:{n:064x}"


class Events:
    """What AirflowAPI.asset_events yields: .extra, .source_dag_id, .source_run_id, .timestamp."""

    def __init__(self, events: dict[str, list[tuple[Any, str, str]]], broken: tuple[str, ...] = ()) -> None:
        self.events, self.broken = events, broken

    def asset_events(self, name: str):
        if name in self.broken:
            raise RuntimeError(f"HTTP 403 Forbidden reading {name}")
        for i, (artifact, dag_id, run_id) in enumerate(self.events.get(name, [])):
            yield SimpleNamespace(extra=artifact.as_dict(), source_dag_id=dag_id, source_run_id=run_id,
                                  timestamp=T0 + timedelta(minutes=i))  # fmt: skip


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, packages: dict[str, Path]):
    from modelship.model_store import open_store
    from modelship.settings import Settings

    source = tmp_path / "source"
    subprocess.run(["git", "init", "-q", "-b", "main", str(source)], check=True)
    for n in (1, 2):
        (source / "f").write_text(str(n))
        subprocess.run(["git", "-C", str(source), "add", "f"], check=True)
        subprocess.run(["git", "-C", str(source), "-c", "user.name=t", "-c", "user.email=t@localhost", "commit", "-qm",
                        str(n)], check=True)  # fmt: skip
    monkeypatch.setenv("MODELSHIP_MODEL_STORE", f"local:{tmp_path / 'store'}")
    monkeypatch.setenv("MODELSHIP_SOURCE_REPO", str(source))
    monkeypatch.setenv("MODELSHIP_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MODELSHIP_DOCKER_HOST", f"unix://{tmp_path / 'no-such-docker.sock'}")
    monkeypatch.delenv("AIRFLOW_CONN_MODELSHIP_KUBERNETES", raising=False)
    store = open_store()
    for version in ("v1", "v2"):
        store.publish(packages[version])
    store.promote("digits", "v2", "production")
    store.promote("digits", "v1", "staging")
    head = subprocess.run(["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    return Settings.get(), head.strip(), store


def story(head: str, store) -> dict[str, list[tuple[Any, str, str]]]:
    """v1 built and deployed, v2 built and rolled back (quarantined), v1 serving again."""
    v1_sha, v2_sha = store.manifest_sha256("digits", "v1"), store.manifest_sha256("digits", "v2")
    v1 = ImageEvent(REPO, f"{head[:12]}-v1", digest(1), head, "v1", v1_sha, "digits")
    v2 = ImageEvent(REPO, f"{head[:12]}-v2", digest(2), head, "v2", v2_sha, "digits")
    served = {"image_digest": digest(1), "commit": head, "model_version": "v1", "image": f"{REPO}@{digest(1)}"}

    def record(image: ImageEvent, outcome: str, minute: int, run: str) -> DeploymentRecord:
        at = (T0 + timedelta(minutes=minute)).isoformat()
        return DeploymentRecord("docker", image.ref, image.digest, head, image.model_version, outcome, at, at,
                                "release", run, serving_after=served, approved_by="ops" if minute == 30 else "")

    return {
        "image": [(v1, "ci", "ci_1"), (v1.replace(rebuilt=False), "ci", "ci_3"), (v2, "ci", "ci_2")],
        "deployments": [(record(v1, "deployed", 10, "rel_1"), "release", "rel_1"),
                        (record(v2, "rolled_back", 20, "rel_2"), "release", "rel_2"),
                        (record(v1, "deployed", 30, "rel_3"), "release", "rel_3")],
        "quarantine": [(Quarantine(digest(2), "quarantined", T0.isoformat(), v2.ref, head, "v2", "rollout failed",
                                   "docker", "rel_2"), "release", "rel_2")],
        "model": [(ModelEvent("digits", "v2", v2_sha, 0.97), "model_refresh", "mr_2")],
    }  # fmt: skip


def test_the_picture_links_every_fact_to_its_run_and_survives_unreachable_targets(settings) -> None:
    config, head, store = settings
    page = overview.overview(Events(story(head, store)), config)

    assert page["errors"] == {}
    docker, kubernetes = page["targets"]
    assert (docker["name"], docker["status"]["reachable"]) == ("docker", False)
    assert "DockerException" in docker["status"]["error"] or "docker" in docker["status"]["error"].lower()
    assert kubernetes["status"]["reachable"] is False and kubernetes["status"]["error"]  # no connection defined

    # The desired state: HEAD x v2 (what `production` names); v2 is quarantined, so it is not deployable.
    assert page["desired"]["model_version"] == "v2" and page["desired"]["deployable"] is False
    assert "rollout failed" in page["desired"]["quarantine"]
    assert page["desired"]["ci_run"] == {"dag_id": "ci", "run_id": "ci_2"}

    # History newest first; each row links its release run and the ci run that built its image (the build,
    # not a later announcement of it).
    assert [(r["run_id"], r["outcome"]) for r in page["history"]] == [
        ("rel_3", "deployed"), ("rel_2", "rolled_back"), ("rel_1", "deployed")]  # fmt: skip
    assert page["history"][0]["run"] == {"dag_id": "release", "run_id": "rel_3"}
    assert page["history"][0]["ci_run"] == {"dag_id": "ci", "run_id": "ci_1"}
    assert page["history"][0]["approved_by"] == "ops" and page["history"][0]["deployable"] is True
    assert page["history"][1]["quarantined"] is True and page["history"][0]["quarantined"] is False

    [held] = page["quarantined"]
    assert held["digest"] == digest(2) and held["run"] == {"dag_id": "release", "run_id": "rel_2"}

    v2, v1 = page["models"]
    assert (v2["version"], v2["aliases"], v2["promoted_by"]) == ("v2", ["production"], {"dag_id": "model_refresh",
                                                                                        "run_id": "mr_2"})  # fmt: skip
    assert (v1["version"], v1["aliases"], v1["promoted_by"]) == ("v1", ["staging"], None)
    assert 0.9 < v2["accuracy"] <= 1.0


def test_a_section_that_cannot_be_read_is_named_and_the_rest_still_shows(settings) -> None:
    config, head, store = settings
    page = overview.overview(Events(story(head, store), broken=("quarantine",)), config)
    assert "HTTP 403" in page["errors"]["quarantines"]
    assert page["quarantined"] == [] and len(page["history"]) == 3 and len(page["models"]) == 2


def test_a_lifted_quarantine_is_no_longer_listed(settings) -> None:
    config, head, store = settings
    events = story(head, store)
    held = events["quarantine"][0][0]
    events["quarantine"].append((held.replace(action="released", by="admin"), "", ""))
    page = overview.overview(Events(events), config)
    assert page["quarantined"] == [] and page["desired"]["deployable"] is True
    assert page["history"][1]["quarantined"] is False


@pytest.mark.parametrize(
    "status, expected",
    [
        ({"serving": False}, (False, "nothing serving")),
        ({"serving": True, "health": "healthy"}, (True, "healthy")),
        ({"serving": True, "health": "unhealthy"}, (False, "unhealthy")),
        ({"serving": True, "replicas": "2/2"}, (True, "2/2 replicas ready")),
        ({"serving": True, "replicas": "1/2"}, (False, "1/2 replicas ready")),
        ({"serving": True}, (True, "running")),
    ],
)
def test_health_in_words(status: dict[str, Any], expected: tuple[bool, str]) -> None:
    assert overview.health(status) == expected
