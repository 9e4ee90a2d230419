"""Retention's policy on the real registry, Docker engine and model store: with keep = 1, each protection keeps an
image or model version that is older than the newest AND older than an unprotected one that does go, so each test
fails if its protection is missing. Then: a target that cannot be asked, sources that cannot be read, the dry
run, the engine's grace, the cache folders, and `modelship gc` as installed."""

from __future__ import annotations

import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import docker
import pytest

from devstack import rootfs
from modelship import apptests, net, retention
from modelship.deploy import get_target
from modelship.fs import USED_MARKER
from modelship.retention import store
from tests.containment import make_checkout
from tests.plugins.retention_support import World, applied, gone, make_world, old_entry, reasons

pytest_plugins = ["images_fixtures"]
pytestmark = [pytest.mark.docker, pytest.mark.registry]

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def world(tmp_path, docker_client, docker_engine, registry, reg_conn, monkeypatch: pytest.MonkeyPatch):
    made = make_world(tmp_path, docker_client=docker_client, docker_engine=docker_engine, registry=registry,
                      reg_conn=reg_conn, port=net.free_port(), MODELSHIP_KEEP_IMAGES="1",
                      MODELSHIP_KEEP_MODEL_VERSIONS="1")  # fmt: skip
    with applied(made, monkeypatch):
        yield made


def local_tags(world: World) -> set[str]:
    found = world.docker_client.images.list(filters={"label": f"io.modelship.model.name={world.model_name}"})
    return {tag.rsplit(":", 1)[1] for image in found for tag in image.tags if tag.startswith(world.repository)}


# ----------------------------------------------------------------------------------------- each protection


def test_what_serves_stays(world: World) -> None:
    world.model("v1")
    world.model("v2")
    world.promote("v2")  # directly: v1 is no alias's previous version
    c1, c2 = world.commit(), world.commit()
    serving = world.image(c1, "v1", runnable=True)  # the oldest build
    middle = world.image(c1, "v2")
    newest = world.image(c2, "v2")
    get_target("docker", world.settings).deploy(serving.ref, serving.as_dict())

    report = world.gc([serving, middle, newest])

    assert world.in_registry(serving) and "serving on docker" in reasons(report, "registry", serving.tag)
    assert not world.in_registry(middle) and gone(report, "registry", middle.tag)
    assert world.versions() == ["v1", "v2"] and "serving on docker" in reasons(report, "model store", " v1 ")
    # On the engine: the serving container's image stays, the unprotected build goes (both its tags).
    assert "used by a container" in reasons(report, "engine", serving.tag)
    assert middle.tag not in local_tags(world) and {serving.tag, newest.tag} <= local_tags(world)
    assert not report.failures, report.format()


def test_what_an_alias_names_stays(world: World) -> None:
    for version in ("v1", "v2", "v3"):
        world.model(version)
    world.promote("v3")
    world.promote("v1", "staging")
    c0, c1 = world.commit(), world.commit()
    older_v1 = world.image(c0, "v1")
    newer_v1 = world.image(c1, "v1")
    v2 = world.image(c1, "v2")
    newest = world.image(c1, "v3")

    report = world.gc([older_v1, newer_v1, v2, newest])

    assert world.versions() == ["v1", "v3"]
    assert f"promoted: {world.model_name}:staging names it" in reasons(report, "model store", " v1 ")
    assert world.in_registry(newer_v1)
    assert "the newest image of the promoted model" in reasons(report, "registry", newer_v1.tag)
    assert not world.in_registry(older_v1) and not world.in_registry(v2)


@pytest.mark.parametrize("lifted", [False, True], ids=["quarantined", "quarantine-lifted"])
def test_what_is_quarantined_stays(world: World, lifted: bool) -> None:
    world.model("v1")
    world.model("v2")
    world.promote("v2")
    c1, c2 = world.commit(), world.commit()
    bad = world.image(c1, "v1")
    other = world.image(c2, "v1")
    newest = world.image(c2, "v2")
    quarantines = [world.quarantine(bad)]
    if lifted:
        quarantines.append(quarantines[0].replace(action="released", at="2026-01-02T00:00:00+00:00"))

    report = world.gc([bad, other, newest], quarantines)

    assert not world.in_registry(other)
    if lifted:  # a lifted quarantine protects nothing
        assert not world.in_registry(bad) and world.versions() == ["v2"]
    else:
        assert world.in_registry(bad) and "quarantined since" in reasons(report, "registry", bad.tag)
        assert world.versions() == ["v1", "v2"] and "in the quarantined image" in reasons(report, "model store", " v1 ")


def test_rollback_targets_stay(world: World) -> None:
    for version in ("v1", "v2", "v3"):
        world.model(version)
    world.promote("v1")
    world.promote("v3")  # its record says: previous v1
    c1 = world.commit()
    first, second, current = world.image(c1, "v1"), world.image(c1, "v2"), world.image(c1, "v3")
    broken = world.image(world.commit(), "v3")  # newest build; its release failed and rolled back to `current`
    records = [world.record(first, 1), world.record(second, 2), world.record(current, 3),
               world.record(broken, 4, outcome="rolled_back", serving=current)]  # fmt: skip

    report = world.gc([first, second, current, broken], records=records)

    # The build that served before the current one on the target (the failed attempt in between changes nothing).
    assert world.in_registry(second) and "rollback target on docker" in reasons(report, "registry", second.tag)
    assert not world.in_registry(first)
    # The version the alias named before the current one, and the rollback target's version.
    assert world.versions() == ["v1", "v2", "v3"]
    assert "production named it before v3" in reasons(report, "model store", " v1 ")
    assert "rollback target on docker" in reasons(report, "model store", " v2 ")


def test_the_desired_state_stays(world: World) -> None:
    world.model("v1")
    world.promote("v1")
    c0, c1, c2 = world.commit(), world.commit(), world.commit()
    desired = world.image(c2, "v1")  # the newest commit × the promoted model, but the oldest build
    older_commit = world.image(c1, "v1")
    oldest_commit = world.image(c0, "v1")  # the newest build (an old commit's ci run that finished last)

    report = world.gc([desired, older_commit, oldest_commit])

    assert world.in_registry(desired) and "the desired state" in reasons(report, "registry", desired.tag)
    assert not world.in_registry(older_commit)
    assert world.in_registry(oldest_commit)  # the newest build


# ------------------------------------------------------------------------------------- when sources fail


def test_a_target_that_cannot_be_asked_keeps_all_its_history_names(world: World) -> None:
    world.model("v1")
    world.promote("v1")
    c0, c1, c2 = world.commit(), world.commit(), world.commit()
    on_cluster = world.image(c0, "v1")
    unnamed = world.image(c1, "v1")
    newest = world.image(c2, "v1")

    report = world.gc([on_cluster, unnamed, newest], records=[world.record(on_cluster, 1, target="kubernetes")])

    assert world.in_registry(on_cluster)
    assert "might serve on kubernetes, which cannot be asked (no connection 'modelship_test_no_cluster')" in reasons(
        report, "registry", on_cluster.tag)  # fmt: skip
    assert any(n.startswith("kubernetes target not asked (no connection") for n in report.notes), report.notes
    assert not world.in_registry(unnamed)


def test_without_the_history_no_image_or_version_is_deleted(world: World) -> None:
    world.model("v1")
    world.model("v2")
    world.promote("v2")
    c1, c2 = world.commit(), world.commit()
    built = [world.image(c1, "v1"), world.image(c1, "v2"), world.image(c2, "v2")]

    report = retention.run(images=built, quarantines=[], records=None,
                           unavailable={"deployments": "Airflow unreachable"})  # fmt: skip

    assert all(world.in_registry(event) for event in built) and world.versions() == ["v1", "v2"]
    assert not report.of("deleted", "registry") and not report.of("deleted", "model store")
    assert any("`deployments` Asset events could not be read (Airflow unreachable)" in n for n in report.notes)
    assert "what they protect is unknown" in reasons(report, "registry", built[0].tag)


def test_a_failed_deletion_is_reported_at_the_end_and_the_rest_goes_ahead(world: World) -> None:
    for version in ("v1", "v2", "v3", "v4"):
        world.model(version)
    world.promote("v4")
    protections = retention.gather(world.settings, images=[], quarantines=[], records=[])
    world.promote("v2", "staging")  # after the protections were gathered: the store itself refuses to delete it
    report = retention.Report()

    store.prune(world.settings, protections, report, keep=1)

    assert world.versions() == ["v2", "v4"]  # v1 and v3 went, around the failure
    assert [(o.area, o.item.split(" (")[0]) for o in report.failures] == [("model store", f"{world.model_name} v2")]
    assert "promoted as 'staging'" in report.failures[0].why
    with pytest.raises(retention.PruneFailed, match=r"1 item\(s\) could not be deleted .* v2"):
        report.finish()


# ---------------------------------------------------------------------------------------- the dry run


def cache_listing(root: Path) -> list[str]:
    """What retention prunes in the cache (the git mirror beside it is fetched by the desired state)."""
    areas = ("testenv", "wheels", "models")
    return sorted(str(p.relative_to(root)) for area in areas for p in (root / area).rglob("*"))


def test_a_dry_run_deletes_nothing_and_lists_exactly_what_a_run_deletes(world: World) -> None:
    for version in ("v1", "v2", "v3"):
        world.model(version)
    world.promote("v3")
    c1 = world.commit()
    built = [world.image(c1, version) for version in ("v1", "v2", "v3")]
    cache = Path(world.env["MODELSHIP_CACHE"])
    old_entry(cache / "testenv" / "0123456789abcdef", days=30)
    old_entry(cache / "testenv" / "fedcba9876543210", days=1)
    old_entry(cache / "wheels" / ("a" * 64), days=30, marker=False)  # from before markers: its own mtime
    old_entry(cache / "testenv" / ".0123.x1y2.tmp", days=3, marker=False)  # a venv build that died
    v1_sha = world.store().manifest_sha256(world.model_name, "v1")
    old_entry(cache / "models" / v1_sha, days=0)
    old_entry(cache / "models" / world.store().manifest_sha256(world.model_name, "v3"), days=0)
    before = (world.tags(), world.versions(), local_tags(world), cache_listing(cache))

    dry = world.gc(built, dry_run=True)

    assert (world.tags(), world.versions(), local_tags(world), cache_listing(cache)) == before
    listed = {(o.area, o.item) for o in dry.of("would delete")}
    assert {area for area, _ in listed} == {"registry", "model store", "engine", "caches"}, dry.format()
    assert not dry.of("deleted") and dry.format().splitlines()[-1].startswith("dry run: would delete")

    real = world.gc(built)

    assert {(o.area, o.item) for o in real.of("deleted")} == listed
    assert world.versions() == ["v3"] and len(world.tags()) == 1 and local_tags(world) == {built[-1].tag}
    assert sorted(p.name for p in (cache / "testenv").iterdir()) == ["fedcba9876543210"]
    assert not (cache / "wheels" / ("a" * 64)).exists()
    assert not (cache / "models" / v1_sha).exists() and len(list((cache / "models").iterdir())) == 1


def test_the_engine_keeps_fresh_builds_and_never_touches_other_images(world: World, monkeypatch) -> None:
    world.model("v1")
    world.promote("v1")
    c1, c2 = world.commit(), world.commit()
    built = [world.image(c1, "v1"), world.image(c2, "v1")]
    monkeypatch.setenv("MODELSHIP_GC_GRACE_HOURS", "6")
    everything_else = {i.id for i in world.docker_client.images.list(all=True)} - {
        i.id for i in world.docker_client.images.list(filters={"label": f"io.modelship.model.name={world.model_name}"})
    }

    report = world.gc(built)

    assert not world.in_registry(built[0])  # the registry has no grace: the image is gone there
    assert "built less than 6 h ago" in reasons(report, "engine", built[0].tag)  # but a ci run may still use it
    assert local_tags(world) == {e.tag for e in built}
    assert everything_else <= {i.id for i in world.docker_client.images.list(all=True)}


def test_a_test_environment_used_again_is_kept_and_one_unused_goes_with_its_image(
    world: World, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODELSHIP_BASE_IMAGE", rootfs.BASE_IMAGE)
    monkeypatch.setattr(apptests, "WHEELS_RECIPE", apptests.WHEELS_RECIPE + f"# retention {uuid.uuid4().hex}\n")
    checkout = make_checkout(tmp_path / "checkout", {"test_x.py": "def test_x():\n    pass\n"})
    cache = Path(world.env["MODELSHIP_CACHE"])
    env = apptests.environment(checkout, cache)
    record = cache / "testenv" / env.key[:16]
    month_ago = time.time() - 30 * 86400

    def unused_for_a_month() -> None:
        for path in (record / USED_MARKER, record):
            os.utime(path, (month_ago, month_ago))

    unused_for_a_month()
    assert apptests.environment(checkout, cache).image == env.image  # reused: its marker says "now"

    report = retention.prune_caches(None)

    assert record.is_dir() and "used 0.0 days ago" in " ".join(o.why for o in report_outcomes(report, "kept"))
    assert world.docker_client.images.get(env.image)

    unused_for_a_month()
    report = retention.prune_caches(None)

    assert [o.item for o in report_outcomes(report, "deleted")] == [f"test environment {record} (and its image)"]
    assert not record.exists()
    with pytest.raises(docker.errors.ImageNotFound):
        world.docker_client.images.get(env.image)


def report_outcomes(report: dict, action: str) -> list:
    return [retention.Outcome(**o) for o in report["outcomes"] if o["action"] == action]


# ----------------------------------------------------------------------------------- the command


def test_modelship_gc_without_airflow_prunes_caches_only_and_says_why(world: World) -> None:
    world.model("v1")
    world.model("v2")
    world.promote("v2")
    built = [world.image(world.commit(), "v1"), world.image(world.commit(), "v2")]
    old_entry(Path(world.env["MODELSHIP_CACHE"]) / "testenv" / "0123456789abcdef", days=30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODELSHIP_AIRFLOW")}
    env["MODELSHIP_AIRFLOW_URL"] = f"http://127.0.0.1:{net.free_port()}"  # nobody there; and no credentials

    done = subprocess.run([str(REPO / ".venv" / "bin" / "modelship"), "gc", "--json"], env=env, capture_output=True,
                          text=True, timeout=300)  # fmt: skip

    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert any("Airflow's REST API" in n and "what they protect is unknown" in n for n in out["notes"]), out["notes"]
    assert all(world.in_registry(event) for event in built) and world.versions() == ["v1", "v2"]
    deleted = [o for o in out["outcomes"] if o["action"] == "deleted"]
    assert {o["area"] for o in deleted} == {"caches", "engine"}, deleted  # the test env; the build cache
    assert all(o["item"] == "build cache" for o in deleted if o["area"] == "engine")
