"""Docker HEALTHCHECK: `python -m classifier.healthcheck` exits 0 if GET /healthz answers 200, else 1.

Standard library only, and it talks to the address gunicorn binds (APP_BIND, the first one if it lists
several), so it works in the image whatever port the container was started with.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

TIMEOUT = 3.0


def url() -> str:
    first = os.environ.get("APP_BIND", "127.0.0.1:8000").split(",")[0].strip()  # the serving address
    host, _, port = first.rpartition(":")
    if host in ("", "0.0.0.0", "[::]", "::"):  # a wildcard bind is reachable on loopback
        host = "127.0.0.1"
    return f"http://{host}:{port}/healthz"


def main() -> int:
    # No proxies: an HTTP_PROXY in the container's environment must not answer for loopback.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url(), timeout=TIMEOUT) as response:
            status = response.status
    except (urllib.error.URLError, OSError, ValueError) as exc:
        print(f"unhealthy: {url()}: {exc}", file=sys.stderr)
        return 1
    if status != 200:
        print(f"unhealthy: {url()} answered {status}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
