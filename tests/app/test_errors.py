"""Every client mistake is a 4xx with a JSON {"error": ...} that says what to fix; never a 500."""

from __future__ import annotations

import base64
import json
import struct
import zlib

import pytest
from PIL import Image

from classifier import create_app


def assert_error(response, status: int, *fragments: str) -> str:
    assert response.status_code == status, response.data[:300]
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    for fragment in fragments:
        assert fragment in body["error"]
    return body["error"]


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but holds almost no data (a decompression bomb's header)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.fixture
def small_limits_client(model_package):
    app = create_app({"TESTING": True, "MODEL_DIR": str(model_package), "MAX_CONTENT_LENGTH": 20_000, "MAX_IMAGES": 3})
    return app.test_client()


# ------------------------------------------------------------------------------------------- 415


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_body_that_is_not_declared_json_is_415(client, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/score", data=b'{"images": []}', headers=headers)
    assert_error(response, 415, "application/json")


# ------------------------------------------------------------------------------------------- 400


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (b"{not json", "malformed JSON"),
        (b"", "malformed JSON"),
        (b"\xff\xfe\x00garbage", "malformed JSON"),
        (b"[" * 100_000, "malformed JSON"),  # nesting deep enough to exhaust the parser's recursion
        (b'["a list"]', "JSON object"),
        (b"{}", 'exactly one of "images"'),
        (b'{"imgs": ["x"]}', 'exactly one of "images"'),
        (b'{"images": [], "input": "[]"}', 'exactly one of "images"'),
        (b'{"images": "aGVsbG8="}', '"images" must be a list'),
        (b'{"images": null}', '"images" must be a list'),
        (b'{"images": []}', '"images" is empty'),
        (b'{"input": "not json"}', '"input" must be a JSON-encoded list'),
        (b'{"input": "{\\"a\\": 1}"}', '"input" must be a list'),
        (b'{"input": "[]"}', '"input" is empty'),
    ],
)
def test_malformed_or_misshapen_json_is_400(client, body, fragment):
    assert_error(client.post("/score", data=body, content_type="application/json"), 400, fragment)


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        (17, "images[1]: must be a base64 string, got int"),
        (None, "images[1]: must be a base64 string, got NoneType"),
        ("***not base64***", "images[1]: not valid base64"),
        ("aGVsbG8", "images[1]: not valid base64"),  # missing padding: strict, no guessing
        ("", "images[1]: empty image"),
        (b64(b"hello, I am plain text"), "images[1]: not a supported image"),
        (b64(b"%!PS-Adobe-3.0 EPSF-3.0\n"), "images[1]: not a supported image"),  # EPS would run Ghostscript
    ],
    ids=["int", "null", "not-base64", "no-padding", "empty", "plain-text", "eps"],
)
def test_bad_image_is_400_naming_its_index(client, digit_b64, heldout, item, fragment):
    good = digit_b64(heldout[0][0])
    assert_error(client.post("/score", json={"images": [good, item, good]}), 400, fragment)


def test_truncated_png_is_400_naming_its_index(client, digit_b64, heldout):
    png = base64.b64decode(digit_b64(heldout[0][0], size=64))
    truncated = b64(png[: len(png) // 2])
    assert_error(client.post("/score", json={"images": [truncated]}), 400, "images[0]:", "corrupt or truncated")


def test_blank_image_is_400(client, encode):
    blank = encode(Image.new("L", (32, 32), 255))
    assert_error(client.post("/score", json={"images": [blank]}), 400, "images[0]: image is blank")


def test_bad_image_in_the_classic_shape_is_named_by_its_input_index(client):
    response = client.post("/score", json={"input": json.dumps(["!!"])})
    assert_error(response, 400, "input[0]: not valid base64")


# ------------------------------------------------------------------------------------------- 413


def test_body_over_max_content_length_is_413(small_limits_client):
    body = json.dumps({"images": ["A" * 30_000]})
    response = small_limits_client.post("/score", data=body, content_type="application/json")
    assert_error(response, 413, "larger than 20000 bytes")


def test_body_over_the_default_8_mib_is_413(client):
    body = b'{"images": ["' + b"A" * (8 * 1024 * 1024) + b'"]}'
    assert_error(client.post("/score", data=body, content_type="application/json"), 413, "8388608 bytes")


def test_more_images_than_max_images_is_413(small_limits_client, digit_b64, heldout):
    images = [digit_b64(heldout[0][0], size=8)] * 4
    assert_error(small_limits_client.post("/score", json={"images": images}), 413, "4 images, at most 3")


def test_image_with_more_pixels_than_max_image_pixels_is_413_before_decoding(client, encode):
    huge = encode(Image.new("L", (5000, 4000), 255))  # 20 Mpx, compresses to a few kB
    response = client.post("/score", json={"images": [huge]})
    assert_error(response, 413, "images[0]: image is 5000x4000 pixels")


def test_decompression_bomb_header_is_413_not_500(client):
    # 30000 x 30000 = 900 Mpx: Pillow's own DecompressionBombError fires while merely opening it.
    bomb = b64(png_header_only(30_000, 30_000))
    assert_error(client.post("/score", json={"images": [bomb]}), 413, "images[0]:")


def test_request_over_the_pixel_budget_is_413_naming_the_limit(model_package, digit_b64, heldout):
    app = create_app({"TESTING": True, "MODEL_DIR": str(model_package), "MAX_REQUEST_PIXELS": 3 * 64 * 64})
    client = app.test_client()
    image = digit_b64(heldout[0][0], size=64)
    assert client.post("/score", json={"images": [image] * 3}).status_code == 200  # exactly the budget
    message = assert_error(client.post("/score", json={"images": [image] * 4}), 413, "limit of 12288 pixels")
    assert "16384 pixels" in message and "MAX_REQUEST_PIXELS" in message
    assert_error(client.post("/score", json={"input": json.dumps([image] * 4)}), 413, '"input" has 16384 pixels')


def test_pixel_budget_is_checked_from_the_headers_before_any_image_is_decoded(client):
    # Three 3000x3000 headers (each under MAX_IMAGE_PIXELS) over the default 32 Mpx budget; their pixel
    # data is a few bytes, so decoding any of them would answer 400 "corrupt or truncated" instead.
    bomb = b64(png_header_only(3000, 3000))
    response = client.post("/score", json={"images": [bomb, bomb, bomb, bomb]})
    assert_error(response, 413, "36000000 pixels in all, over the limit of 33554432 pixels per request")
    assert_error(client.post("/score", json={"images": [bomb]}), 400, "images[0]: image data is corrupt")


def test_a_webp_counts_twice_against_both_pixel_limits(model_package, heldout, digit_image, encode):
    # libwebp needs about twice the memory per pixel of a PNG to decode: a WEBP of 4096 x 4096 took a worker
    # to 460 MB. The same picture is accepted as a PNG and refused as a WEBP at the same limit.
    limits = {"MAX_IMAGE_PIXELS": 100 * 100, "MAX_REQUEST_PIXELS": 3 * 80 * 80}
    client = create_app({"TESTING": True, "MODEL_DIR": str(model_package), **limits}).test_client()
    big, small = digit_image(heldout[0][0], size=80), digit_image(heldout[0][0], size=60)
    assert client.post("/score", json={"images": [encode(big, "PNG")]}).status_code == 200
    response = client.post("/score", json={"images": [encode(big, "WEBP", lossless=True)]})
    assert_error(response, 413, "images[0]: image is 80x80 pixels (a WEBP counts 2x), more than the 10000 allowed")
    assert client.post("/score", json={"images": [encode(small, "WEBP", lossless=True)] * 2}).status_code == 200
    response = client.post("/score", json={"images": [encode(small, "WEBP", lossless=True)] * 3})
    assert_error(response, 413, '"images" has 21600 pixels in all (a WEBP counts 2x), over the limit of 19200')


# ---------------------------------------------------------------------------------- 404, 405, 500, 503


def test_unknown_path_is_json_404(client):
    assert_error(client.get("/no/such/thing"), 404, "not found")


def test_wrong_method_is_json_405_with_allow_header(client):
    response = client.get("/score")
    assert_error(response, 405, "not allowed")
    assert "POST" in response.headers["Allow"]
    assert_error(client.post("/healthz"), 405)


def test_unexpected_exception_is_json_500_without_details(model_package):
    app = create_app({"MODEL_DIR": str(model_package)})  # not TESTING: exceptions are handled, not raised

    @app.get("/boom")
    def boom():
        raise RuntimeError("secret internals")

    response = app.test_client().get("/boom")
    message = assert_error(response, 500, "internal server error")
    assert "secret" not in message


def test_score_without_a_loaded_model_is_503(app, digit_b64, heldout):
    app.extensions.pop("classifier.model")
    response = app.test_client().post("/score", json={"images": [digit_b64(heldout[0][0])]})
    assert_error(response, 503, "model not loaded")
