"""Where each ingested batch stands: pending, learned, held or dropped. Pure: no I/O.

A batch is never lost. A cycle whose candidate is rejected leaves its batches *held*, with the
gate's reasons: they are not trained on again by themselves and do not block later batches, and
a person decides what happens next, on record: `ratchet requeue` (try again, perhaps with another
strategy or after changing the gate) or `ratchet drop` (retire with a reason). The batches of a
version that is rolled back go back in the queue: the next cycle trains on them again, from the
restored champion (`ratchet drop` keeps one out). The state is
derived from the registry (which versions decided on the batch, and how) and the marks people
left, so there is no second copy of it to drift out of step after a crash.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Literal, cast

State = Literal["pending", "learned", "held", "dropped"]
MarkAction = Literal["requeue", "drop"]
ReviewAction = Literal["approve", "reject", "override"]


@dataclass(frozen=True)
class BatchMark:
    """A person's word on a batch: try it again, or retire it."""

    action: MarkAction
    reason: str
    by: str
    at: str  # ISO time
    after_version: str | None  # the version whose decision this answers; None: the batch never ran
    strategy: str | None = None  # requeue: the strategy of its next cycle (None: params.yaml's)

    @staticmethod
    def from_dict(raw: Mapping[str, str | None]) -> BatchMark:
        return BatchMark(
            action=cast(MarkAction, raw["action"]),
            reason=str(raw["reason"]),
            by=str(raw["by"]),
            at=str(raw["at"]),
            after_version=raw.get("after_version"),
            strategy=raw.get("strategy"),
        )


@dataclass(frozen=True)
class Decided:
    """One applied decision on a set of batches: a registry version and its outcome."""

    version: str
    batches: tuple[str, ...]
    promoted: bool
    reasons: tuple[str, ...]  # the failed gate checks, when rejected


@dataclass(frozen=True)
class Review:
    """A person's word on a version: approve a waiting challenger, reject it, or override the gate."""

    action: ReviewAction
    reason: str
    by: str
    at: str  # ISO time

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @staticmethod
    def from_json(text: str) -> Review:
        raw = json.loads(text)
        return Review(action=raw["action"], reason=str(raw["reason"]), by=str(raw["by"]), at=str(raw["at"]))

    def sentence(self) -> str:
        done = {"approve": "Approved", "reject": "Rejected", "override": "Gate overridden"}[self.action]
        return f"{done} by {self.by} at {self.at}: {self.reason}"


@dataclass(frozen=True)
class Restoration:
    """A rollback that made this version champion again; a version keeps one per rollback to it."""

    at: str  # ISO time
    from_version: str
    by: str

    @staticmethod
    def list_from_json(text: str) -> list[Restoration]:
        return [Restoration(str(r["at"]), str(r["from_version"]), str(r["by"])) for r in json.loads(text)]

    @staticmethod
    def list_to_json(items: Iterable[Restoration]) -> str:
        return json.dumps([asdict(r) for r in items], sort_keys=True)


def marks_from_json(text: str) -> list[BatchMark]:
    """A batch's marks, oldest first (one mark alone: how they were kept before there could be more)."""
    raw = json.loads(text)
    return [BatchMark.from_dict(r) for r in (raw if isinstance(raw, list) else [raw])]


def marks_to_json(marks: Iterable[BatchMark]) -> str:
    return json.dumps([asdict(m) for m in marks], sort_keys=True)


@dataclass(frozen=True)
class BatchState:
    batch_id: str
    state: State
    version: str | None  # the version that last decided on it
    reason: str  # why it is held or dropped, or pending again after a rollback; empty otherwise
    strategy: str | None = None  # pending after a requeue: the strategy asked for
    retry_of: str | None = None  # pending after a requeue: the version whose rejection it retries


def batch_states(
    batch_ids: Iterable[str],
    decided: Iterable[Decided],
    learned: set[str],
    marks: Mapping[str, BatchMark],
) -> list[BatchState]:
    """The state of every batch, in the order given.

    `learned` is what the champion has seen (its lineage); `decided` the applied decisions, in
    any order. A cycle that is recorded but not applied (a crash, a dry run) decides nothing: its
    batches stay pending, and the next retrain resumes that cycle.
    """
    last: dict[str, Decided] = {}
    for one in sorted(decided, key=lambda d: int(d.version)):
        for b in one.batches:
            last[b] = one
    out = []
    for b in batch_ids:
        d, mark = last.get(b), marks.get(b)
        version = d.version if d else None
        if b in learned:
            out.append(BatchState(b, "learned", version, ""))
        elif mark is not None and mark.action == "drop":
            out.append(BatchState(b, "dropped", version, f"dropped by {mark.by} at {mark.at}: {mark.reason}"))
        elif mark is not None and mark.after_version == version:
            # a requeue answering the latest decision: the next cycle tries the batch again
            out.append(BatchState(b, "pending", version, "", mark.strategy, version))
        elif d is None:
            out.append(BatchState(b, "pending", None, ""))
        elif d.promoted:
            # promoted once, but the champion no longer has it: its version was rolled back. Back in
            # the queue, as a retry of that version: a new cycle, never a resume of the rolled-back one
            why = f"version {version} was promoted, then rolled back: the next cycle trains on it again"
            out.append(BatchState(b, "pending", version, why, None, version))
        else:
            why = "; ".join(r.removeprefix("FAIL: ") for r in d.reasons) or "rejected"
            out.append(BatchState(b, "held", version, f"version {version} rejected: {why}"))
    return out
