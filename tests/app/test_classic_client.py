"""The Azure "DevOps for AI apps" sample's client, unchanged, against the app under real gunicorn.

The sample's integration test (tests/integration/classify.py) fits each picture to 224x224 RGB, sends it as
PNG base64 in {"input": "[\"<base64>\"]"} with requests.post(url, data=jsonimg, headers={"content-type":
"application/json"}), and takes json["result"][0][0][0][0] as the top label; its client also probes the
server first. Both are reproduced here: the same body bytes and header, sent with the standard library
(the app's test environment has no requests) and without proxies, so they stay on loopback.
"""

from __future__ import annotations

import base64
import json
import re
from io import BytesIO

from PIL import Image, ImageOps

from tests.app.conftest import http


def to_base64(img: Image.Image) -> str:  # the sample's own helper
    imgio = BytesIO()
    img.save(imgio, "PNG")
    imgio.seek(0)
    return base64.b64encode(imgio.read()).decode("utf-8")


def sample_client_json(picture: Image.Image) -> str:
    """classify.py's img_url_to_json, minus the download: RGB, ImageOps.fit to 224x224, PNG, base64."""
    img = ImageOps.fit(picture.convert("RGB"), (224, 224), Image.Resampling.LANCZOS)  # (ANTIALIAS, renamed)
    return json.dumps({"input": f'["{to_base64(img)}"]'})  # the sample's '[\"{0}\"]'.format(...)


def post(url: str, data: str, headers: dict[str, str]) -> tuple[int, dict]:
    """requests.post(url, data=data, headers=headers) as the sample calls it: a str body goes out as is."""
    status, body = http("POST", url, data.encode("latin-1"), headers, timeout=30)
    return status, json.loads(body)


def test_the_samples_client_gets_the_right_top_label_from_real_gunicorn(model_package, gunicorn, heldout, digit_image):
    server = gunicorn(model_package, workers=2)
    server.wait_ready()
    assert http("GET", f"{server.base}/") == (200, b"Healthy")

    x, y = heldout
    headers = {"content-type": "application/json"}
    correct = 0
    for index in range(20):
        jsonimg = sample_client_json(digit_image(x[index], size=64))
        status, json_response = post(f"{server.base}/score", data=jsonimg, headers=headers)
        assert status == 200, json_response
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
    headers = {"content-type": "application/json"}
    status, answer = post(f"{server.base}/score", data=json.dumps({"input": json.dumps(images)}), headers=headers)
    assert status == 200
    result, _ = answer["result"]
    labels = [top3[0][0] for top3 in result]
    assert sum(label == str(truth) for label, truth in zip(labels, y[:6], strict=True)) >= 5
    # The modern dialect, unchanged beside it, ranks the same images the same way.
    status, modern = post(f"{server.base}/score", data=json.dumps({"images": images}), headers=headers)
    assert status == 200 and set(modern) == {"model", "predictions"}
    assert [p["top3"][0]["label"] for p in modern["predictions"]] == labels
