"""classifier/fastpath.py: the /score requests it answers get exactly the view's answer; it leaves the rest
to Flask."""

from __future__ import annotations

import io
import json
import re

import pytest
from hypothesis import given
from test_fuzz import FUZZ, bodies, content_types

from classifier import create_app, errors, fastpath, metrics

pytestmark = pytest.mark.filterwarnings("ignore:Corrupt EXIF data:UserWarning")  # as in test_fuzz.py
TIMING = re.compile(rb'"Computed in [0-9.]+ ms"')  # the classic answer's own timing differs between two runs


@pytest.fixture
def flask_only(model_package):
    """The same app without the fast path: every request through Flask and the blueprint's view."""
    app = create_app({"TESTING": True, "MODEL_DIR": str(model_package)})
    app.wsgi_app = app.wsgi_app.flask
    return app.test_client()


def same_answer(fast, plain) -> None:
    assert fast.status == plain.status
    assert [h for h in fast.headers.to_wsgi_list() if h[0] != "Content-Length"] == [
        h for h in plain.headers.to_wsgi_list() if h[0] != "Content-Length"
    ]
    assert fast.headers["Content-Length"] == str(len(fast.get_data()))
    assert TIMING.sub(b"T", fast.get_data()) == TIMING.sub(b"T", plain.get_data())


def test_successful_scores_do_not_reach_flask(app, client, digit_b64, heldout):
    def view_not_called():
        raise AssertionError("answered by the view")

    app.view_functions["classifier.score"] = view_not_called
    images = [digit_b64(pixels) for pixels in heldout[0][:2]]
    assert client.post("/score", json={"images": images}).status_code == 200
    assert client.post("/score", json={"input": json.dumps(images)}).status_code == 200
    body = json.dumps({"images": images})
    assert client.post("/score", data=body, content_type="application/json; charset=utf-8").status_code == 200


@pytest.mark.parametrize(
    ("body", "headers"),
    [
        (b'{"images": []}', {"Content-Type": "application/json"}),  # a 400 from the view
        (b'{"images": ["eA=="]}', {"Content-Type": "application/json"}),  # not an image: the view's 400
        (b'{"images": [', {"Content-Type": "application/json"}),  # malformed JSON
        (b"{}", {"Content-Type": "text/plain"}),  # 415
        (b"{}", {"Content-Type": "application/problem+json"}),  # JSON too, for Flask: its view answers
    ],
)
def test_what_the_fast_path_does_not_answer_flask_answers_as_before(client, flask_only, body, headers):
    same_answer(
        client.post("/score", data=body, headers=headers), flask_only.post("/score", data=body, headers=headers)
    )


def test_a_chunked_body_goes_to_flask_whole(client, flask_only, digit_b64, heldout):
    body = json.dumps({"images": [digit_b64(heldout[0][0])]}).encode()

    def chunked(test_client):
        headers = {"Content-Type": "application/json", "Transfer-Encoding": "chunked"}
        return test_client.post("/score", input_stream=io.BytesIO(body), headers=headers)  # no Content-Length

    same_answer(chunked(client), chunked(flask_only))


def test_the_apps_request_hooks_are_the_ones_the_fast_path_stands_in_for(app):
    # fastpath.py does for its requests what these do (time and count them; nothing to drain after a 200).
    # A new hook must be added there too, or the fast path would skip it.
    assert app.before_request_funcs == {None: [metrics._start_timer]}
    assert app.after_request_funcs == {None: [metrics._record, errors.drain_unread_body]}
    assert not app.url_value_preprocessors and not app.teardown_request_funcs
    assert isinstance(app.wsgi_app, fastpath.FastScore)


@FUZZ
@given(body=bodies, content_type=content_types)
def test_any_score_body_gets_the_same_answer_with_and_without_the_fast_path(client, flask_only, body, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    same_answer(
        client.post("/score", data=body, headers=headers), flask_only.post("/score", data=body, headers=headers)
    )
