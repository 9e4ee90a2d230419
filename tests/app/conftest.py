"""Fixtures for the classifier app, the training code and the manifest.

One model package is trained per session (training is the slow part) and shared read-only: a test that
needs a broken package copies it first (`package_copy`).
"""

from __future__ import annotations

import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flask import Flask
from flask.testing import FlaskClient
from PIL import Image

from classifier import create_app
from modelpkg.dataset import load_split
from training.train import train_package

REPO = Path(__file__).resolve().parents[2]
APP_DIR = REPO / "app"
# No proxy for loopback, whatever the environment says.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="session")
def model_package(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real trained package (model.onnx, labels.json, model.json); never modify it in a test."""
    path = tmp_path_factory.mktemp("model") / "digits-v1"
    train_package(path, version="v1")
    return path


@pytest.fixture
def package_copy(model_package: Path, tmp_path: Path) -> Path:
    """A private copy of the package, for tests that tamper with it."""
    return Path(shutil.copytree(model_package, tmp_path / "package"))


@pytest.fixture
def app(model_package: Path) -> Flask:
    return create_app({"TESTING": True, "MODEL_DIR": str(model_package)})


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def heldout() -> tuple[np.ndarray, np.ndarray]:
    """(X float32 [450, 64] in 0..16, y) of the fixed held-out split: never seen by the model."""
    _, x_heldout, _, y_heldout = load_split()
    return x_heldout, y_heldout


def digit_image(pixels: np.ndarray, size: int = 64, mode: str = "L", invert: bool = False) -> Image.Image:
    """An 8x8 0..16 digit drawn as black ink on white paper (white on black if invert), upscaled."""
    ink = pixels.reshape(8, 8) / 16.0
    gray = np.round((ink if invert else 1.0 - ink) * 255).astype(np.uint8)
    image = Image.fromarray(gray).resize((size, size), Image.Resampling.NEAREST)
    if mode == "RGBA":  # black ink whose coverage is the alpha channel, on a transparent background
        alpha = np.asarray(image) if invert else 255 - np.asarray(image)
        black = np.zeros_like(alpha)
        return Image.fromarray(np.dstack([black, black, black, alpha]))
    return image.convert(mode)


def encode(image: Image.Image, fmt: str = "PNG", **params: Any) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


@pytest.fixture(scope="session", name="digit_image")
def digit_image_fixture() -> Callable[..., Image.Image]:
    """digit_image(pixels, size=64, mode="L", invert=False) -> PIL image (see digit_image above)."""
    return digit_image


@pytest.fixture(scope="session", name="encode")
def encode_fixture() -> Callable[..., str]:
    """encode(image, fmt="PNG", **save_params) -> base64 string."""
    return encode


@pytest.fixture(scope="session")
def digit_b64() -> Callable[..., str]:
    """digit_b64(pixels, size=64, mode="L", fmt="PNG", invert=False, **save_params) -> base64 string."""

    def make(pixels: np.ndarray, size: int = 64, mode: str = "L", fmt: str = "PNG", invert: bool = False,
             **params: Any) -> str:  # fmt: skip
        return encode(digit_image(pixels, size, mode, invert), fmt, **params)

    return make


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="session", name="free_port")
def free_port_fixture() -> Callable[[], int]:
    return free_port


def http(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None,
         timeout: float = 10) -> tuple[int, bytes]:  # fmt: skip
    """(status, body) of a real HTTP request; HTTP errors are answers, not exceptions."""
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with OPENER.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


@pytest.fixture(scope="session", name="http_request")
def http_fixture() -> Callable[..., tuple[int, bytes]]:
    """http(method, url, body=None, headers=None, timeout=10) -> (status, body), against a real server."""
    return http


class Gunicorn:
    """`gunicorn -c gunicorn.conf.py` started from app/ like the image does, in its own session."""

    def __init__(self, model_dir: Path, workdir: Path, workers: int = 2, serving_port: int | None = None,
                 **env: str) -> None:  # fmt: skip
        """serving_port: also bind that (shared) port, first in APP_BIND, as a release's new server does;
        `port` and `base` are then the server's own private port."""
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        self.stdout = workdir / "gunicorn.out"
        self.stderr = workdir / "gunicorn.err"
        bind = f"127.0.0.1:{self.port}" if serving_port is None else f"127.0.0.1:{serving_port},127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "MODEL_DIR": str(model_dir),
            "APP_BIND": bind,
            "APP_WORKERS": str(workers),
            "TMPDIR": str(workdir),  # gunicorn.conf.py's runtime folder lands here, where tests can see it
            **env,
        }
        self.env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.stdout.open("wb") as out, self.stderr.open("wb") as err:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py"],
                cwd=APP_DIR, env=self.env, stdout=out, stderr=err, start_new_session=True,
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.process.returncode}:\n{self.stderr.read_text()}")
            try:
                if http("GET", f"{self.base}/readyz", timeout=2)[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"gunicorn not ready within {timeout}s:\n{self.stderr.read_text()}")

    def access_lines(self, fragment: str, count: int, timeout: float = 10) -> list[str]:
        """The access log's lines containing `fragment`, once there are `count` of them: the log is written
        in batches, at most about a second late (classifier/accesslog.py)."""
        deadline = time.monotonic() + timeout
        while True:
            lines = [line for line in self.stdout.read_text().splitlines() if fragment in line]
            if len(lines) >= count or time.monotonic() > deadline:
                return lines
            time.sleep(0.1)

    def pids(self, path: str) -> set[str]:
        """Worker pids that answered requests for `path`, from the access log (it ends with <pid>)."""
        lines = self.stdout.read_text().splitlines()
        return {line.rsplit("<", 1)[1].rstrip(">") for line in lines if f" {path} HTTP" in line}

    def wait_all_workers(self, workers: int, timeout: float = 60) -> None:
        """Until every worker has booted: /readyz answers as soon as the first one has."""
        deadline = time.monotonic() + timeout
        with ThreadPoolExecutor(max_workers=2 * workers) as pool:
            while len(self.pids("/healthz")) < workers:
                if time.monotonic() > deadline:
                    raise AssertionError(f"only workers {self.pids('/healthz')} answered within {timeout}s")
                list(pool.map(lambda _: http("GET", f"{self.base}/healthz"), range(4 * workers)))

    def stop(self) -> int | None:
        """SIGTERM (graceful), then SIGKILL to the process group if it hangs; returns the exit code."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, 9)  # the group we created: master and its workers only
                self.process.wait(timeout=10)
        return self.process.returncode


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., Gunicorn]]:
    """gunicorn(model_dir, workers=2, serving_port=None, **env) -> a started server; every server is stopped
    at teardown."""
    started: list[Gunicorn] = []

    def start(model_dir: Path, workers: int = 2, serving_port: int | None = None, **env: str) -> Gunicorn:
        workdir = tmp_path / f"gunicorn-{len(started)}"
        workdir.mkdir()
        server = Gunicorn(model_dir, workdir, workers, serving_port, **env)
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop()
