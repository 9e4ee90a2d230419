"""The maintenance DAG end to end with dag.test(): its tasks read the `image`, `quarantine` and `deployments` events
from Airflow's metadata as inlets, hand the protections on as XCom, and prune the real registry, model store,
engine and cache; its dry_run param deletes nothing."""

from __future__ import annotations

import json
from typing import Any

import pytest

from modelship import net
from tests.e2e.pipeline import run_dag, task_states, why
from tests.plugins.retention_support import World, applied, make_world, old_entry

pytestmark = [pytest.mark.docker, pytest.mark.registry]
REG_CONN = "modelship_test_gc_registry"


def add_event(asset_name: str, extra: dict[str, Any]) -> None:
    """An Asset event as the DAG that owns the asset leaves it (ci's push, release's record and quarantine)."""
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.name == asset_name))
        assert asset is not None, f"the {asset_name} Asset is not registered"
        asset_manager.register_asset_change(asset=asset, extra=extra, session=session)


@pytest.fixture
def world(tmp_path, docker_client, docker_engine, registry, airflow_db, monkeypatch: pytest.MonkeyPatch) -> World:
    host, port = registry.address.split(":")
    monkeypatch.setenv(f"AIRFLOW_CONN_{REG_CONN.upper()}", json.dumps(
        {"conn_type": "docker", "host": host, "port": int(port), "login": registry.username,
         "password": registry.password}))  # fmt: skip
    made = make_world(tmp_path, docker_client=docker_client, docker_engine=docker_engine, registry=registry,
                      reg_conn=REG_CONN, port=net.free_port(), MODELSHIP_KEEP_IMAGES="1",
                      MODELSHIP_KEEP_MODEL_VERSIONS="1")  # fmt: skip
    with applied(made, monkeypatch):
        yield made


def test_the_maintenance_dag_prunes_by_the_events_in_airflow_and_its_dry_run_deletes_nothing(world: World) -> None:
    for version in ("v0", "v1", "v2"):
        world.model(version)
    world.promote("v1")
    world.promote("v2")
    c1, c2 = world.commit(), world.commit()
    rolled_back_to = world.image(c1, "v1")
    quarantined = world.image(c1, "v2")
    unprotected = world.image(c2, "v1")
    newest = world.image(c2, "v2")
    stale_env = old_entry(world.root / "cache" / "testenv" / "0123456789abcdef", days=30)

    dry = run_dag("maintenance", {"dry_run": True})  # also registers the Assets it reads
    assert str(dry.state) == "success", why(dry)
    assert len(world.tags()) == 4 and world.versions() == ["v0", "v1", "v2"] and stale_env.exists()

    for event in (rolled_back_to, quarantined, unprotected, newest):
        add_event("image", event.as_dict())
    for record in (world.record(rolled_back_to, 1), world.record(newest, 2)):
        add_event("deployments", record.as_dict())
    add_event("quarantine", world.quarantine(quarantined).as_dict())

    run = run_dag("maintenance", {"dry_run": False})

    assert str(run.state) == "success", why(run)
    assert set(task_states(run).values()) == {"success"}, task_states(run)
    assert [world.in_registry(e) for e in (rolled_back_to, quarantined, unprotected, newest)] == [True, True, False,
                                                                                                   True]  # fmt: skip
    assert world.versions() == ["v1", "v2"]  # v0: old and unprotected; v1: the alias's previous and rolled back to
    assert not stale_env.exists()
