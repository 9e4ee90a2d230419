"""Helpers for the end-to-end tests: run a DAG with dag.test(), read back task states and Asset events, make
commits, and stand in for a ci run that pushed an image which turns out broken in production."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]


def git(*args: str, cwd: Path = REPO) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


# What each dag.test() run printed, by run_id: a red fixture's assertion names the failing step's own error,
# so a ci log that shows only the head of a failure still says why (pytest's captured output comes later).
_PRINTED: dict[str, str] = {}
_ERROR_LINE = re.compile(r"\[(error|critical)\s*\]|Traceback|Error\b|Exception\b|[A-Z][a-z]+Failed\b|\bFAILED\b")


def run_dag(dag_id: str, conf: dict[str, Any] | None = None):
    """dag.test() of a DAG from dags/: the real task code, in-process, against the session's DB."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(REPO / "dags" / f"{dag_id}.py"), safe_mode=False)
    assert not bag.import_errors, bag.import_errors
    # At the file-descriptor level: Airflow's task loggers hold the stream they were configured with.
    with tempfile.TemporaryFile() as sink:
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        os.dup2(sink.fileno(), 1)
        os.dup2(sink.fileno(), 2)
        try:
            run = bag.get_dag(dag_id).test(run_conf=conf or {})
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            for fd, copy in zip((1, 2), saved, strict=True):
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            printed = sink.read().decode(errors="replace")
            sys.stdout.write(printed)  # still in pytest's captured output, whole
    _PRINTED[run.run_id] = printed
    return run


def task_states(dag_run) -> dict[str, str]:
    from airflow.utils.session import create_session

    with create_session() as session:
        return {ti.task_id: str(ti.state) for ti in dag_run.get_task_instances(session=session)}


def why(dag_run) -> str:
    """For an assertion message: the task states, then the error lines the run printed (the last 25)."""
    errors = [line[:300] for line in _PRINTED.get(dag_run.run_id, "").splitlines() if _ERROR_LINE.search(line)]
    return "\n".join([str(task_states(dag_run)), *errors[-25:]])


def asset_events(name: str) -> list[dict[str, Any]]:
    """Extras of the events of Asset `name`, oldest first, read back from Airflow's DB."""
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name).order_by(AssetEvent.id)
        )  # fmt: skip
        return [dict(row.extra) for row in rows]


def clone_with_commit(tmp: Path, path: str, edit) -> str:
    """A throwaway clone of this repository with one more commit that edits `path`; returns its sha."""
    git("clone", "-q", str(REPO), str(tmp))
    target = tmp / path
    target.write_text(edit(target.read_text()))
    git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qam", f"break {path}", cwd=tmp)
    return git("rev-parse", "HEAD", cwd=tmp)


def commit_to(clone: Path, path: str, text: str) -> str:
    """One more commit on the clone's current branch, appending `text` to `path`; its sha."""
    target = clone / path
    target.write_text(target.read_text() + text)
    git("-c", "user.name=test", "-c", "user.email=test@localhost", "commit", "-qam", f"edit {path}", cwd=clone)
    return git("rev-parse", "HEAD", cwd=clone)


def announce_image(extra: dict[str, Any]) -> None:
    """An `image` event, as a ci run's push would emit it (for an image a test pushed itself)."""
    from airflow.assets.manager import asset_manager
    from airflow.models.asset import AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        asset = session.scalar(select(AssetModel).where(AssetModel.name == "image"))
        assert asset is not None, "the image Asset is not registered: run the ci DAG once first"
        asset_manager.register_asset_change(asset=asset, extra=extra, session=session)


def push_broken(docker_client, registry, base_ref: str, tag: str, labels: dict[str, str]) -> str:
    """An image built FROM `base_ref` that never becomes ready (its model folder is gone), relabelled with
    `labels` and pushed as `tag` next to it; its digest. Healthy through the smoke test's eyes: it is the
    image a production-only fault looks like."""
    import io

    repository = base_ref.split("@")[0]
    docker_client.api.login(registry.username, registry.password, registry=registry.address)
    docker_client.images.pull(base_ref)
    label_line = " ".join(f'{k}="{v}"' for k, v in labels.items())
    dockerfile = f"FROM {base_ref}\nENV MODEL_DIR=/nonexistent\nLABEL {label_line}\n".encode()
    docker_client.images.build(fileobj=io.BytesIO(dockerfile), tag=f"{repository}:{tag}", network_mode="host")
    digest = None
    for line in docker_client.images.push(repository, tag=tag, stream=True, decode=True):
        assert "error" not in line, line
        digest = (line.get("aux") or {}).get("Digest", digest)
    assert digest
    return digest

