"""The digit classifier: a Flask app serving one verified ONNX model package.

Configuration: defaults, then the environment, then `test_config`. No secret is needed (no sessions, no
cookies), so none is shipped. create_app raises classifier.model.ModelLoadError, naming the file, when the
model package is missing or altered: the process must not start serving a model it cannot vouch for.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flask import Flask

__all__ = ["ConfigError", "create_app"]

# onnxruntime's Linux wheel starts telemetry (a device id and an event store under ~/.cache) at import
# unless this is set first; this package __init__ runs before classifier.model imports onnxruntime.
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

# name: (default, type). Each may be overridden by the environment variable of the same name.
SETTINGS: dict[str, tuple[Any, type]] = {
    "MODEL_DIR": ("/model", str),
    "MAX_CONTENT_LENGTH": (8 * 1024 * 1024, int),  # bytes of request body (Flask answers 413 above)
    "MAX_IMAGES": (64, int),  # per /score request
    "MAX_IMAGE_PIXELS": (4096 * 4096, int),  # per image, checked from the header before decoding
    # Sum over a request's images, from their headers, before any is decoded: bounds a request's decoding
    # time (about 1 s at this default on one core) far below gunicorn's 30 s worker timeout.
    "MAX_REQUEST_PIXELS": (2 * 4096 * 4096, int),
    "ORT_THREADS": (1, int),  # onnxruntime intra-op threads per worker
    "MODEL_SHA256": ("", str),  # if set (the image does), the served manifest must hash to exactly this
    "GIT_COMMIT": ("unknown", str),
    "APP_VERSION": ("unknown", str),
    "IMAGE_CREATED": ("unknown", str),
    "IMAGE_SOURCE": ("unknown", str),
}


class ConfigError(ValueError):
    """An environment variable has a value the app cannot use."""


def _from_environment() -> dict[str, Any]:
    config: dict[str, Any] = {}
    for name, (_, kind) in SETTINGS.items():
        value = os.environ.get(name)
        if value is None or value == "":
            continue
        try:
            config[name] = kind(value)
        except ValueError:
            raise ConfigError(f"environment variable {name}={value!r} must be {kind.__name__}") from None
        if kind is int and config[name] < 1:
            raise ConfigError(f"environment variable {name}={value!r} must be at least 1")
    return config


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """The app for the model in MODEL_DIR; raises classifier.model.ModelLoadError if it is not intact."""
    # Imported here, not at the top: the Docker HEALTHCHECK (`python -m classifier.healthcheck`, every few
    # seconds) imports this package and must not pay for Flask, numpy and onnxruntime each time.
    from flask import Flask

    from . import errors, metrics, model, routes

    app = Flask(__name__)
    app.config.from_mapping({name: default for name, (default, _) in SETTINGS.items()})
    app.config.from_mapping(_from_environment())
    if test_config is not None:
        app.config.from_mapping(test_config)

    loaded = model.load(app.config["MODEL_DIR"], threads=app.config["ORT_THREADS"])
    expected = app.config["MODEL_SHA256"]
    if expected and expected != loaded.sha256:
        raise model.ModelLoadError(
            f"{model.MANIFEST}: sha256 is {loaded.sha256}, but this image was built for {expected} "
            "(MODEL_SHA256): the model in MODEL_DIR is not the one the image claims to serve"
        )
    app.extensions[routes.MODEL_KEY] = loaded
    app.logger.info("serving model %s %s (sha256 %s)", loaded.name, loaded.version, loaded.sha256)

    metrics.init_app(app, loaded.name, loaded.version, loaded.sha256)
    errors.init_app(app)
    app.register_blueprint(routes.bp)
    return app
