"""The scale check: 50 ci runs with gc scheduled every 10, against the real registry (htpasswd), Docker engine and
Azurite. Disk use stays bounded, and every serving, promoted, quarantined, rollback and desired image still pulls.

What ci and release leave is made by their own code where it matters: each run is a new commit on a real git
branch and a small but real image (a unique 256 KiB layer, the lineage labels, built by images.build_image and
pushed by images.push_image with the connection's credentials), announced as ci's push does; every 5th run
the release picks the desired state (release.select_image: lineage, registry, quarantine) and deploys it on the
docker target (release.deploy, which records the attempt), run 25's image is broken and gets rolled back and
quarantined; every 10 runs data scientists publish and promote the next model version.
"""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import pytest

from devstack import components
from modelship import ci, desired, net, release, retention
from modelship.deploy import DeploymentFailed, get_target
from modelship.lineage import DeploymentRecord, ImageEvent, Quarantine
from modelship.retention.policy import rollback_target
from modelship.verdicts import NothingToDo
from tests.plugins.conftest import new_container
from tests.plugins.retention_support import World, applied, make_world

pytest_plugins = ["images_fixtures"]
pytestmark = [pytest.mark.docker, pytest.mark.registry, pytest.mark.azurite]

RUNS, GC_EVERY, RELEASE_EVERY, MODEL_EVERY = 50, 10, 5, 10
KEEP, KEEP_MODELS = 3, 2
PAYLOAD = 256 * 1024
# Beyond the KEEP newest: what serves, its rollback target, the quarantined image, the desired state, the newest
# image of the promoted model (some of them coincide).
MOST_KEPT = KEEP + 5
PER_IMAGE = PAYLOAD + 64 * 1024  # the layer, its config and manifest, with room to spare


def blob_bytes(registry: components.Registry) -> int:
    """What the registry stores: the bytes of every blob file (layers, configs, manifests)."""
    root = registry.state_dir / "registry-data" / "docker" / "registry" / "v2" / "blobs"
    return sum(p.stat().st_size for p in root.rglob("data"))


@pytest.fixture
def world(tmp_path, docker_client, docker_engine, registry, reg_conn, blob_env, monkeypatch: pytest.MonkeyPatch):
    gc_command = shlex.join([sys.executable, "-m", "devstack", "registry-gc", "--registry-dir",
                             str(registry.state_dir)])  # fmt: skip
    made = make_world(tmp_path, docker_client=docker_client, docker_engine=docker_engine, registry=registry,
                      reg_conn=reg_conn, store=f"wasb:{new_container()}", port=net.free_port(),
                      MODELSHIP_WASB_CONN_ID=blob_env, MODELSHIP_KEEP_IMAGES=str(KEEP),
                      MODELSHIP_KEEP_MODEL_VERSIONS=str(KEEP_MODELS),
                      MODELSHIP_REGISTRY_GC_COMMAND=gc_command)  # fmt: skip
    made.payload_size = PAYLOAD
    with applied(made, monkeypatch):
        yield made


def protected_now(world: World, images: list[ImageEvent], quarantines: list[Quarantine],
                  records: list[DeploymentRecord]) -> dict[str, set[str]]:  # fmt: skip
    """digest → what it is, worked out here from the targets, the history and the lineage (not from gc)."""
    found: dict[str, set[str]] = {}
    serving = get_target("docker", world.settings).status()["image_digest"]
    found.setdefault(serving, set()).add("serving")
    before = rollback_target(records, "docker", serving)
    if before:
        found.setdefault(before["image_digest"], set()).add("rollback target")
    for q in desired.in_quarantine(quarantines).values():
        found.setdefault(q.digest, set()).add("quarantined")
    want = desired.current(images, quarantines, world.settings)
    if want.image is not None:
        found.setdefault(want.image.digest, set()).add("desired")
    alias = world.store().read_alias(world.model_name, "production")
    newest_promoted = [e for e in images if e.model_sha256 == alias["manifest_sha256"]][-1]
    found.setdefault(newest_promoted.digest, set()).add("newest image of the promoted model")
    return found


def pull_everything(tmp_path: Path, registry: components.Registry, repository: str,
                    wanted: dict[str, set[str]]) -> dict[str, str]:  # fmt: skip
    """Pull each digest into a fresh engine (nothing cached), logged in with the registry's credentials;
    digest → the commit its labels name."""
    engine = components.DockerEngine(tmp_path / "clean-engine")
    engine.start()
    try:
        client = engine.client()
        client.login(registry.username, registry.password, registry=registry.address)
        pulled = {}
        for digest in wanted:
            image = client.images.pull(f"{registry.address}/{repository}@{digest}")
            pulled[digest] = image.labels["org.opencontainers.image.revision"]
        client.close()
        return pulled
    finally:
        engine.stop()


def test_fifty_ci_runs_with_gc_stay_bounded_and_what_matters_still_pulls(world: World, registry, tmp_path) -> None:
    started = time.monotonic()
    images: list[ImageEvent] = []
    quarantines: list[Quarantine] = []
    records: list[DeploymentRecord] = []
    sizes: list[int] = []
    tag_counts: list[int] = []
    broken: ImageEvent | None = None
    models = 0
    for run in range(1, RUNS + 1):
        if run % MODEL_EVERY == 1:  # model_refresh: a new version is published and promoted
            models += 1
            world.model(f"v{models}")
            world.promote(f"v{models}")
        version = world.store().read_alias(world.model_name, "production")["version"]
        bad = run == 25
        images.append(world.image(world.commit(), version, runnable=run % RELEASE_EVERY == 0, broken=bad))
        broken = images[-1] if bad else broken

        if run % RELEASE_EVERY == 0:  # the nightly release: the desired state, deployed and recorded
            try:
                chosen = release.select_image("", False, images, quarantines, world.settings)
                release.deploy("docker", chosen, records.append, dag_id="release", run_id=f"release-{run}")
            except DeploymentFailed:
                quarantines.append(release.quarantine_of(records[-1].as_dict()))
            except NothingToDo:
                pass

        if run % GC_EVERY == 0:  # the maintenance DAG
            report = retention.run(images=images, quarantines=quarantines, records=records)
            assert not report.failures, report.format()
            assert report.of("deleted", "registry") and any(o.item == "unreferenced blobs"
                                                            for o in report.of("deleted", "registry"))  # fmt: skip
            sizes.append(blob_bytes(registry))
            tag_counts.append(len(world.tags()))
            for digest, what in protected_now(world, images, quarantines, records).items():
                assert world.in_registry(ImageEvent("", "", digest, "", "", "")), f"{what} {digest} was deleted"

    # The story happened as intended: releases, the rollback of the broken image and its quarantine, promotions.
    assert [r.outcome for r in records].count("rolled_back") == 1 and quarantines[0].digest == broken.digest
    assert sum(r.outcome == "deployed" for r in records) >= 8 and models == 5

    # Bounded: never more tags than the kept set, and storage from run 10 to 50 (40 more images, 10 MB of new
    # layers without gc) grows by at most one kept set's worth.
    assert max(tag_counts) <= MOST_KEPT, tag_counts
    assert all(size <= sizes[0] + MOST_KEPT * PER_IMAGE for size in sizes), (sizes, PER_IMAGE)
    assert (RUNS - GC_EVERY) * PAYLOAD > 3 * MOST_KEPT * PER_IMAGE  # the bound means something
    assert len(world.versions()) <= KEEP_MODELS + 2  # + the promoted one's previous and the serving one's

    # And what matters still pulls, into an engine that never saw it, through the registry with credentials.
    wanted = protected_now(world, images, quarantines, records)
    assert set().union(*wanted.values()) >= {"serving", "rollback target", "quarantined", "desired"}, wanted
    by_digest = {e.digest: e for e in images}
    assert pull_everything(tmp_path, registry, world.repository, wanted) == {d: by_digest[d].commit for d in wanted}

    # A deleted commit × model is not "already pushed" any more: ci's resolve builds it again.
    deleted = next(e for e in images if e.model_version == version and not world.in_registry(e))
    assert ci.resolve(deleted.commit, None, "scale").already_pushed is None
    print(f"\n{RUNS} runs: tags after each gc {tag_counts}, blob bytes {sizes}, "
          f"{time.monotonic() - started:.0f}s")  # fmt: skip
