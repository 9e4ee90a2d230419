"""Helpers for the containment tests: small checkouts whose app tests run in the test container, a loopback
listener that counts who knocks, and canary secrets planted where a commit's code must never reach."""

from __future__ import annotations

import json
import socket
import textwrap
import threading
import uuid
from pathlib import Path

# What the small test environments install: pytest and what it pulls in, a few MB of wheels.
PYTEST_ONLY = "# only pytest, pinned as the app's own files pin\npytest==9.2.0\n"


def make_checkout(root: Path, tests: dict[str, str], requirements_test: str = PYTEST_ONLY,
                  requirements: str = "# nothing served\n") -> Path:  # fmt: skip
    """A checkout as modelship.apptests sees one: app/requirements*.txt and tests/app/<name> files."""
    (root / "app").mkdir(parents=True)
    (root / "app" / "requirements.txt").write_text(requirements)
    (root / "app" / "requirements-test.txt").write_text(requirements_test)
    (root / "tests" / "app").mkdir(parents=True)
    for name, body in tests.items():
        (root / "tests" / "app" / name).write_text(textwrap.dedent(body))
    return root


class Sentinel:
    """A TCP listener on 127.0.0.1 that accepts and counts connections: where a commit's code might knock."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.knocks = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.knocks += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


class Canaries:
    """Secret-looking values planted in the worker's environment (an Airflow connection) and in a file of the
    state folder, as `make up` writes .state/modelship.env."""

    def __init__(self, state_dir: Path) -> None:
        self.conn = f"conn-canary-{uuid.uuid4().hex}"
        self.file = f"file-canary-{uuid.uuid4().hex}"
        self.conn_json = json.dumps({"conn_type": "docker", "host": "127.0.0.1", "login": "ci", "password": self.conn})
        state_dir.mkdir(parents=True, exist_ok=True)
        self.path = state_dir / "modelship.env"
        self.path.write_text(f"export MODELSHIP_CANARY_SECRET={self.file}\n")
        self.path.chmod(0o600)
        self.stat = self.path.stat()

    @property
    def values(self) -> tuple[str, str]:
        return self.conn, self.file

    def seen_in(self, text: str) -> list[str]:
        return [value for value in self.values if value in text]

    def file_unchanged(self) -> bool:
        now = self.path.stat()
        return (self.path.read_text() == f"export MODELSHIP_CANARY_SECRET={self.file}\n"
                and (now.st_mtime_ns, now.st_size, now.st_mode) == (self.stat.st_mtime_ns, self.stat.st_size,
                                                                   self.stat.st_mode))  # fmt: skip
