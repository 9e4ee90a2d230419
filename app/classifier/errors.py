"""Every HTTP error as JSON {"error": "..."}: ours, routing's 404/405, Werkzeug's 413, a bug's 500.

Clients of a JSON API should never have to parse an HTML error page, and a 500 must not leak internals.
"""

from __future__ import annotations

import json

from flask import Flask, Response, current_app
from werkzeug.exceptions import HTTPException, RequestEntityTooLarge


def http_error(exc: HTTPException) -> Response:
    if exc.code is not None and exc.code >= 500:
        message = "internal server error" if exc.code == 500 else (exc.description or exc.name)
    elif isinstance(exc, RequestEntityTooLarge) and exc.description == RequestEntityTooLarge.description:
        # Werkzeug's own 413 (MAX_CONTENT_LENGTH) says nothing about the limit: say it.
        message = f"request body is larger than {current_app.config['MAX_CONTENT_LENGTH']} bytes"
    else:
        message = exc.description or exc.name
    response = exc.get_response()  # keeps the status and headers such as Allow on a 405
    response.set_data(json.dumps({"error": message}))
    response.content_type = "application/json"
    return response


def init_app(app: Flask) -> None:
    # Unhandled exceptions reach this handler as InternalServerError (an HTTPException), after Flask has
    # logged their traceback.
    app.register_error_handler(HTTPException, http_error)
