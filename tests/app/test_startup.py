"""Start-up: the app verifies its model package and refuses to start, naming the file, if it is not intact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from classifier import ConfigError, create_app
from classifier.model import ModelLoadError
from modelpkg.manifest import manifest_sha256


def make_app(model_dir: Path, **config):
    return create_app({"TESTING": True, "MODEL_DIR": str(model_dir), **config})


def test_tampered_model_onnx_refuses_to_start_naming_the_file(package_copy: Path):
    onnx = package_copy / "model.onnx"
    data = bytearray(onnx.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle of the weights
    onnx.write_bytes(bytes(data))
    altered = r"^model\.onnx: sha256 mismatch \(altered\): model\.json expects [0-9a-f]{64}"
    with pytest.raises(ModelLoadError, match=altered):
        make_app(package_copy)


def test_missing_labels_json_refuses_to_start_naming_the_file(package_copy: Path):
    (package_copy / "labels.json").unlink()
    with pytest.raises(ModelLoadError, match=r"^labels\.json: missing"):
        make_app(package_copy)


def test_missing_manifest_refuses_to_start(package_copy: Path):
    (package_copy / "model.json").unlink()
    with pytest.raises(ModelLoadError, match="model.json: manifest missing"):
        make_app(package_copy)


def test_manifest_that_does_not_list_the_model_refuses_to_start(package_copy: Path):
    manifest = json.loads((package_copy / "model.json").read_text())
    del manifest["files"]["model.onnx"]  # the model would be loaded unverified
    (package_copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match="model.onnx: not listed in model.json"):
        make_app(package_copy)


def test_manifest_path_escaping_the_package_refuses_to_start(package_copy: Path):
    manifest = json.loads((package_copy / "model.json").read_text())
    manifest["files"]["../model.onnx"] = manifest["files"]["model.onnx"]
    (package_copy / "model.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelLoadError, match=r"'\.\./model\.onnx': path not allowed"):
        make_app(package_copy)


def test_model_other_than_the_one_the_image_was_built_for_refuses_to_start(model_package: Path):
    with pytest.raises(ModelLoadError, match="MODEL_SHA256"):
        make_app(model_package, MODEL_SHA256="0" * 64)
    assert make_app(model_package, MODEL_SHA256=manifest_sha256(model_package))


def test_configuration_comes_from_defaults_then_environment_then_test_config(model_package, monkeypatch):
    app = make_app(model_package)
    assert app.config["MAX_CONTENT_LENGTH"] == 8 * 1024 * 1024
    assert app.config["MAX_IMAGES"] == 64 and app.config["MAX_IMAGE_PIXELS"] == 4096 * 4096
    assert app.config["MAX_REQUEST_PIXELS"] == 2 * 4096 * 4096
    assert app.config["GIT_COMMIT"] == "unknown"
    assert app.secret_key is None  # nothing needs one, so no default secret is shipped
    monkeypatch.setenv("MAX_IMAGES", "5")
    monkeypatch.setenv("MAX_CONTENT_LENGTH", "1000")
    monkeypatch.setenv("MAX_REQUEST_PIXELS", "5000000")
    app = make_app(model_package, MAX_IMAGES=7)
    assert app.config["MAX_CONTENT_LENGTH"] == 1000 and app.config["MAX_IMAGES"] == 7
    assert app.config["MAX_REQUEST_PIXELS"] == 5_000_000


@pytest.mark.parametrize("value", ["lots", "0", "-3"])
def test_unusable_numeric_environment_variable_is_a_clear_config_error(model_package, monkeypatch, value):
    monkeypatch.setenv("MAX_IMAGES", value)
    with pytest.raises(ConfigError, match=f"MAX_IMAGES={value!r}"):
        make_app(model_package)


def test_gunicorn_with_a_tampered_model_exits_non_zero_with_the_reason_on_stderr(package_copy, gunicorn):
    onnx = package_copy / "model.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"trailing garbage")
    server = gunicorn(package_copy)
    assert server.process is not None
    returncode = server.process.wait(timeout=60)
    assert returncode != 0
    stderr = server.stderr.read_text()
    assert "model.onnx: sha256 mismatch (altered)" in stderr
    assert "Worker failed to boot" in stderr
