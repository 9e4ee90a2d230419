"""The release DAG from the desired state, end to end on the docker target: real images built by the ci
DAG, the real registry and Docker engine, and `modelship history | status | image` through Airflow's REST API.

One story, in order (each step is a module fixture the next builds on):
1. v1 is promoted and built: the release serves HEAD × v1.
2. v2: it serves HEAD × v2 (under a steady load: no request fails).
3. The data scientist rolls back (promotes v1 again): ci finds HEAD × v1 already pushed and announces it
   (nothing rebuilt, nothing pushed); the release serves the v1 image again.
4. Two newer commits A then B; ci for B finishes first, ci for A last: the release serves B (the newest
   commit on the branch that passed ci), not A (the last to finish).
5. v3 is promoted and its image (B × v3) breaks in production: the release is red, B × v1 serves again, and
   the image is quarantined (under load: no request fails). The next release is skipped naming the
   quarantine; no container of it is made.
6. v4 passes ci: the next release serves it.
The history then names every attempt, and `history --at T` is right between every pair of them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from bench.load import ConstantLoad, sample_request
from modelship.history import parse_time
from tests.e2e.pipeline import announce_image, asset_events, commit_to, push_broken, run_dag, task_states, why

pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]
LOAD_RATE = 60.0  # requests a second, each on a new connection, during the releases under load


def serving(port: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/version", timeout=10) as response:
        return json.load(response)


def cli(*args: str, env: dict[str, str] | None = None) -> Any:
    """`modelship ARGS --json` as a user runs it (the session's settings, plus `env`); its parsed output."""
    binary = Path(sys.executable).parent / "modelship"
    done = subprocess.run([str(binary), *args, "--json"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def release(**conf: Any):
    return run_dag("release", {"target": "docker", **conf})


def build(commit: str, expect_push: bool = True) -> dict[str, Any]:
    """A ci run of `commit` with the model the alias names now; its `image` event."""
    run = run_dag("ci", {"commit": commit})
    assert str(run.state) == "success", why(run)
    assert task_states(run)["push" if expect_push else "announce"] == "success", why(run)
    return asset_events("image")[-1]


@pytest.fixture(scope="module")
def story(ci_v1, pipeline_env, trained, tmp_path_factory, docker_client, registry) -> dict[str, Any]:
    from modelship.model_store import open_store

    port = pipeline_env["MODELSHIP_DOCKER_DEPLOY_PORT"]
    commit, ci_run = ci_v1
    assert str(ci_run.state) == "success", why(ci_run)
    store = open_store()
    out: dict[str, Any] = {"commit": commit, "served": [], "load": {}}

    def released(name: str, **conf: Any):
        run = release(**conf)
        out["served"].append((name, run.run_id, serving(port)))
        return run

    def released_under_load(name: str):
        """A release while clients send a steady 60 requests a second to the serving port."""
        with ConstantLoad(int(port), sample_request(), rate=LOAD_RATE) as load:
            time.sleep(2)  # steady state first
            run = released(name)
            time.sleep(2)
        out["load"][name] = load.summary()
        print(f"{name}: {load.summary()}", flush=True)
        return run

    # 1-2. v1, then v2.
    out["v1_image"] = [e for e in asset_events("image") if e["commit"] == commit and e["model_version"] == "v1"][-1]
    assert str(released("v1").state) == "success"
    store.publish(trained["v2"])
    store.promote("digits", "v2")
    out["v2_image"] = build(commit)
    assert str(released_under_load("v2").state) == "success"

    # 3. The rollback: v1 promoted again, announced by ci without a rebuild.
    store.promote("digits", "v1")
    out["v1_announced"] = build(commit, expect_push=False)
    out["v1_again"] = released("v1 again")

    # 4. Two newer commits; the older one's ci run finishes last.
    source = Path(pipeline_env["MODELSHIP_SOURCE_REPO"])
    older = commit_to(source, "README.md", "\nA newer commit (A).\n")
    newer = commit_to(source, "README.md", "\nThe newest commit (B).\n")
    out["newer_image"] = build(newer)
    out["older_image"] = build(older)
    out["newest"] = released("B × v1 (A finished last)")
    out["older"], out["newer"] = older, newer

    # 5. v3's image breaks in production (it passed ci: it stands in for such an image here).
    store.publish(trained["v3"])
    store.promote("digits", "v3")
    v3_sha = store.manifest_sha256("digits", "v3")
    base = f"{out['newer_image']['repository']}@{out['newer_image']['digest']}"
    tag = f"{newer[:12]}-v3"
    labels = {"io.modelship.model.version": "v3", "io.modelship.model.sha256": v3_sha}
    broken = push_broken(docker_client, registry, base, tag, labels)
    announce_image({**out["newer_image"], "tag": tag, "digest": broken, "model_version": "v3", "model_sha256": v3_sha})
    out["broken"] = broken
    out["broken_run"] = released_under_load("broken v3")
    since = datetime.now()
    out["skipped_run"] = released("v3 quarantined: skipped")
    out["containers_created"] = [
        e for e in docker_client.events(since=since, until=datetime.now(), decode=True, filters={"event": "create"})
    ]

    # 6. A fixed v4 passes ci and goes out.
    store.publish(trained["v4"])
    store.promote("digits", "v4")
    out["v4_image"] = build(newer)
    out["v4_run"] = released("v4")
    yield out
    for container in docker_client.containers.list(all=True, filters={"label": "io.modelship.role=app"}):
        container.remove(force=True)


def test_release_serves_the_desired_state_v1_then_v2(story) -> None:
    (_, _, v1), (_, _, v2) = story["served"][:2]
    assert (v1["commit"], v1["model"]["version"]) == (story["commit"], "v1")
    assert (v2["commit"], v2["model"]["version"]) == (story["commit"], "v2")


def test_a_model_rollback_reaches_production_without_a_rebuild(story) -> None:
    announced, first = story["v1_announced"], story["v1_image"]
    assert announced["digest"] == first["digest"] and announced["rebuilt"] is False
    assert (announced["layers_pushed"], announced["bytes_pushed"]) == (0, 0)
    run = story["v1_again"]
    assert str(run.state) == "success"
    _, _, now = story["served"][2]
    assert (now["commit"], now["model"]["version"]) == (story["commit"], "v1")
    [record] = [r for r in records() if r["run_id"] == run.run_id]
    assert record["image_digest"] == first["digest"] and record["outcome"] == "deployed"


def test_ci_runs_that_finish_out_of_order_cannot_ship_an_older_commit(story) -> None:
    assert asset_events("image").index(story["older_image"]) > asset_events("image").index(story["newer_image"])
    _, _, now = story["served"][3]
    assert now["commit"] == story["newer"] and now["model"]["version"] == "v1"


def test_a_broken_image_is_rolled_back_quarantined_and_not_tried_again(story, pipeline_env) -> None:
    run = story["broken_run"]
    states = task_states(run)
    assert str(run.state) == "failed" and states["deploy"] == "failed", states
    assert states["record"] == "success" and states["quarantine"] == "success", states
    _, _, after = story["served"][4]
    assert after["commit"] == story["newer"] and after["model"]["version"] == "v1"  # what served before
    [held] = [e for e in asset_events("quarantine") if e["digest"] == story["broken"]]
    assert held["action"] == "quarantined" and held["run_id"] == run.run_id
    assert "failed" in held["reason"] and "keeps serving" in held["reason"], held["reason"]

    skipped = story["skipped_run"]
    assert str(skipped.state) == "success"
    assert task_states(skipped) == {"select_image": "skipped", "deploy": "skipped", "record": "skipped",
                                    "quarantine": "skipped"}  # fmt: skip
    _, _, still = story["served"][5]
    assert still == after
    assert story["containers_created"] == []  # no container of the quarantined image (nor any other) was made


@pytest.mark.parametrize("name", ["v2", "broken v3"])
def test_a_release_under_steady_load_drops_no_request(story, name: str) -> None:
    # (a) v1 → v2, new and old side by side then the old one drained; (b) a broken image that fails its
    # verification and is rolled back (it never joins the serving port).
    load = story["load"][name]
    assert load["sent"] >= 4 * LOAD_RATE and load["rate"] >= 50, load
    assert (load["failed"], load["connection_errors"]) == (0, 0), load


def test_a_fixed_version_after_the_quarantine_is_released(story) -> None:
    assert str(story["v4_run"].state) == "success"
    _, _, now = story["served"][6]
    assert now["commit"] == story["newer"] and now["model"]["version"] == "v4"
    assert story["v4_image"]["digest"] != story["broken"]


def records() -> list[dict[str, Any]]:
    return [e for e in asset_events("deployments") if e.get("target") == "docker"]


def test_every_attempt_is_on_record_with_its_outcome_times_and_run(story) -> None:
    mine = {run_id for _, run_id, _ in story["served"]}
    ours = [r for r in records() if r["run_id"] in mine]
    assert [(r["model_version"], r["outcome"]) for r in ours] == [
        ("v1", "deployed"), ("v2", "deployed"), ("v1", "deployed"), ("v1", "deployed"), ("v3", "rolled_back"),
        ("v4", "deployed"),
    ]  # fmt: skip
    assert ours[3]["commit"] == story["newer"] and ours[4]["image_digest"] == story["broken"]
    assert ours[4]["serving_after"]["commit"] == story["newer"] and ours[4]["serving_after"]["model_version"] == "v1"
    for r in ours:
        assert parse_time(r["started_at"]) <= parse_time(r["ended_at"]), r


def test_history_says_what_served_at_any_time_rollbacks_included(story, airflow_rest) -> None:
    mine = {run_id for _, run_id, _ in story["served"]}
    timeline = [r for r in cli("history", "--target", "docker", env=airflow_rest) if r["run_id"] in mine]
    assert [r["model_version"] for r in timeline] == ["v1", "v2", "v1", "v1", "v3", "v4"]
    # Between every pair of records, and after the last: what /version said then (the story's own record).
    observed = [seen for name, _, seen in story["served"] if "skipped" not in name]
    ends = [parse_time(r["ended_at"]) for r in timeline]
    for i, (end, seen) in enumerate(zip(ends, observed, strict=True)):
        at = end + (ends[i + 1] - end) / 2 if i + 1 < len(ends) else end + timedelta(seconds=1)
        answer = cli("history", "--target", "docker", "--at", at.isoformat(), env=airflow_rest)["serving"]["docker"]
        assert (answer["commit"], answer["model_version"]) == (seen["commit"], seen["model"]["version"]), (i, at)


def test_status_and_the_quarantine_list_through_the_rest_api(story, airflow_rest) -> None:
    status = cli("status", "--target", "docker", env=airflow_rest)
    assert status["model_version"] == "v4" and status["desired"]["in_desired_state"] is True, status
    held = cli("image", "quarantined", env=airflow_rest)
    assert story["broken"] in {q["digest"] for q in held}
    lifted = cli("image", "release-quarantine", story["broken"][:19], env=airflow_rest)
    assert lifted["action"] == "released" and lifted["digest"] == story["broken"]
    # The lift is an Asset event too: the next release may deploy the image again.
    assert story["broken"] not in {q["digest"] for q in cli("image", "quarantined", env=airflow_rest)}
