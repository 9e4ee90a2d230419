"""Prometheus metrics: requests and latency by route and status, images scored, and the model served.

Under gunicorn every worker is a process with its own counters. gunicorn.conf.py sets
PROMETHEUS_MULTIPROC_DIR (before prometheus_client is imported) so each worker writes its values to files
there and /metrics, whichever worker answers, adds all of them up. Without the variable (tests, flask run)
the default in-process registry is used.
"""

from __future__ import annotations

import os
import time
from typing import Any

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

# Module level: metrics are process-wide, and creating an app twice (tests) must not register them twice.
REQUESTS = Counter("classifier_http_requests_total", "HTTP requests answered.", ["route", "method", "status"])
LATENCY = Histogram(
    "classifier_http_request_duration_seconds",
    "Time to answer an HTTP request.",
    ["route", "method", "status"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
IMAGES = Counter("classifier_images_scored_total", "Images scored by the model.")
# A gauge, not an Info: Info does not work in multiprocess mode. livemax drops workers that have exited.
MODEL_INFO = Gauge(
    "classifier_model_info",
    "The model being served (always 1).",
    ["name", "version", "sha256"],
    multiprocess_mode="livemax",
)
UNMATCHED = "<unmatched>"  # 404/405: the raw path would let any client create unbounded label values
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others count as "other"


def _start_timer() -> None:
    g.metrics_started = time.perf_counter()


# (route, method, status) -> (requests counter, latency histogram) of those labels. labels() validates
# and locks on every call; the set of label values is small and fixed (routes x methods x statuses).
_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}


def _record(response: Response) -> Response:
    rule = request.url_rule
    method = request.method
    count(UNMATCHED if rule is None else rule.rule, method, response.status_code, g.pop("metrics_started", None))
    return response


def count(route: str, method: str, status: int, started: float | None) -> None:
    """One answered request: its counter, and its latency since `started` (time.perf_counter()) if known."""
    key = (route, method if method in METHODS else "other", status)
    children = _CHILDREN.get(key)
    if children is None:  # any token is a valid method, hence "other"; raw paths never become labels
        labels = (key[0], key[1], str(key[2]))
        children = _CHILDREN.setdefault(key, (REQUESTS.labels(*labels), LATENCY.labels(*labels)))
    children[0].inc()
    if started is not None:
        children[1].observe(time.perf_counter() - started)


def init_app(app: Flask, name: str, version: str, sha256: str) -> None:
    """Time every request and publish which model this process serves."""
    if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # (clear() is not supported across processes)
        MODEL_INFO.clear()  # tests create many apps in one process: report only the current model
    MODEL_INFO.labels(name, version, sha256).set(1)
    app.before_request(_start_timer)
    app.after_request(_record)


def exposition() -> tuple[bytes, str]:
    """(body, content type) of the metrics of every worker, or of this process alone."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
