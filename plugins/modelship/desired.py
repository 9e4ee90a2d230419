"""What should serve now, and why it may not: one definition for the release DAG, `modelship status` and the
Airflow UI's Deployments page.

The desired state is (the newest commit of the configured branch that passed ci) × (the model version the
alias names *now*), chosen by lineage, never by the order in which ci runs happened to finish:

- "newest" is the commit's place on the branch (its first-parent line), not when its ci run ended, so an older
  commit's run that finishes last cannot ship an older build;
- the model is the alias's version now, so a data scientist's rollback (promote v1 again) is what serves next;
- "passed ci" means an `image` event names that commit (ci announces images it finds already pushed too).

An image a failed release set aside (a `quarantine` event without a later lift) is never deployed by a
scheduled release; the reason says so, with when and why.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from modelship.lineage import ImageEvent, Quarantine


@dataclass(frozen=True)
class Desired:
    """The desired state: the image to serve (None when none can be named) and why."""

    model_name: str
    model_version: str | None  # what the alias names now
    model_sha256: str | None
    commit: str | None  # the newest commit of the branch that passed ci
    image: ImageEvent | None
    reason: str  # why this image, or why none
    quarantine: Quarantine | None = None  # the desired image is quarantined (a scheduled release skips it)

    @property
    def deployable(self) -> bool:
        return self.image is not None and self.quarantine is None

    def describe(self) -> str:
        if self.image is None:
            return self.reason
        text = f"{self.image.ref} (commit {self.image.commit[:12]}, model {self.image.model_version})"
        if self.quarantine is not None:
            return f"{text}: {quarantine_notice(self.quarantine)}"
        return text


def quarantine_notice(q: Quarantine) -> str:
    return f"{q.digest} (commit {q.commit[:12] or '?'}, model {q.model_version or '?'}) quarantined since {q.at}: " + (
        q.reason.splitlines()[0] if q.reason else "no reason recorded"
    )


def in_quarantine(events: Iterable[Quarantine]) -> dict[str, Quarantine]:
    """digest → the quarantine in force: the newest event of each digest says "quarantined" (not "released")."""
    state: dict[str, Quarantine] = {}
    for event in events:
        if event.action == "quarantined":
            state[event.digest] = event
        elif event.action == "released":
            state.pop(event.digest, None)
    return state


def choose(
    images: Sequence[ImageEvent],
    branch: Sequence[str],
    alias: Mapping[str, Any] | None,
    quarantines: Iterable[Quarantine] = (),
    *,
    model_name: str,
    alias_name: str,
    branch_name: str,
) -> Desired:
    """The desired state from its inputs: the image events (oldest first), the branch's commits (newest first)
    and the alias record ({version, manifest_sha256} or None)."""
    if alias is None:
        return Desired(model_name, None, None, None, None,
                       f"no version of model {model_name!r} is promoted as {alias_name!r} yet")  # fmt: skip
    version, sha = str(alias["version"]), str(alias["manifest_sha256"])
    passed = {event.commit for event in images}
    commit = next((c for c in branch if c in passed), None)
    if commit is None:
        return Desired(model_name, version, sha, None, None,
                       f"no commit of branch {branch_name!r} has passed ci yet")  # fmt: skip
    matching = [e for e in images if e.commit == commit and e.model_sha256 == sha]
    if not matching:
        return Desired(
            model_name, version, sha, commit, None,
            f"no image of commit {commit[:12]} (the newest on {branch_name!r} that passed ci) with model "
            f"{model_name} {version} (what {alias_name!r} names now) yet: ci builds it when the model or a commit "
            f"arrives (or trigger ci with commit={commit[:12]})",
        )  # fmt: skip
    image = matching[-1]  # the newest announcement of that exact build
    quarantine = in_quarantine(quarantines).get(image.digest)
    why = f"commit {commit[:12]} is the newest on {branch_name!r} that passed ci; {alias_name!r} names {version}"
    return Desired(model_name, version, sha, commit, image, why, quarantine)


def current(images: Sequence[ImageEvent], quarantines: Iterable[Quarantine] = (), settings: Any = None) -> Desired:
    """The desired state now: the alias read from the model store, the branch from the source repository."""
    from modelship import source
    from modelship.model_store import open_store
    from modelship.settings import Settings

    settings = settings or Settings.get()
    alias = open_store(settings).read_alias(settings.model_name, settings.model_alias)
    branch = source.branch_history(settings.source_repo, settings.source_branch, settings.cache_dir)
    return choose(images, branch, alias, quarantines, model_name=settings.model_name, alias_name=settings.model_alias,
                  branch_name=settings.source_branch)  # fmt: skip
