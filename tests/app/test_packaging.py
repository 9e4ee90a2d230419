"""What ships in the image: app/ alone, its pinned serving dependencies, and the Dockerfile's contract."""

from __future__ import annotations

import ast
import re
from importlib.metadata import distribution
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
APP = REPO / "app"
SERVING = ["flask", "gunicorn", "uvicorn-worker", "httptools", "uvloop", "onnxruntime", "numpy", "pillow",
           "prometheus-client"]
LINEAGE_ARGS = ["GIT_COMMIT", "BUILD_DATE", "SOURCE_URL", "APP_VERSION", "MODEL_NAME", "MODEL_VERSION", "MODEL_SHA256"]


def pins(path: Path) -> dict[str, str]:
    found = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            found[canonicalize_name(name)] = version
    return found


def test_app_imports_neither_modelship_nor_training():
    # The image holds app/ + model + wheels only: such an import would work in tests and fail in production.
    for source in APP.rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text(), str(source))):
            names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            assert not [n for n in names if n.split(".")[0] in ("modelship", "training")], source


def test_app_requirements_pin_exactly_the_repository_lock_versions():
    app, lock = pins(APP / "requirements.txt"), pins(REPO / "requirements.txt")
    assert {name: lock.get(name) for name in app} == app


def test_app_requirements_list_every_transitive_serving_dependency():
    closure, todo = set(), [canonicalize_name(name) for name in SERVING]
    while todo:
        name = todo.pop()
        if name in closure:
            continue
        closure.add(name)
        for spec in distribution(name).requires or []:
            requirement = Requirement(spec)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(canonicalize_name(requirement.name))
    assert set(pins(APP / "requirements.txt")) == closure


def test_dockerfile_declares_build_metadata_only_after_every_copy():
    lines = [line.strip() for line in (APP / "Dockerfile").read_text().splitlines()]
    last_copy = max(i for i, line in enumerate(lines) if line.startswith("COPY "))
    for arg in LINEAGE_ARGS:
        declared = [i for i, line in enumerate(lines) if re.match(rf"ARG {arg}\b", line)]
        assert declared and min(declared) > last_copy, arg
        used = [i for i, line in enumerate(lines) if f"${{{arg}}}" in line]
        assert used and min(used) > last_copy, arg
    assert "USER 10001:10001" in lines
    assert any("classifier.healthcheck" in line for line in lines)
    # Dependencies, then the model, then the code: a code-only change keeps the first two cached.
    order = [i for i, line in enumerate(lines) if line.startswith("COPY --from=")]
    assert [lines[i].split()[1] for i in order] == ["--from=deps", "--from=model", "--from=code"]


def test_the_code_layer_is_reproducible():
    """A model-only change rebuilds the code layer after the model: it must come out as the same bytes, so the
    registry already has it. The code stage fixes every file's and folder's time and mode, and the runtime
    stage copies the whole tree into / (a folder the copy itself created would carry the build's time)."""
    text = (APP / "Dockerfile").read_text()
    stage = text.split("AS code", 1)[1].split("\nFROM ", 1)[0]
    assert {"classifier/", "gunicorn.conf.py", "modelpkg/"} <= {line.split()[1] for line in stage.splitlines()
                                                             if line.startswith("COPY ")}  # fmt: skip
    normalise = 'RUN chmod -R u=rwX,go=rX /srv/app && find /srv/app -exec touch -h -d "@${SOURCE_DATE_EPOCH}" {} +'
    assert normalise in stage.splitlines()
    assert "COPY --from=code /srv/ /" in text.splitlines()


def test_build_context_folders_are_git_ignored_but_not_docker_ignored():
    assert set((APP / ".gitignore").read_text().split()) >= {"/wheels/", "/model/"}
    docker_ignored = (APP / ".dockerignore").read_text()
    assert not re.search(r"^\s*/?(wheels|model)/?\s*$", docker_ignored, re.MULTILINE)
