"""The app's session-trained package, shared with the training tests (trained once per session)."""

from tests.app.conftest import model_package, package_copy  # noqa: F401 (pytest fixtures)
