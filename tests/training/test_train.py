"""training: the CLI that writes a package, the gate-failing --degrade, and modelpkg.evaluate on what it wrote."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from modelpkg.evaluate import evaluate
from modelpkg.evaluate import main as evaluate_main
from modelpkg.manifest import MANIFEST, ManifestError, manifest_sha256, verify_package
from training.train import main as train_main
from training.train import train_package

REPO = Path(__file__).resolve().parents[2]
GATE = 0.95


@pytest.fixture(scope="module")
def cli_packages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """`python -m training.train` run for real, twice at once (good and --degrade 0.9): {kind: (out, result)}."""
    root = tmp_path_factory.mktemp("cli")
    runs = {
        "good": (root / "good" / "pkg", ["--version", "v1"]),
        "degraded": (root / "degraded" / "pkg", ["--version", "v2", "--degrade", "0.9"]),
    }
    processes = {}
    for kind, (out, args) in runs.items():
        out.parent.mkdir()
        command = [sys.executable, "-m", "training.train", "--out", str(out), *args]
        processes[kind] = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    results = {}
    for kind, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[kind] = (runs[kind][0], subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr))
    return results


def test_cli_writes_a_verified_package_that_passes_the_gate(cli_packages):
    out, result = cli_packages["good"]
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    manifest = verify_package(out)
    assert sorted(p.name for p in out.iterdir()) == ["labels.json", MANIFEST, "model.onnx"]
    assert manifest["metrics"]["accuracy"] >= GATE and manifest["metrics"]["heldout_size"] == 450
    assert (manifest["name"], manifest["version"], manifest["framework"]) == ("digits", "v1", "onnx")
    assert manifest["input"] == {
        "name": "pixels", "shape": [None, 64], "dtype": "float32",
        "description": "8x8 grayscale digit, 0..16 where 16 is ink",
    }  # fmt: skip
    assert manifest["labels_file"] == "labels.json"
    assert json.loads((out / "labels.json").read_text()) == [str(d) for d in range(10)]
    assert summary["manifest_sha256"] == manifest_sha256(out)
    assert [p.name for p in out.parent.iterdir()] == ["pkg"]  # the staging folder was renamed into place


def test_recorded_accuracy_is_what_onnxruntime_measures_on_the_exported_file(model_package: Path):
    measured = evaluate(model_package)
    manifest = verify_package(model_package)
    assert measured["accuracy"] == manifest["metrics"]["accuracy"] >= GATE
    assert measured["heldout_size"] == 450
    assert measured["manifest_sha256"] == manifest_sha256(model_package)


def test_evaluate_cli_prints_json_and_refuses_a_tampered_package(package_copy: Path, capsys):
    assert evaluate_main([str(package_copy)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] >= GATE
    (package_copy / "model.onnx").write_bytes((package_copy / "model.onnx").read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="model.onnx"):
        evaluate(package_copy)
    assert evaluate_main([str(package_copy)]) == 1
    assert "model.onnx" in capsys.readouterr().err


def test_cli_refuses_a_non_empty_out_and_leaves_it_untouched(tmp_path: Path, capsys):
    out = tmp_path / "pkg"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert train_main(["--out", str(out), "--version", "v1"]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["pkg"]


def test_cli_degrade_produces_a_valid_package_below_the_gate(cli_packages):
    out, result = cli_packages["degraded"]
    assert result.returncode == 0, result.stderr
    manifest = verify_package(out)  # well-formed in every way except quality
    assert manifest["metrics"]["accuracy"] < GATE - 0.2
    assert evaluate(out)["accuracy"] == manifest["metrics"]["accuracy"]


def test_train_package_rejects_an_out_of_range_degrade_and_leaves_nothing_behind(tmp_path: Path):
    with pytest.raises(ValueError, match="degrade"):
        train_package(tmp_path / "never", "v1", degrade=1.5)
    assert list(tmp_path.iterdir()) == []  # a failed build leaves nothing behind
