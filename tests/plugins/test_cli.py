"""`modelship model ...` works as installed (the console script, in a subprocess) against a local store and
against real Azurite through an Airflow connection, and answers errors with one line and exit status 1."""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from pathlib import Path

import pytest

from devstack import components
from modelpkg.manifest import manifest_sha256, verify_package

REPO = Path(__file__).resolve().parents[2]
MODELSHIP = REPO / ".venv" / "bin" / "modelship"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(MODELSHIP), *args], env={**os.environ, **env}, capture_output=True, text=True, timeout=120
    )


def ok(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    result = run(env, *args)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def local_env(tmp_path: Path) -> dict[str, str]:
    return {"MODELSHIP_MODEL_STORE": f"local:{tmp_path / 'store'}", "MODELSHIP_STATE": str(tmp_path / "state")}


def test_publish_list_promote_show_fetch_on_the_local_store(
    local_env: dict[str, str], packages: dict[str, Path], tmp_path: Path
) -> None:
    sha = manifest_sha256(packages["v1"])
    assert ok(local_env, "model", "publish", str(packages["v1"])).stdout.startswith(
        f"published digits v1 (sha256 {sha}) to local:"
    )
    ok(local_env, "model", "publish", str(packages["v2"]), "--name", "digits")

    assert json.loads(ok(local_env, "model", "list", "--json").stdout) == {"models": ["digits"]}
    promoted = json.loads(ok(local_env, "model", "promote", "digits", "v1", "--expect", "none", "--json").stdout)
    assert promoted["version"] == "v1" and promoted["manifest_sha256"] == sha

    table = ok(local_env, "model", "list", "digits").stdout.splitlines()
    assert table[0].split() == ["VERSION", "ACCURACY", "CREATED", "SHA256", "ALIASES"]
    assert table[1].split()[0] == "v1" and table[1].split()[-1] == "production"
    assert table[2].split()[0] == "v2"

    shown = json.loads(ok(local_env, "model", "show", "digits", "production", "--json").stdout)
    assert (shown["version"], shown["sha256"], shown["aliases"]) == ("v1", sha, ["production"])
    assert "model.onnx" in ok(local_env, "model", "show", "digits", "v1").stdout

    fetched = json.loads(ok(local_env, "model", "fetch", "digits", "production", str(tmp_path / "m"), "--json").stdout)
    assert fetched["sha256"] == sha and fetched["stats"]["files_downloaded"] == 2
    assert verify_package(tmp_path / "m")["version"] == "v1"
    again = ok(local_env, "model", "fetch", "digits", "production", str(tmp_path / "m2"))
    assert "from the cache" in again.stdout


def test_errors_are_one_line_on_stderr_with_exit_status_1(
    local_env: dict[str, str], packages: dict[str, Path], tmp_path: Path
) -> None:
    ok(local_env, "model", "publish", str(packages["v1"]))
    cases = {
        ("model", "publish", str(packages["v1"])): "model digits version v1 is already published",
        ("model", "fetch", "digits", "v9", str(tmp_path / "x")): "model digits has no version or alias 'v9'",
        ("model", "promote", "digits", "v1", "--expect", "v0"): "moved from v0 to nothing while promoting v1",
        ("model", "publish", str(tmp_path)): "manifest missing",
    }
    for args, message in cases.items():
        result = run(local_env, *args)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert result.stdout == ""
        assert message in result.stderr and "Traceback" not in result.stderr, result.stderr
        assert result.stderr.startswith("modelship: error: ")
    assert not (tmp_path / "x").exists()

    bad_store = run({**local_env, "MODELSHIP_MODEL_STORE": "s3:bucket"}, "model", "list")
    assert bad_store.returncode == 1 and "is not understood" in bad_store.stderr

    usage = run(local_env, "model", "promote", "digits")  # argparse: usage errors exit 2
    assert usage.returncode == 2 and "usage:" in usage.stderr


@pytest.mark.azurite
def test_publish_promote_fetch_against_azurite_through_an_airflow_connection(
    azurite: components.Azurite, packages: dict[str, Path], tmp_path: Path
) -> None:
    env = {
        "AIRFLOW_CONN_MODELSHIP_BLOB": json.dumps(
            {"conn_type": "wasb", "extra": {"connection_string": azurite.connection_string}}
        ),
        "MODELSHIP_MODEL_STORE": f"wasb:cli-{uuid.uuid4().hex[:12]}",
        "MODELSHIP_STATE": str(tmp_path / "state"),
    }
    ok(env, "model", "publish", str(packages["v1"]))
    ok(env, "model", "promote", "digits", "v1")
    listed = json.loads(ok(env, "model", "list", "digits", "--json").stdout)
    assert [v["version"] for v in listed["versions"]] == ["v1"]
    assert listed["aliases"]["production"]["version"] == "v1"
    ok(env, "model", "fetch", "digits", "production", str(tmp_path / "m"))
    assert manifest_sha256(tmp_path / "m") == manifest_sha256(packages["v1"])

    missing_conn = run({**env, "AIRFLOW_CONN_MODELSHIP_BLOB": "", "MODELSHIP_WASB_CONN_ID": "nope"}, "model", "list")
    assert missing_conn.returncode == 1 and "nope" in missing_conn.stderr, missing_conn.stderr
    assert "Traceback" not in missing_conn.stderr
