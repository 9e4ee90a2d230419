"""What a retention run did: every item deleted (or, in a dry run, that would be), kept with its reasons, or that
failed. A failure on one item never stops the rest: it is retried if transient (modelship.retry), then recorded,
and the run reports all of them at the end."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from modelship import retry
from modelship.verdicts import Verdict

log = logging.getLogger("modelship.retention")

DELETED, WOULD_DELETE, KEPT, FAILED = "deleted", "would delete", "kept", "failed"


class PruneFailed(Verdict, RuntimeError):
    """Some deletions failed after their retries; the message lists each, with why. The rest went ahead."""


class Kept(Exception):
    """Raised by a deletion that finds its item in use after all: the item is kept, nothing failed."""


@dataclass(frozen=True)
class Outcome:
    area: str  # registry | model store | engine | caches
    item: str
    action: str  # deleted | would delete | kept | failed
    why: str  # why it went (not kept by any rule), why it stayed, or what failed
    size: int | None = None  # bytes, where known


@dataclass
class Report:
    dry_run: bool = False
    outcomes: list[Outcome] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # what later steps need (e.g. the kept model sha256s)

    def keep(self, area: str, item: str, why: str) -> None:
        self.outcomes.append(Outcome(area, item, KEPT, why))
        log.info("keeping %s %s: %s", area, item, why)

    def fail(self, area: str, item: str, why: str) -> None:
        self.outcomes.append(Outcome(area, item, FAILED, why))
        log.error("%s %s: %s", area, item, why)

    def note(self, text: str) -> None:
        self.notes.append(text)
        log.info("%s", text)

    def remove(self, area: str, item: str, why: str, delete: Callable[[], Any], size: int | None = None) -> bool:
        """Delete one item (unless a dry run): transient failures retried, any failure recorded, never raised."""
        if self.dry_run:
            self.outcomes.append(Outcome(area, item, WOULD_DELETE, why, size))
            log.info("would delete %s %s: %s", area, item, why)
            return False
        log.info("deleting %s %s: %s", area, item, why)
        try:
            retry.call(delete, f"deleting {area} {item}", logger=log)
        except Kept as exc:
            self.keep(area, item, str(exc))
            return False
        except Exception as exc:
            self.fail(area, item, f"could not delete: {retry.first_line(exc)}")
            return False
        self.outcomes.append(Outcome(area, item, DELETED, why, size))
        return True

    def of(self, action: str, area: str | None = None) -> list[Outcome]:
        return [o for o in self.outcomes if o.action == action and (area is None or o.area == area)]

    @property
    def failures(self) -> list[Outcome]:
        return self.of(FAILED)

    def merge(self, other: Report) -> Report:
        self.outcomes += other.outcomes
        self.notes += [n for n in other.notes if n not in self.notes]
        self.extra.update(other.extra)
        return self

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "notes": self.notes,
            "outcomes": [asdict(o) for o in self.outcomes],
            "counts": {a: len(self.of(a)) for a in (DELETED, WOULD_DELETE, KEPT, FAILED)},
            **self.extra,
        }

    def format(self) -> str:
        """Deletions and failures one a line, what stayed by its reasons, the notes, and a summary line."""
        lines = [f"{'would delete' if self.dry_run else 'deleted'} {o.area} {o.item}: {o.why}"
                 for o in self.of(WOULD_DELETE) + self.of(DELETED)]  # fmt: skip
        lines += [f"kept {o.area} {o.item}: {o.why}" for o in self.of(KEPT)]
        lines += [f"FAILED {o.area} {o.item}: {o.why}" for o in self.failures]
        lines += [f"note: {n}" for n in self.notes]
        gone = len(self.of(WOULD_DELETE if self.dry_run else DELETED))
        freed = sum(o.size or 0 for o in self.of(WOULD_DELETE if self.dry_run else DELETED))
        summary = (f"{'dry run: would delete' if self.dry_run else 'deleted'} {gone} item(s)"
                   f"{f' ({freed / 1e6:.1f} MB of files)' if freed else ''}, kept {len(self.of(KEPT))}, "
                   f"failed {len(self.failures)}")  # fmt: skip
        return "\n".join([*lines, summary])

    def finish(self) -> dict[str, Any]:
        """The report as JSON; PruneFailed (after everything else was done) when an item could not be deleted."""
        for line in self.format().splitlines():
            log.info("%s", line)
        if self.failures:
            raise PruneFailed(f"{len(self.failures)} item(s) could not be deleted (the rest were): "
                              + "; ".join(f"{o.area} {o.item}: {o.why}" for o in self.failures))  # fmt: skip
        return self.as_dict()
