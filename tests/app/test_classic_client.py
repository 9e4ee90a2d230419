"""The Azure "DevOps for AI apps" sample's client, unchanged, against the app under real gunicorn.

The sample's integration test (tests/integration/classify.py) fits each picture to 224x224 RGB, sends it as
PNG base64 in {"input": "[\"<base64>\"]"} with requests, and takes json["result"][0][0][0][0] as the top
label; its test_api.sh first probes the server. Both are reproduced here as the sample wrote them, with
one difference: the session ignores proxy settings, so the requests stay on loopback.
"""

from __future__ import annotations

import base64
import json
import re
from io import BytesIO

import requests
from PIL import Image, ImageOps


def to_base64(img: Image.Image) -> str:  # the sample's own helper
    imgio = BytesIO()
    img.save(imgio, "PNG")
    imgio.seek(0)
    return base64.b64encode(imgio.read()).decode("utf-8")


def sample_client_json(picture: Image.Image) -> str:
    """classify.py's img_url_to_json, minus the download: RGB, ImageOps.fit to 224x224, PNG, base64."""
    img = ImageOps.fit(picture.convert("RGB"), (224, 224), Image.Resampling.LANCZOS)  # (ANTIALIAS, renamed)
    return json.dumps({"input": f'["{to_base64(img)}"]'})  # the sample's '[\"{0}\"]'.format(...)


def test_the_samples_client_gets_the_right_top_label_from_real_gunicorn(model_package, gunicorn, heldout, digit_image):
    server = gunicorn(model_package, workers=2)
    server.wait_ready()
    session = requests.Session()
    session.trust_env = False  # no proxy for 127.0.0.1
    home = session.get(f"{server.base}/", timeout=10)
    assert home.status_code == 200 and home.text == "Healthy"

    x, y = heldout
    headers = {"content-type": "application/json"}
    correct = 0
    for index in range(20):
        jsonimg = sample_client_json(digit_image(x[index], size=64))
        r = session.post(f"{server.base}/score", data=jsonimg, headers=headers, timeout=30)
        assert r.status_code == 200, r.text
        json_response = r.json()
        prediction = json_response["result"][0][0][0][0]
        correct += prediction == str(y[index])
        # The rest of the sample's answer: one image, its top 3 as [label, percent], then the timing.
        (top3,), timing = json_response["result"]
        assert [len(pair) for pair in top3] == [2, 2, 2] and len({label for label, _ in top3}) == 3
        percents = [percent for _, percent in top3]
        assert percents == sorted(percents, reverse=True) and 0 <= sum(percents) <= 100.001
        assert re.fullmatch(r"Computed in \d+(\.\d{1,2})? ms", timing)
    assert correct >= 18  # the model's held-out accuracy is ~97 %; these are resampled to 224x224


def test_several_images_in_one_classic_request_answer_in_order(model_package, gunicorn, heldout, digit_b64):
    server = gunicorn(model_package, workers=1)
    server.wait_ready()
    x, y = heldout
    images = [digit_b64(pixels, size=64) for pixels in x[:6]]
    session = requests.Session()
    session.trust_env = False
    r = session.post(f"{server.base}/score", data=json.dumps({"input": json.dumps(images)}),
                     headers={"content-type": "application/json"}, timeout=30)  # fmt: skip
    assert r.status_code == 200
    result, _ = r.json()["result"]
    labels = [top3[0][0] for top3 in result]
    assert sum(label == str(truth) for label, truth in zip(labels, y[:6], strict=True)) >= 5
    # The modern dialect, unchanged beside it, ranks the same images the same way.
    modern = session.post(f"{server.base}/score", json={"images": images}, timeout=30).json()
    assert set(modern) == {"model", "predictions"}
    assert [p["top3"][0]["label"] for p in modern["predictions"]] == labels
