"""Operations endpoints: /healthz, /readyz, /version, /metrics."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from classifier import create_app
from modelpkg.manifest import manifest_sha256, read_manifest


def scrape(client) -> dict[tuple[str, frozenset], float]:
    """{(sample name, labels): value} of one GET /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200 and response.mimetype == "text/plain"
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.get_data(as_text=True))
        for sample in family.samples
    }


def value(samples, metric: str, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def test_healthz_answers_ok(client):
    response = client.get("/healthz")
    assert response.status_code == 200 and response.get_json() == {"status": "ok"}


def test_readyz_is_200_with_the_model_and_503_without(app):
    client = app.test_client()
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["model"] == {"name": "digits", "version": "v1"}
    app.extensions.pop("classifier.model")
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["status"] == "not ready"
    assert client.get("/healthz").status_code == 200  # alive, just not ready


def test_version_reports_build_metadata_from_the_environment_and_the_model_from_its_manifest(
    model_package, monkeypatch
):
    monkeypatch.setenv("GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    monkeypatch.setenv("APP_VERSION", "1.4.2")
    monkeypatch.setenv("IMAGE_CREATED", "2026-01-02T03:04:05Z")
    monkeypatch.setenv("IMAGE_SOURCE", "https://example.invalid/modelship")
    body = create_app({"TESTING": True, "MODEL_DIR": str(model_package)}).test_client().get("/version").get_json()
    manifest = read_manifest(model_package)
    assert body == {
        "app_version": "1.4.2",
        "commit": "0123456789abcdef0123456789abcdef01234567",
        "image": {"created": "2026-01-02T03:04:05Z", "source": "https://example.invalid/modelship"},
        "model": {
            "name": "digits",
            "version": "v1",
            "sha256": manifest_sha256(model_package),
            "accuracy": manifest["metrics"]["accuracy"],
        },
    }


def test_version_defaults_to_unknown_outside_an_image(client):
    body = client.get("/version").get_json()
    assert body["commit"] == "unknown" and body["app_version"] == "unknown"
    assert body["image"] == {"created": "unknown", "source": "unknown"}


def test_metrics_count_requests_by_route_template_and_status_exactly(client, digit_b64, heldout):
    before = scrape(client)
    for _ in range(3):
        client.get("/healthz")
    for _ in range(2):
        client.post("/score", json={"images": []})  # 400
    client.post("/score", json={"images": [digit_b64(heldout[0][0])] * 4})  # 200, four images
    client.get("/no/such/page/12345")
    client.open("/healthz", method="BREW12345")  # methods are client-chosen tokens too
    after = scrape(client)

    def delta(metric: str, **labels: str) -> float:
        return value(after, metric, **labels) - value(before, metric, **labels)

    requests = "classifier_http_requests_total"
    assert delta(requests, route="/healthz", method="GET", status="200") == 3
    assert delta(requests, route="/score", method="POST", status="400") == 2
    assert delta(requests, route="/score", method="POST", status="200") == 1
    assert delta(requests, route="<unmatched>", method="GET", status="404") == 1  # never the raw path
    assert delta(requests, route="<unmatched>", method="other", status="405") == 1
    assert not any("12345" in str(labels) for _, labels in after)
    latency = "classifier_http_request_duration_seconds_count"
    assert delta(latency, route="/healthz", method="GET", status="200") == 3
    assert delta(latency, route="/score", method="POST", status="200") == 1  # answered by fastpath.py
    assert delta(latency, route="/score", method="POST", status="400") == 2  # by the view
    assert delta("classifier_images_scored_total") == 4


def test_metrics_name_the_model_being_served(client, model_package):
    samples = scrape(client)
    info = value(samples, "classifier_model_info", name="digits", version="v1", sha256=manifest_sha256(model_package))
    assert info == 1
    assert [labels for name, labels in samples if name == "classifier_model_info"] == [
        frozenset({"name": "digits", "version": "v1", "sha256": manifest_sha256(model_package)}.items())
    ]
