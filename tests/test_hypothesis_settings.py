"""Every property-based test in the suite is derandomized with no example database, unless the run asks to
explore (HYPOTHESIS_PROFILE=explore): CI must draw the same examples on every commit (tests/conftest.py)."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent


def property_tests() -> list[tuple[str, object]]:
    found = []
    for path in sorted(TESTS.rglob("test_*.py")):
        if "@given" not in path.read_text():
            continue
        module = importlib.import_module(".".join(path.relative_to(TESTS.parent).with_suffix("").parts))
        for name in dir(module):
            candidates = [getattr(module, name)]
            if isinstance(candidates[0], type):  # test classes
                candidates = [getattr(candidates[0], attr) for attr in dir(candidates[0])]
            for fn in candidates:
                if callable(fn) and hasattr(fn, "hypothesis"):
                    found.append((f"{path.relative_to(TESTS)}::{getattr(fn, '__qualname__', name)}", fn))
    return found


@pytest.mark.skipif(os.environ.get("HYPOTHESIS_PROFILE") == "explore", reason="an exploring run: random by request")
def test_every_property_based_test_draws_the_same_examples_on_every_run() -> None:
    tests = property_tests()
    # The module-level fuzzers of tests/app and tests/hardening (those defined inside a test inherit the profile).
    assert len(tests) >= 4, [name for name, _ in tests]
    loose = {name: (fn._hypothesis_internal_use_settings.derandomize, fn._hypothesis_internal_use_settings.database)
             for name, fn in tests
             if not fn._hypothesis_internal_use_settings.derandomize
             or fn._hypothesis_internal_use_settings.database is not None}  # fmt: skip
    assert loose == {}
