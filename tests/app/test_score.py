"""POST /score with real pictures of held-out digits, in the formats and colour modes clients send."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image

N_ACCURACY = 150  # held-out images per accuracy test (the model never saw them)


def top1_accuracy(client, images: list[str], labels: np.ndarray) -> float:
    predicted = []
    for start in range(0, len(images), 50):  # several requests of up to 50 images, under MAX_IMAGES
        response = client.post("/score", json={"images": images[start : start + 50]})
        assert response.status_code == 200, response.get_json()
        predicted += [p["top3"][0]["label"] for p in response.get_json()["predictions"]]
    return float(np.mean(np.asarray(predicted) == labels.astype(str)))


@pytest.mark.parametrize(("fmt", "params"), [("PNG", {}), ("JPEG", {"quality": 75})], ids=["png", "jpeg-q75"])
def test_heldout_digits_black_on_white_are_classified_at_least_90_percent(client, heldout, digit_b64, fmt, params):
    x, y = heldout
    images = [digit_b64(pixels, size=64, fmt=fmt, **params) for pixels in x[:N_ACCURACY]]
    assert top1_accuracy(client, images, y[:N_ACCURACY]) >= 0.9


@pytest.mark.parametrize(
    "variant",
    [
        {"mode": "L", "size": 8},
        {"mode": "L", "size": 200},
        {"mode": "RGB", "size": 28},
        {"mode": "RGBA", "size": 50},  # black ink on a transparent background
        {"mode": "L", "size": 80, "invert": True},  # white chalk on a blackboard
        {"mode": "P", "size": 64, "fmt": "GIF"},
        {"mode": "RGB", "size": 40, "fmt": "WEBP", "lossless": True},
        {"mode": "L", "size": 64, "fmt": "BMP"},
    ],
    ids=lambda v: "-".join(str(x) for x in v.values()),
)
def test_other_sizes_colour_modes_and_formats_are_classified(client, heldout, digit_b64, variant):
    x, y = heldout
    images = [digit_b64(pixels, **variant) for pixels in x[:40]]
    assert top1_accuracy(client, images, y[:40]) >= 0.9


def test_digit_anywhere_on_a_larger_non_square_canvas_is_found_and_centred(client, heldout, digit_image, encode):
    x, y = heldout
    images = []
    for index, pixels in enumerate(x[:40]):
        canvas = Image.new("L", (300, 180), 255)
        canvas.paste(digit_image(pixels, size=96), (20 + 4 * index, 10 + index))
        images.append(encode(canvas))
    assert top1_accuracy(client, images, y[:40]) >= 0.9


def test_exif_orientation_of_phone_photos_is_applied(client, heldout, digit_image, encode):
    x, y = heldout
    images = []
    for pixels in x[:30]:
        exif = Image.Exif()
        exif[0x0112] = 6  # Orientation: stored rotated; viewers turn it 90 degrees clockwise
        stored = digit_image(pixels, size=64, mode="RGB").transpose(Image.Transpose.ROTATE_90)
        images.append(encode(stored, "JPEG", quality=90, exif=exif.tobytes()))
    assert top1_accuracy(client, images, y[:30]) >= 0.9


def test_large_photo_sized_image_is_shrunk_and_classified(client, heldout, digit_image, encode):
    x, y = heldout
    canvas = Image.new("RGB", (3000, 2000), "white")
    canvas.paste(digit_image(x[5], size=1200, mode="RGB"), (900, 400))
    response = client.post("/score", json={"images": [encode(canvas, "JPEG", quality=85)]})
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["top3"][0]["label"] == str(y[5])


def test_sixteen_bit_grayscale_png_is_classified(client, heldout, encode):
    x, y = heldout
    images = []
    for pixels in x[:20]:
        gray = np.round((1 - pixels.reshape(8, 8) / 16) * 65535).astype(np.uint16)
        images.append(encode(Image.fromarray(gray).resize((48, 48), Image.Resampling.NEAREST)))
    assert top1_accuracy(client, images, y[:20]) >= 0.9


def test_answer_has_model_identity_and_three_distinct_labels_sorted_by_probability(client, heldout, digit_b64):
    x, _ = heldout
    response = client.post("/score", json={"images": [digit_b64(x[0]), digit_b64(x[1])]})
    body = response.get_json()
    assert response.status_code == 200 and response.mimetype == "application/json"
    assert body["model"] == {"name": "digits", "version": "v1"}
    assert len(body["predictions"]) == 2
    for prediction in body["predictions"]:
        top3 = prediction["top3"]
        assert len(top3) == 3 and len({p["label"] for p in top3}) == 3
        probabilities = [p["probability"] for p in top3]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(isinstance(p["label"], str) and 0 <= p["probability"] <= 1 for p in top3)
        assert sum(probabilities) <= 1.0 + 1e-5


def test_classic_input_shape_gets_the_samples_answer_with_the_same_ranking_as_images(client, heldout, digit_b64):
    x, _ = heldout
    images = [digit_b64(pixels) for pixels in x[:5]]
    classic = client.post("/score", json={"input": json.dumps(images)})
    modern = client.post("/score", json={"images": images})
    assert classic.status_code == 200 and classic.mimetype == "application/json"
    result, timing = classic.get_json()["result"]
    assert re.fullmatch(r"Computed in \d+(\.\d{1,2})? ms", timing)
    # The same labels in the same order, probabilities as percent.
    expected = [[[p["label"], p["probability"] * 100] for p in prediction["top3"]]
                for prediction in modern.get_json()["predictions"]]  # fmt: skip
    assert [[label for label, _ in top3] for top3 in result] == [[label for label, _ in top3] for top3 in expected]
    for top3, wanted in zip(result, expected, strict=True):
        assert [percent for _, percent in top3] == pytest.approx([percent for _, percent in wanted], abs=1e-3)
    # An "input" that is already a list (not a JSON string) is the classic dialect too.
    assert client.post("/score", json={"input": images}).get_json()["result"][0] == result


def test_classic_input_accepts_the_samples_str_of_bytes_form(client, heldout, digit_b64):
    x, y = heldout
    image = digit_b64(x[7])
    response = client.post("/score", json={"input": json.dumps([f"b'{image}'"])})
    assert response.status_code == 200
    assert response.get_json()["result"][0][0][0][0] == str(y[7])
    # Only in the classic dialect: "images" stays strict.
    assert client.post("/score", json={"images": [f"b'{image}'"]}).status_code == 400


def test_get_root_answers_healthy_as_the_samples_client_expects(client):
    response = client.get("/")
    assert response.status_code == 200 and response.get_data(as_text=True) == "Healthy"
    assert response.mimetype == "text/plain"


def test_data_url_prefix_is_accepted(client, heldout, digit_b64):
    x, y = heldout
    response = client.post("/score", json={"images": ["data:image/png;base64," + digit_b64(x[3])]})
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["top3"][0]["label"] == str(y[3])


def test_charset_parameter_on_the_json_content_type_is_accepted(client, heldout, digit_b64):
    x, _ = heldout
    body = json.dumps({"images": [digit_b64(x[0])]})
    response = client.post("/score", data=body, content_type="application/json; charset=utf-8")
    assert response.status_code == 200


def test_answers_are_byte_for_byte_what_jsonify_writes(app, client, heldout, digit_b64):
    # /score builds its JSON itself (one encoder, no provider lookups); clients and caches see the same bytes
    # and headers as Flask's jsonify gives.
    from flask import jsonify

    x, _ = heldout
    images = [digit_b64(pixels) for pixels in x[:3]]
    modern = client.post("/score", json={"images": images})
    body = modern.get_json()
    with app.app_context():
        expected = jsonify(model=body["model"], predictions=body["predictions"])
    assert modern.get_data() == expected.get_data()
    assert modern.headers["Content-Type"] == expected.headers["Content-Type"] == "application/json"
    classic = client.post("/score", json={"input": json.dumps(images)})
    with app.app_context():
        expected = jsonify(result=classic.get_json()["result"])
    assert classic.get_data() == expected.get_data()
    assert classic.headers["Content-Type"] == expected.headers["Content-Type"]
    assert classic.headers["Content-Length"] == str(len(expected.get_data()))
