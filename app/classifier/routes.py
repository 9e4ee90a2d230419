"""HTTP API: POST /score, GET /, /healthz, /readyz, /version, /metrics (docs/scoring-api.md).

/score speaks two dialects. {"images": [...]} gets {"model": ..., "predictions": [...]}. The classic
{"input": "<JSON list>"} of the Azure "DevOps for AI apps" sample gets that sample's own answer,
{"result": [<per image: top 3 [label, percent]>, "Computed in <ms> ms"]}, so its unchanged client (which
reads result[0][0][0][0] as the first image's top label) keeps working.

Client mistakes raise 4xx HTTP exceptions whose message says what to fix (and which image, by index);
errors.py turns every one into JSON {"error": ...}. A 500 only ever means a bug here, never bad input.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
from flask import Blueprint, Request, Response, current_app, jsonify, request
from PIL import Image
from werkzeug.exceptions import (
    BadRequest,
    RequestEntityTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)

from . import metrics
from .imaging import PIXEL_WEIGHT, ImageError, ImageTooLarge, decode_base64, features, open_image, pixel_cost
from .model import Model

bp = Blueprint("classifier", __name__)
MODEL_KEY = "classifier.model"  # app.extensions key of the loaded Model
# /score's answer as jsonify writes it (Flask's DefaultJSONProvider outside debug: sorted keys, compact
# separators, ASCII, then a newline), with one encoder made once instead of one per call; tests/app/test_score.py
# compares the bytes with jsonify's.
_ENCODE = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode


def _model() -> Model | None:
    return current_app.extensions.get(MODEL_KEY)


def _body(req: Request) -> bytes:
    """The request body; 413 beyond MAX_CONTENT_LENGTH, also for chunked uploads (no Content-Length).

    With a Content-Length, Werkzeug refuses an oversized body before reading it. Without one, its stream
    silently stops at the limit, and only raises 413 on the next read: so read once more, or a truncated
    body would be parsed as if it were the whole request.
    """
    data = req.get_data(cache=False)
    limit = req.max_content_length
    if req.content_length is None and limit is not None and len(data) >= limit:
        req.stream.read(1)
    return data


def _images(payload: Any, limit: int) -> tuple[str, list[Any]]:
    """(field name, list of images) from {"images": [...]} or the classic {"input": "<JSON list>"}; at most
    `limit` (MAX_IMAGES) of them."""
    if not isinstance(payload, dict):
        raise BadRequest('body must be a JSON object: {"images": ["<base64>", ...]}')
    if ("images" in payload) == ("input" in payload):
        raise BadRequest('give exactly one of "images" (a list of base64 strings) or "input"')
    if "input" in payload:
        field, images = "input", payload["input"]
        if isinstance(images, str):  # the classic shape: a JSON document inside a string
            try:
                images = json.loads(images)
            except (ValueError, RecursionError):
                raise BadRequest('"input" must be a JSON-encoded list of base64 strings') from None
    else:
        field, images = "images", payload["images"]
    if not isinstance(images, list):
        raise BadRequest(f'"{field}" must be a list of base64 strings, got {type(images).__name__}')
    if not images:
        raise BadRequest(f'"{field}" is empty: send at least one image')
    if len(images) > limit:
        raise RequestEntityTooLarge(f'"{field}" has {len(images)} images, at most {limit} per request')
    return field, images


def _open(field: str, index: int, item: Any, max_pixels: int) -> Image.Image:
    """The index-th image, header read only; 400/413 naming it if it is unusable or too large."""
    if not isinstance(item, str):
        raise BadRequest(f"{field}[{index}]: must be a base64 string, got {type(item).__name__}")
    if field == "input" and item.startswith("b'") and item.endswith("'"):
        # The sample's driver accepted str(bytes) too, the b'...' a Python 3 client gets from
        # str(base64.b64encode(data)); ' is not base64, so this never changes a valid string.
        item = item[2:-1]
    try:
        return open_image(decode_base64(item), max_pixels)
    except ImageTooLarge as exc:
        raise RequestEntityTooLarge(f"{field}[{index}]: {exc}") from None
    except ImageError as exc:
        raise BadRequest(f"{field}[{index}]: {exc}") from None


def _features(field: str, images: list[Any], config: Mapping[str, Any]) -> np.ndarray:
    """float32 [N, 64] of the request's images, once the pixels of all of them fit the request's budget.

    Every header is read before any image is decoded: decoding time grows with pixels, and a worker
    busy for longer than gunicorn's timeout (30 s) is killed mid-request. MAX_IMAGE_PIXELS bounds one
    image, MAX_REQUEST_PIXELS the sum, so a request's worst case stays about a second.
    """
    opened: list[Image.Image] = []
    try:
        max_pixels = config["MAX_IMAGE_PIXELS"]
        for index, item in enumerate(images):
            opened.append(_open(field, index, item, max_pixels))
        total, limit = sum(pixel_cost(image) for image in opened), config["MAX_REQUEST_PIXELS"]
        if total > limit:
            weighted = sorted({image.format for image in opened if image.format in PIXEL_WEIGHT})
            counted = "".join(f" (a {name} counts {PIXEL_WEIGHT[name]}x)" for name in weighted)
            raise RequestEntityTooLarge(
                f'"{field}" has {total} pixels in all{counted}, over the limit of {limit} pixels per request '
                "(MAX_REQUEST_PIXELS): send fewer or smaller images per request"
            )
        rows: list[np.ndarray] = []
        while opened:
            # Out of the list before decoding, so each image is freed as soon as the next one replaces it:
            # some decoders (libwebp) keep full-size buffers until the image object itself goes.
            index, image = len(rows), opened.pop(0)
            try:
                rows.append(features(image))
            except ImageTooLarge as exc:
                raise RequestEntityTooLarge(f"{field}[{index}]: {exc}") from None
            except ImageError as exc:
                raise BadRequest(f"{field}[{index}]: {exc}") from None
        return rows[0][None, :] if len(rows) == 1 else np.stack(rows)
    finally:
        for image in opened:  # those not decoded, after an error
            image.close()


@bp.post("/score")
def score() -> Response:
    # The request and the app once each: every use of Flask's `request` and `current_app` proxies looks
    # them up again. (Most /score requests do not get here: asgi.py answers those that succeed.)
    req, app = request._get_current_object(), current_app._get_current_object()
    if not req.is_json:
        raise UnsupportedMediaType("Content-Type must be application/json")
    model = app.extensions.get(MODEL_KEY)
    if model is None:
        raise ServiceUnavailable("model not loaded")
    body = _body(req)
    try:
        payload = json.loads(body)
    except (ValueError, RecursionError) as exc:  # RecursionError: absurdly deep nesting
        raise BadRequest(f"malformed JSON: {exc}") from None
    return Response(answer(model, payload, app.config), mimetype="application/json")


def answer(model: Model, payload: Any, config: Mapping[str, Any]) -> str:
    """The JSON text of /score's 200 for a parsed request body (both dialects), byte for byte what jsonify
    writes; raises the 4xx HTTP exceptions above for what the client must fix. Counts the images scored."""
    field, images = _images(payload, config["MAX_IMAGES"])
    started = time.perf_counter()
    probabilities = model.predict(_features(field, images, config))
    labels = model.labels
    tops = [(row, np.argsort(-row, kind="stable")[:3]) for row in probabilities]
    if field == "input":
        # The sample's driver: per image its top 3 as [label, percent], then the time spent on decoding,
        # scoring and ranking (not on parsing the request), in ms rounded to 2 decimals. Percent keeps the
        # precision of "probability" below (6 decimals of 0..1 are 4 decimals of 0..100).
        result = [[[labels[i], round(float(row[i]) * 100, 4)] for i in top] for row, top in tops]
        elapsed = round((time.perf_counter() - started) * 1000, 2)
        text = _ENCODE({"result": [result, f"Computed in {elapsed} ms"]})
    else:
        predictions = [
            {"top3": [{"label": labels[i], "probability": round(float(row[i]), 6)} for i in top]} for row, top in tops
        ]
        text = _ENCODE({"model": {"name": model.name, "version": model.version}, "predictions": predictions})
    metrics.IMAGES.inc(len(images))  # last: nothing after it can fail, so a request is counted once
    return text + "\n"


@bp.get("/")
def home() -> Response:
    # The sample's client probes GET / for this plain-text answer before scoring.
    return Response("Healthy", content_type="text/plain; charset=utf-8")


@bp.get("/healthz")
def healthz() -> Response:
    return jsonify(status="ok")  # liveness: the process answers; readiness is /readyz


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    model = _model()
    if model is None:
        return jsonify(status="not ready", error="model not loaded"), 503
    return jsonify(status="ready", model={"name": model.name, "version": model.version}), 200


@bp.get("/version")
def version() -> Response:
    config, model = current_app.config, _model()
    return jsonify(
        app_version=config["APP_VERSION"],
        commit=config["GIT_COMMIT"],
        image={"created": config["IMAGE_CREATED"], "source": config["IMAGE_SOURCE"]},
        model=None
        if model is None
        else {"name": model.name, "version": model.version, "sha256": model.sha256, "accuracy": model.accuracy},
    )


@bp.get("/metrics")
def prometheus() -> Response:
    body, content_type = metrics.exposition()
    return Response(body, content_type=content_type)
