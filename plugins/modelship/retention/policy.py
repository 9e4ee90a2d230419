"""What retention never deletes, and why: the protections, gathered from every source that can say.

An image (by registry digest) or a model version stays, whatever its age, when it

- **serves**: on any target, by the target's own account (`status()`), and every build a target keeps to return
  to by itself (`revisions()`: the kubernetes target's old ReplicaSets, the docker target's app containers);
- is **promoted**: an alias of the model names it (and, for images, the newest image carrying that model);
- is **quarantined**: a failed release set it aside (kept for the inquiry and for a deliberate `force` retry);
- is a **rollback target**: on each target, the build that served before the current one (the deployment
  history), and the version an alias named before its current one (the alias record's `previous`);
- is **the desired state** (modelship.desired): what the next release will deploy.

Where a source cannot be asked, retention is conservative and says so: a target that cannot be asked (no
connection, an outage) keeps every image its deployment history names; with no history either, or no quarantine
list, no image events or no aliases, nothing that could be protected is deleted at all (`blocked`); a desired
state that cannot be computed keeps every image carrying the model the alias names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from modelship import desired, history, retry
from modelship.lineage import LABEL_MODEL_SHA256, DeploymentRecord, ImageEvent, Quarantine

log = logging.getLogger("modelship.retention")

TARGETS = ("docker", "kubernetes")


@dataclass
class Protections:
    """Everything that must stay, each with the reasons; JSON-able (it travels between the DAG's tasks)."""

    images: dict[str, list[str]] = field(default_factory=dict)  # registry digest → why it stays
    models: dict[str, list[str]] = field(default_factory=dict)  # "<model>/<version>" → why it stays
    # model sha256 → why every image carrying that model stays (the desired state could not be computed)
    model_images: dict[str, list[str]] = field(default_factory=dict)
    # model sha256 → the aliases naming it: the newest image carrying it stays
    promoted: dict[str, list[str]] = field(default_factory=dict)
    blocked: list[str] = field(default_factory=list)  # why no image nor model version may be deleted at all
    notes: list[str] = field(default_factory=list)  # what could not be asked, and what is kept instead

    def add_image(self, digest: str | None, why: str) -> None:
        if digest and why not in self.images.setdefault(digest, []):
            self.images[digest].append(why)

    def add_model(self, name: str, version: str | None, why: str) -> None:
        if version and why not in self.models.setdefault(f"{name}/{version}", []):
            self.models[f"{name}/{version}"].append(why)

    def image_reasons(self, digests: Iterable[str], labels: Mapping[str, str]) -> list[str]:
        """Why an image (known by these digests, carrying these labels) stays; [] when nothing protects it."""
        reasons = list(self.blocked)
        for digest in digests:
            reasons += self.images.get(digest, [])
        reasons += self.model_images.get(labels.get(LABEL_MODEL_SHA256, ""), [])
        return list(dict.fromkeys(reasons))

    def model_reasons(self, name: str, version: str) -> list[str]:
        return list(dict.fromkeys([*self.blocked, *self.models.get(f"{name}/{version}", [])]))

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | Protections) -> Protections:
        if isinstance(data, Protections):
            return data
        return cls(**{k: v for k, v in data.items() if k in cls.__dataclass_fields__})


def gather(
    settings: Any,
    *,
    images: Sequence[ImageEvent] | None,
    quarantines: Sequence[Quarantine] | None,
    records: Sequence[DeploymentRecord] | None,
    unavailable: Mapping[str, str] | None = None,
    store: Any = None,
    targets: Sequence[str] = TARGETS,
) -> Protections:
    """The protections now. `images`, `quarantines`, `records`: the Asset events (oldest first); None when they
    could not be read, with the reason in `unavailable` ({"image" | "quarantine" | "deployments": why})."""
    unavailable = dict(unavailable or {})
    p = Protections()
    for name, events in (("image", images), ("quarantine", quarantines), ("deployments", records)):
        if events is None:
            why = unavailable.get(name, "not given")
            p.blocked.append(f"the `{name}` Asset events could not be read ({why}): what they protect is unknown")
    if store is None:
        from modelship.model_store import open_store

        try:
            store = open_store(settings)
        except Exception as exc:
            p.blocked.append(f"the model store could not be opened ({retry.first_line(exc)})")
    if store is not None:
        _aliases(p, store)
    serving = _targets(p, settings, targets, records)
    if records is not None:
        _rollback_targets(p, settings, records, serving)
    if quarantines is not None:
        _quarantined(p, settings, quarantines)
    if images is not None:
        _desired(p, settings, images, quarantines or [], store)
    for line in [*p.blocked, *p.notes]:
        log.info("%s", line)
    return p


def _aliases(p: Protections, store: Any) -> None:
    try:
        for name in store.list_models():
            for alias, record in store.list_aliases(name).items():
                version = record["version"]
                p.add_model(name, version, f"promoted: {name}:{alias} names it")
                p.promoted.setdefault(record["manifest_sha256"], []).append(f"{name}:{alias}")
                if record.get("previous"):
                    p.add_model(name, record["previous"],
                                f"rollback target: {name}:{alias} named it before {version}")  # fmt: skip
    except Exception as exc:
        p.blocked.append(f"the model store's aliases could not be read ({retry.first_line(exc)})")


def _targets(
    p: Protections, settings: Any, targets: Sequence[str], records: Sequence[DeploymentRecord] | None
) -> dict[str, str | None]:
    """Ask every target what serves and what it keeps; {target: serving digest or None} for those that answered."""
    from modelship.deploy import get_target

    serving: dict[str, str | None] = {}
    for name in targets:
        try:
            target = get_target(name, settings)
            status = target.status()
            kept = target.revisions()
        except Exception as exc:
            _not_asked(p, name, _why_not(exc, settings, name), records, settings)
            continue
        digest = status.get("image_digest") if status.get("serving") else None
        serving[name] = digest
        if digest:
            p.add_image(digest, f"serving on {name}")
            p.add_model(settings.model_name, status.get("model_version"), f"serving on {name}")
        for build in kept:
            if build.get("image_digest") != digest:
                why = f"kept by the {name} target to return to: {build.get('where')}"
                p.add_image(build.get("image_digest"), why)
                p.add_model(settings.model_name, build.get("model_version"), why)
    return serving


def _why_not(exc: Exception, settings: Any, target: str) -> str:
    from airflow.sdk.exceptions import AirflowNotFoundException

    if isinstance(exc, AirflowNotFoundException):
        conn = settings.kube_conn_id if target == "kubernetes" else settings.registry_conn_id
        return f"no connection {conn!r}"
    return retry.first_line(exc)


def _not_asked(
    p: Protections, target: str, why: str, records: Sequence[DeploymentRecord] | None, settings: Any
) -> None:
    """A target that cannot be asked might serve anything it ever served: keep all of that (history permitting)."""
    if records is None:
        p.blocked.append(f"the {target} target cannot be asked ({why}) and the deployment history is unavailable: "
                         "any image might serve there")  # fmt: skip
        return
    named: dict[str, str] = {}
    for record in records:
        if record.target != target:
            continue
        named[record.image_digest] = record.model_version
        after = record.serving_after or {}
        if after.get("image_digest"):
            named[after["image_digest"]] = after.get("model_version", "")
    for digest, version in named.items():
        why_kept = f"might serve on {target}, which cannot be asked ({why}): its deployment history names it"
        p.add_image(digest, why_kept)
        p.add_model(settings.model_name, version, why_kept)
    p.notes.append(f"{target} target not asked ({why}): kept every image its deployment history names "
                   f"({len(named) or 'none'})")  # fmt: skip


def rollback_target(records: Sequence[DeploymentRecord], target: str, current: str | None) -> dict[str, str] | None:
    """What served on `target` before `current` (the serving digest; None: the history's last), from the
    history: the newest build that served there and is not the current one."""
    served: list[dict[str, str]] = []  # distinct consecutive builds that served, oldest first
    for record in history.ordered(records, target):
        after = dict(record.serving_after or {})
        if after.get("image_digest") and (not served or served[-1]["image_digest"] != after["image_digest"]):
            served.append({**after, "since": record.ended_at})
    if not served:
        return None
    current = current or served[-1]["image_digest"]
    return next((build for build in reversed(served) if build["image_digest"] != current), None)


def _rollback_targets(
    p: Protections, settings: Any, records: Sequence[DeploymentRecord], serving: Mapping[str, str | None]
) -> None:
    for target in sorted({r.target for r in records}):
        ordered = history.ordered(records, target)
        last = (ordered[-1].serving_after or {}) if ordered else {}
        current = serving.get(target)
        if last.get("image_digest") and last["image_digest"] != current and target in serving:
            # The target says otherwise than its history (changed by hand?): keep what the history says too.
            why = f"served last on {target} by its deployment history (the target now says {current or 'nothing'})"
            p.add_image(last["image_digest"], why)
            p.add_model(settings.model_name, last.get("model_version"), why)
        build = rollback_target(records, target, current)
        if build is not None:
            why = f"rollback target on {target}: served there before the current build (from {build['since']})"
            p.add_image(build["image_digest"], why)
            p.add_model(settings.model_name, build.get("model_version"), why)


def _quarantined(p: Protections, settings: Any, quarantines: Sequence[Quarantine]) -> None:
    for q in desired.in_quarantine(quarantines).values():
        reason = q.reason.splitlines()[0][:120] if q.reason else "no reason recorded"
        p.add_image(q.digest, f"quarantined since {q.at}: {reason}")
        p.add_model(settings.model_name, q.model_version, f"in the quarantined image {q.digest[:19]}")


def _desired(
    p: Protections, settings: Any, images: Sequence[ImageEvent], quarantines: Sequence[Quarantine], store: Any
) -> None:
    try:
        want = desired.current(images, quarantines, settings)
    except Exception as exc:
        why = retry.first_line(exc)
        try:
            alias = store.read_alias(settings.model_name, settings.model_alias) if store is not None else None
        except Exception:
            alias = None  # the aliases' failure already blocks every deletion
        if alias:
            p.model_images.setdefault(alias["manifest_sha256"], []).append(
                f"carries {settings.model_name} {alias['version']} ({settings.model_alias!r}): the desired state "
                f"could not be computed ({why}), so every image with that model stays"
            )
        p.notes.append(f"the desired state could not be computed ({why}): kept every image carrying the model "
                       f"{settings.model_alias!r} names")  # fmt: skip
        return
    if want.image is not None:
        p.add_image(want.image.digest,
                    f"the desired state: commit {want.image.commit[:12]} × model {want.model_version}")  # fmt: skip
    p.add_model(settings.model_name, want.model_version, "the desired state's model")
