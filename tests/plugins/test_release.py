"""modelship.release.select_image's verdicts that need no registry (the rest: tests/e2e, tests/hardening)."""

from __future__ import annotations

import pytest

from modelship import release


def test_with_no_image_built_and_none_named_there_is_nothing_to_release() -> None:
    # Not a ReleaseError: the release DAG skips (a fresh install's first nightly run is not red).
    with pytest.raises(release.NothingToRelease, match="no image has passed CI yet"):
        release.select_image("", False, [], [])
    assert not issubclass(release.NothingToRelease, release.ReleaseError)


@pytest.mark.parametrize("image", ["", "   "])
def test_a_blank_image_param_with_no_events_is_the_same_nothing(image: str) -> None:
    with pytest.raises(release.NothingToRelease):
        release.select_image(image, False, [], [])


def test_a_malformed_image_param_is_a_release_error_naming_it() -> None:
    with pytest.raises(release.ReleaseError, match=r"param 'image' 'no image' is not an image reference"):
        release.select_image("no image", False, [], [])
