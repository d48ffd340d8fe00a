"""Taking batches in: the versioned ingest that `ratchet ingest` and the inbox share, and the inbox.

The inbox is a directory (params.yaml `inbox.path`) where upstream drops batches. An `.npz` is
complete as it appears: upstream writes it under a temporary name (starting with `.`, or ending in
`.tmp` or `.part`) and renames it. A batch directory is complete once it holds `inbox.ready_marker`.
`take` versions one complete batch with the same `ingest` as `ratchet ingest`, and only then moves
it out of the inbox: to `done/<name>`, or, refused whole, to `rejected/<name>` beside
`<name>.reason.txt`. `done/` and `rejected/` are never read as batches.

Never twice: the move comes after the ingest's commit and push, so a process killed between them
leaves a versioned batch in the inbox. The next `take` ingests it again, finds every sample already
there (ingest skips samples by content hash), writes nothing, and moves it to done/ with a note.
An ingest killed before its push is finished or undone by the ingest journal first, then the same.
Never lost: a batch leaves the inbox only versioned and pushed, or refused with its reason; when git,
DVC or the lock fail, it stays where it is for the next run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ratchet import faults
from ratchet.atomic import write_text
from ratchet.config import Params
from ratchet.errors import BatchRefused, InputError, RatchetError
from ratchet.workspace import Workspace

if TYPE_CHECKING:  # lazy at run time: these import numpy or mlflow
    from ratchet.cycle import Outcome
    from ratchet.data.ingest import IngestReport, ProgressFn
    from ratchet.data.versioning import DataVersion

DONE = "done"
REJECTED = "rejected"
UNFINISHED_SUFFIXES = (".tmp", ".part")  # upstream's names while it is still writing


@dataclass(frozen=True)
class Ingested:
    report: IngestReport
    data_version: DataVersion | None  # None when nothing new came in, or when not versioned


def ingest(
    ws: Workspace,
    params: Params,
    source: Path,
    progress: ProgressFn | None = None,
    version: bool = True,
    recovered: Callable[[str], None] | None = None,
    ready_marker: str | None = None,
) -> Ingested:
    """Ingest one batch and (unless told not to) version it with DVC, as one transaction
    (`ratchet.data.journal`). The caller holds the workspace lock. An ingest a killed process left is
    finished first, and `recovered` told what that did."""
    from ratchet.data import journal, remotes, versioning
    from ratchet.data.ingest import ingest_batch
    from ratchet.registry import open_registry

    def dropped() -> set[str]:
        # a relabelled copy of a dropped batch is new data: its samples do not count as ingested
        registry = open_registry(ws, params)
        registry.ensure_store()
        return {b for b, mark in registry.batch_marks().items() if mark.action == "drop"}

    if not version:  # regenerating committed data: nothing to record
        report = ingest_batch(source, ws.data_dir, params.data, progress, dropped, ready_marker=ready_marker)
        return Ingested(report, None)
    say = recovered or (lambda _line: None)
    # the remotes params.yaml names, before anything pushes (a fixed URL is what the retry needs)
    for line in remotes.configure(ws.root, params.remotes):
        say(line)
    finished = journal.recover(ws.root, ws.data_dir)
    if finished:
        say(finished)
    pushed = versioning.push_unpushed(ws.root)  # what the last cycle could not back up
    if pushed:
        say(pushed)
    remotes.sync(ws.root, params.remotes, say)
    params = ws.params()  # as the pull left them
    for _attempt in range(3):
        before = versioning.head(ws.root)
        report, data_version = journal.ingest(
            ws.root, ws.data_dir, source, params.data, progress, dropped, ready_marker=ready_marker
        )
        if report.batch_id is None:
            break
        try:
            remotes.publish(ws.root, params.remotes, f"batch {report.batch_id}", undo_to=before)
            break
        except remotes.Superseded as exc:
            # another machine ingested at the same time: the batch again, on top of what it added
            say(f"{exc}: ingesting {source.name} again on top of it")
    else:
        raise RatchetError(f"{source.name}: other machines kept ingesting at the same time; retry")
    return Ingested(report, data_version)


# ---- the inbox ---------------------------------------------------------------------------------


def inbox_dir(ws: Workspace, params: Params) -> Path:
    """The inbox's path (relative to the workspace, or absolute); InputError where it cannot be."""
    path = (ws.root / params.inbox.path).resolve()
    data = ws.data_dir.resolve()
    if path == ws.root or path in ws.root.parents:
        raise InputError(f"params: inbox.path {params.inbox.path!r} holds the workspace itself")
    if path == data or data in path.parents:
        raise InputError(f"params: inbox.path {params.inbox.path!r} is inside data/, which DVC versions")
    return path


@dataclass(frozen=True)
class Arrival:
    path: Path
    waiting_for: str  # why it is not complete yet; "" when it is


def scan(inbox: Path, ready_marker: str) -> list[Arrival]:
    """What is in the inbox, oldest first (modification time, then name): complete batches and those
    still being written. Hidden names, done/ and rejected/ are not batches."""
    if not inbox.is_dir():
        return []
    found: list[tuple[int, str, Arrival]] = []
    for entry in inbox.iterdir():
        name = entry.name
        if name.startswith(".") or (name in (DONE, REJECTED) and entry.is_dir()):
            continue
        if name.endswith(UNFINISHED_SUFFIXES):
            waiting_for = "still being written"
        elif entry.is_dir() and not (entry / ready_marker).is_file():
            waiting_for = f"no {ready_marker} in it yet"
        else:
            waiting_for = ""
        try:
            mtime = entry.lstat().st_mtime_ns
        except FileNotFoundError:  # renamed away while we looked
            continue
        found.append((mtime, name, Arrival(entry, waiting_for)))
    return [arrival for _, _, arrival in sorted(found, key=lambda f: (f[0], f[1]))]


Status = Literal["versioned", "already versioned", "set aside", "left", "waiting"]


@dataclass(frozen=True)
class Taken:
    """What became of one entry of the inbox."""

    name: str
    status: Status
    detail: str = ""  # the counts, the note, the reason or what it waits for
    batch_id: str | None = None  # versioned: the new batch
    moved_to: str | None = None  # relative to the inbox: done/<name> or rejected/<name>

    def line(self) -> str:
        where = f" -> {self.moved_to}" if self.moved_to else ""
        if self.status == "versioned":
            return f"{self.name}: versioned as batch {self.batch_id} ({self.detail}){where}"
        if self.status == "already versioned":
            return f"{self.name}: already versioned ({self.detail}){where}"
        if self.status == "set aside":
            return f"{self.name}: set aside: {self.detail}{where}"
        if self.status == "left":
            return f"{self.name}: left in the inbox for the next run: {self.detail}"
        return f"{self.name}: waiting (incomplete: {self.detail})"


@dataclass(frozen=True)
class InboxRun:
    inbox: Path
    batches: tuple[Taken, ...]  # in the order they were taken
    cycle_ran: bool  # the retrain flow ran (it may still have found nothing to do)
    outcome: Outcome | None  # the cycle's, when it ran one

    def with_status(self, status: Status) -> list[str]:
        return [t.name for t in self.batches if t.status == status]


def take(ws: Workspace, batch: Path, say: Callable[[str], None] | None = None) -> Taken:
    """Version one complete batch of the inbox and move it out: to done/, or refused whole to
    rejected/ with its reason. Any other RatchetError (git, DVC, the lock, a corrupted workspace)
    leaves it."""
    params = ws.params()
    with ws.lock():  # held across the move: no other command sees the batch versioned and still here
        if not os.path.lexists(batch):
            raise RatchetError(f"{batch.name} is no longer in the inbox (another run took it)")
        try:
            done = ingest(ws, params, batch, recovered=say, ready_marker=params.inbox.ready_marker)
        except BatchRefused as exc:  # the batch's fault; a corrupted workspace's InputError is not
            reason = str(exc).replace(str(batch), batch.name)  # the reason file sits beside it
            taken = Taken(batch.name, "set aside", reason, moved_to=_move(batch, REJECTED, reason))
        else:
            faults.reached("inbox:versioned")
            report = done.report
            if report.batch_id is None:
                note = (
                    f"all {len(report.duplicates)} usable samples were ingested before: "
                    "nothing new, no batch made"
                )
                taken = Taken(batch.name, "already versioned", note, moved_to=_move(batch, DONE, note))
            else:
                taken = Taken(batch.name, "versioned", _counts(report), report.batch_id, _move(batch, DONE))
    if say is not None:
        say(taken.line())
    return taken


def pending(ws: Workspace) -> list[str]:
    """The batches a cycle would train on now (ingested by any means, not yet decided on)."""
    from ratchet.cycle import ledger
    from ratchet.registry import open_registry

    registry = open_registry(ws)
    registry.ensure_store()
    return [b.batch_id for b in ledger(ws, registry) if b.state == "pending"]


def _counts(report: IngestReport) -> str:
    parts = [f"{report.num_train} train", f"{report.num_held_out} held out"]
    if report.quarantined:
        parts.append(f"{len(report.quarantined)} quarantined")
    if report.duplicates:
        parts.append(f"{len(report.duplicates)} duplicates skipped")
    return ", ".join(parts)


def _move(batch: Path, folder: str, note: str = "") -> str:
    """Move `batch` into the inbox's `folder` under a name no earlier batch there has; a note goes
    beside it first (`.reason.txt` in rejected/, `.note.txt` in done/), so a batch is never there
    without its note. Returns `folder/name`."""
    to = batch.parent / folder
    to.mkdir(exist_ok=True)
    stem, suffix = (batch.stem, batch.suffix) if batch.is_file() else (batch.name, "")
    target, n = to / batch.name, 2
    while os.path.lexists(target):  # upstream reuses names: keep both
        target, n = to / f"{stem}-{n}{suffix}", n + 1
    if note:
        kind = "reason" if folder == REJECTED else "note"
        write_text(to / f"{target.name}.{kind}.txt", note + "\n")
    os.rename(batch, target)
    return f"{folder}/{target.name}"
