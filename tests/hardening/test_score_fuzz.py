"""POST /score under 10,000 hostile bodies: only 4xx (or a correct 200), never a 5xx, and the server
still answers afterwards.

This extends tests/app/test_fuzz.py (its body, image and content-type strategies are reused as they are)
with what a hardening run adds: ten thousand examples instead of three hundred, bodies far over the size
limit, empty bodies, absurd nesting, too many images, images whose header claims gigapixels, big real
images, and wrong types in every place. Most run through Flask's test client with TESTING on (a bug raises
here instead of becoming a quiet 500); a few hundred go to a real gunicorn with two workers, which must
answer each with a 4xx or 200, lose no worker to a crash, and still answer /healthz and /score at the end.
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from classifier import create_app
from tests.app.conftest import Gunicorn, http
from tests.app.test_fuzz import REAL, b64, bodies, check_scores, content_types, image_bytes, json_values

pytestmark = [
    pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning"),
    pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning"),  # refused with a 413 all the same
]

LIMIT = 64 * 1024  # MAX_CONTENT_LENGTH of the fuzzed app: "huge" bodies stay cheap to generate
MAX_IMAGES = 8
MAX_PIXELS = 1024 * 1024


def png_header(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height (valid CRC), followed by a tiny IDAT: a decompression bomb
    in miniature. The app must refuse it from the header, before decoding."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def big_image(side: int, fmt: str) -> bytes:
    """A real, decodable image of side x side pixels (a dark square on white), small once compressed."""
    pixels = np.full((side, side), 255, dtype=np.uint8)
    pixels[side // 4 : side // 2, side // 3 : side // 2] = 0
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, fmt)
    return buffer.getvalue()


BIG = [big_image(1000, "PNG"), big_image(1024, "GIF"), big_image(1100, "PNG")]  # the last is over MAX_PIXELS

hostile_images = st.one_of(
    image_bytes,  # tests/app: real, damaged, signature + junk, random bytes
    st.builds(png_header, st.integers(0, 2**31 - 1), st.integers(0, 2**31 - 1)),
    st.sampled_from(BIG),
    st.just(b""),
)
hostile_items = st.one_of(
    hostile_images.map(b64),
    hostile_images.map(lambda data: "data:image/png;base64," + b64(data)),
    hostile_images.map(lambda data: base64.urlsafe_b64encode(data).decode()),  # the wrong alphabet
    hostile_images.map(lambda data: b64(data).rstrip("=")),  # padding stripped
    json_values,
)
huge_bodies = st.one_of(
    st.integers(LIMIT + 1, 2 * LIMIT).map(lambda n: b'{"images": ["' + b"A" * n + b'"]}'),
    st.integers(LIMIT + 1, 2 * LIMIT).map(lambda n: b"\x00" * n),
)
deep_bodies = st.builds(
    lambda depth, shape: shape * depth, st.integers(10, 100_000), st.sampled_from([b"[", b'{"a":', b'{"images": ['])
)
hostile_bodies = st.one_of(
    bodies,  # tests/app's bodies: random bytes, random JSON, both payload shapes with junk images
    huge_bodies,
    deep_bodies,
    st.just(b""),
    st.sampled_from([b"null", b"[]", b"{}", b'""', b"0", b"NaN", b'{"images": NaN}', b'{"images": Infinity}']),
    st.binary(min_size=1, max_size=64).map(lambda junk: b"\xef\xbb\xbf" + junk),  # a BOM, then garbage
    st.lists(hostile_items, max_size=MAX_IMAGES + 3).map(lambda items: json.dumps({"images": items}).encode()),
    st.lists(hostile_items, max_size=3).map(lambda items: json.dumps({"input": json.dumps(items)}).encode()),
    st.integers(MAX_IMAGES + 1, 200).map(lambda n: json.dumps({"images": [b64(REAL[0])] * n}).encode()),
)
hostile_content_types = st.one_of(
    content_types, st.sampled_from(["application/json; charset=latin-1", "APPLICATION/JSON"])
)

CONFIG = {"MAX_CONTENT_LENGTH": LIMIT, "MAX_IMAGES": MAX_IMAGES, "MAX_IMAGE_PIXELS": MAX_PIXELS}


def check_answer(status: int, body: bytes, sent: bytes, content_type: str) -> None:
    """A 200 only for a well-formed request, with one prediction per image; anything else a 4xx JSON error."""
    assert 400 <= status < 500 or status == 200, (status, body[:300])
    answer = json.loads(body)
    if status == 200:
        check_scores(json.loads(sent), answer)
    else:
        assert set(answer) == {"error"} and isinstance(answer["error"], str) and answer["error"], answer


@pytest.fixture(scope="module")
def fuzz_client(hardening_model):
    return create_app({"TESTING": True, "MODEL_DIR": str(hardening_model), **CONFIG}).test_client()


@settings(
    max_examples=10_000,
    deadline=None,
    database=None,  # the same 10,000 examples every run: no replay of old failures in CI
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(body=hostile_bodies, content_type=hostile_content_types)
def test_ten_thousand_hostile_bodies_get_a_4xx_never_a_5xx(fuzz_client, body: bytes, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = fuzz_client.post("/score", data=body, headers=headers)
    assert response.mimetype == "application/json"
    check_answer(response.status_code, response.get_data(), body, content_type)


def test_the_limits_the_fuzz_relies_on_are_the_ones_that_answer(fuzz_client) -> None:
    # The fuzz must be able to fail: each hostile shape is refused for its own reason, not by accident.
    status = fuzz_client.post("/score", data=b'{"images": ["' + b"A" * LIMIT + b'"]}', content_type="application/json")
    assert status.status_code == 413
    bomb = fuzz_client.post("/score", json={"images": [b64(png_header(100_000, 100_000))]})
    assert bomb.status_code == 413 and "pixels" in bomb.get_json()["error"]
    over = fuzz_client.post("/score", json={"images": [b64(BIG[2])]})
    assert over.status_code == 413 and "1100x1100" in over.get_json()["error"]
    assert fuzz_client.post("/score", json={"images": [b64(BIG[0])]}).status_code == 200
    deep = fuzz_client.post("/score", data=b"[" * 50_000, content_type="application/json")
    assert deep.status_code == 400 and "malformed JSON" in deep.get_json()["error"]
    many = fuzz_client.post("/score", json={"images": [b64(REAL[0])] * (MAX_IMAGES + 1)})
    assert many.status_code == 413


# --- the same against a real gunicorn ---------------------------------------------------------------


@pytest.fixture(scope="module")
def server(hardening_model, tmp_path_factory):
    workdir = tmp_path_factory.mktemp("gunicorn-fuzz")
    env = {name: str(value) for name, value in CONFIG.items()}
    gunicorn = Gunicorn(hardening_model, workdir, workers=2, **env)
    gunicorn.start()
    try:
        gunicorn.wait_ready()
        gunicorn.wait_all_workers(2)
        yield gunicorn
    finally:
        gunicorn.stop()


def booted_workers(server: Gunicorn) -> int:
    return server.stderr.read_text().count("Booting worker")


def test_a_real_gunicorn_answers_hundreds_of_hostile_bodies_and_keeps_serving(server, hardening_model) -> None:
    workers_before = booted_workers(server)
    assert workers_before == 2

    @settings(max_examples=300, deadline=None, database=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])  # fmt: skip
    @given(body=hostile_bodies, content_type=hostile_content_types)
    def one(body: bytes, content_type: str) -> None:
        headers = {"Content-Type": content_type} if content_type else {}
        status, answer = http("POST", f"{server.base}/score", body, headers, timeout=30)
        check_answer(status, answer, body, content_type)

    one()
    # Still serving, with the same two workers: none crashed and was quietly replaced by the master.
    assert http("GET", f"{server.base}/healthz")[0] == 200
    digit = json.dumps({"images": [b64(REAL[0])]}).encode()
    status, answer = http("POST", f"{server.base}/score", digit, {"Content-Type": "application/json"})
    assert status == 200 and len(json.loads(answer)["predictions"]) == 1
    assert booted_workers(server) == workers_before, server.stderr.read_text()[-3000:]
    assert "Traceback" not in server.stderr.read_text(), server.stderr.read_text()[-3000:]
