"""Taking batches in: the versioned ingest that `ratchet ingest` and the inbox share, and the inbox.

The inbox is a directory (params.yaml `inbox.path`), or an S3 prefix (`S3Inbox`, the same rules
over objects, moved by copy then delete), where upstream drops batches. An `.npz` is
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
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path, PurePath, PurePosixPath
from typing import TYPE_CHECKING, Literal, Protocol

from ratchet import faults, state
from ratchet.atomic import write_text
from ratchet.config import Params
from ratchet.errors import BatchRefused, InputError, RatchetError
from ratchet.steps import Steps, directly
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
    path: PurePath  # a local inbox: the entry (a Path); an S3 inbox: bucket/prefix/name
    waiting_for: str  # why it is not complete yet; "" when it is
    directory: bool = False  # a batch directory (an S3 inbox: a common prefix), not one file

    @property
    def name(self) -> str:
        return self.path.name


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
        found.append((mtime, name, Arrival(entry, waiting_for, entry.is_dir())))
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
    inbox: str  # the local path, or the s3:// URL
    batches: tuple[Taken, ...]  # in the order they were taken
    cycle_ran: bool  # the retrain flow ran (it may still have found nothing to do)
    outcome: Outcome | None  # the cycle's, when it ran one
    unreadable: str = ""  # why the inbox could not be listed (an S3 inbox); "" when it was

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
        taken = _version(ws, params, batch, batch.name, lambda folder, note: _move(batch, folder, note), say)
    if say is not None:
        say(taken.line())
    return taken


def _version(
    ws: Workspace,
    params: Params,
    source: Path,
    name: str,
    move: Callable[[str, str], str],
    say: Callable[[str], None] | None,
) -> Taken:
    """Ingest `source` (the batch `name`, or its staged copy), then `move(folder, note)` it out of the
    inbox: to done/, or refused whole to rejected/ with its reason. The caller holds the lock."""
    try:
        done = ingest(ws, params, source, recovered=say, ready_marker=params.inbox.ready_marker)
    except BatchRefused as exc:  # the batch's fault; a corrupted workspace's InputError is not
        reason = str(exc).replace(str(source), name)  # the reason file sits beside it
        return Taken(name, "set aside", reason, moved_to=move(REJECTED, reason))
    faults.reached("inbox:versioned")
    report = done.report
    if report.batch_id is None:
        note = f"all {len(report.duplicates)} usable samples were ingested before: nothing new, no batch made"
        return Taken(name, "already versioned", note, moved_to=move(DONE, note))
    return Taken(name, "versioned", _counts(report), report.batch_id, move(DONE, ""))


def pending(ws: Workspace) -> list[str]:
    """The batches a cycle would train on now (ingested by any means, not yet decided on)."""
    from ratchet.cycle import ledger
    from ratchet.registry import open_registry

    registry = open_registry(ws)
    registry.ensure_store()
    return [b.batch_id for b in ledger(ws, registry) if b.state == "pending"]


def run_inbox(
    ws: Workspace,
    retrain: Callable[[Workspace], Outcome | None],
    step: Steps = directly,
    announce: Callable[[Path, str], str | None] | None = None,
) -> InboxRun:
    """Take the inbox's complete batches, oldest first, each its own step, then `retrain` (one
    cycle) if there is anything to train on; returns what became of each batch and the cycle's
    outcome. A batch refused whole is set aside with its reason while the others go on; `announce`
    tells a Prefect API of each versioned batch, returning a warning line when it could not."""
    inbox = open_inbox(ws, ws.params())
    taken: list[Taken] = []
    try:
        arrivals = inbox.scan()
    except RatchetError as exc:  # an S3 inbox out of reach: nothing taken, pending batches still trained
        print(f"{exc}: nothing versioned")
        arrivals, unreadable = [], str(exc)
    else:
        unreadable = ""
    for arrival in arrivals:
        if arrival.waiting_for:  # left alone, untouched, until upstream finishes it
            taken.append(Taken(arrival.name, "waiting", arrival.waiting_for))
            continue
        try:
            taken.append(step("version-batch", inbox.take)(ws, arrival, print))
        except RatchetError as exc:  # git, DVC or the lock, not the batch: it stays for the next run
            print(f"{arrival.name}: left in the inbox for the next run: {exc}")
            taken.append(Taken(arrival.name, "left", str(exc)))
            continue
        batch_id = taken[-1].batch_id
        if batch_id is not None and announce is not None and (warning := announce(ws.root, batch_id)):
            print(f"warning: {warning}")
    if not any(t.status == "versioned" for t in taken) and not step("pending", pending)(ws):
        print("no cycle: nothing was versioned and no batch is pending")
        return InboxRun(inbox.location, tuple(taken), cycle_ran=False, outcome=None, unreadable=unreadable)
    return InboxRun(inbox.location, tuple(taken), cycle_ran=True, outcome=retrain(ws), unreadable=unreadable)


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
    target = to / _free_name(batch.name, not batch.is_file(), lambda name: os.path.lexists(to / name))
    if note:
        write_text(to / _note_name(folder, target.name), note + "\n")
    os.rename(batch, target)
    return f"{folder}/{target.name}"


def _free_name(name: str, directory: bool, taken: Callable[[str], bool]) -> str:
    """`name`, or `stem-2.suffix`, `-3`, ... where a batch of that name was moved there before:
    upstream reuses names, and both are kept."""
    path = PurePosixPath(name)
    stem, suffix = (name, "") if directory else (path.stem, path.suffix)
    target, n = name, 2
    while taken(target):
        target, n = f"{stem}-{n}{suffix}", n + 1
    return target


def _note_name(folder: str, target: str) -> str:
    """The note beside a moved batch: `.reason.txt` in rejected/, `.note.txt` in done/."""
    return f"{target}.{'reason' if folder == REJECTED else 'note'}.txt"


# ---- where the inbox is: a local directory or an S3 prefix ----------------------------------------

S3_SCHEME = "s3://"
STAGING = "inbox-staging"  # under .ratchet/: where a batch of an S3 inbox is downloaded to be ingested


class Inbox(Protocol):
    """An inbox the flow scans and takes batches from."""

    @property
    def location(self) -> str:
        """As printed: the local path, or the s3:// URL."""
        ...

    def scan(self) -> list[Arrival]:
        """What is in it, oldest first; RatchetError in one line where it cannot be listed."""
        ...

    def take(self, ws: Workspace, arrival: Arrival, say: Callable[[str], None] | None = None) -> Taken:
        """Version one complete batch and move it out (`take`)."""
        ...


def open_inbox(ws: Workspace, params: Params) -> Inbox:
    """params.yaml `inbox.path`: an `s3://bucket/prefix` URL, or a local directory (`inbox_dir`)."""
    path = params.inbox.path
    if path.startswith(S3_SCHEME):
        return S3Inbox(path, params.inbox.ready_marker)
    if "://" in path:
        raise InputError(f"params: inbox.path {path!r}: an inbox is a local directory or an s3:// URL")
    return LocalInbox(inbox_dir(ws, params), params.inbox.ready_marker)


@dataclass(frozen=True)
class LocalInbox:
    path: Path
    ready_marker: str

    @property
    def location(self) -> str:
        return str(self.path)

    def scan(self) -> list[Arrival]:
        return scan(self.path, self.ready_marker)

    def take(self, ws: Workspace, arrival: Arrival, say: Callable[[str], None] | None = None) -> Taken:
        return take(ws, Path(arrival.path), say)


class ObjectStore(Protocol):
    """The part of s3fs's `S3FileSystem` the S3 inbox uses (paths are bucket/key, no scheme)."""

    def ls(self, path: str, detail: bool, refresh: bool) -> list[Mapping[str, object]]: ...
    def info(self, path: str) -> Mapping[str, object]: ...
    def find(self, path: str) -> list[str]: ...
    def exists(self, path: str) -> bool: ...
    def get_file(self, rpath: str, lpath: str) -> None: ...
    def pipe_file(self, path: str, value: bytes) -> None: ...
    def cp_file(self, path1: str, path2: str) -> None: ...
    def rm(self, path: list[str]) -> None: ...
    def call_s3(self, method: str, **kwargs: str) -> Mapping[str, object]: ...


class S3Inbox:
    """An inbox under an S3 prefix, with the local inbox's semantics. Credentials and endpoint come
    from the environment as boto3 reads them (AWS_ACCESS_KEY_ID, AWS_PROFILE, AWS_ENDPOINT_URL, ...).

    A batch is downloaded to `.ratchet/inbox-staging/<name>`, ingested from there by the same
    `ingest`, and only after the ingest returned (committed and pushed) moved to done/ or rejected/:
    copied, then deleted (S3 has no rename). A process killed between copy and delete leaves the batch
    in the inbox and a copy in done/: the next run finds every sample ingested before and moves it to
    done/ again under a new name."""

    def __init__(self, url: str, ready_marker: str) -> None:
        self.url = url.rstrip("/")
        self.root = self.url.removeprefix(S3_SCHEME)  # bucket/prefix
        self.bucket = self.root.partition("/")[0]
        if not self.bucket:
            raise InputError(f"params: inbox.path {url!r} names no bucket")
        self.ready_marker = ready_marker
        self._store: ObjectStore | None = None

    @property
    def location(self) -> str:
        return self.url

    def store(self) -> ObjectStore:
        if self._store is None:
            import s3fs

            # no listings cache: each scan and each move sees the bucket as it is now
            self._store = s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False)
        return self._store

    def scan(self) -> list[Arrival]:
        """One level under the prefix, oldest first (LastModified; a directory: its marker's), then
        name; directories still without their marker come last."""
        fs = self.store()
        try:
            try:
                entries = fs.ls(self.root, detail=True, refresh=True)
            except FileNotFoundError:  # no object under the prefix yet, or no bucket at all
                try:
                    fs.call_s3("head_bucket", Bucket=self.bucket)
                except FileNotFoundError:
                    raise RatchetError(
                        f"inbox {self.url}: cannot list it: no bucket {self.bucket!r}"
                    ) from None
                return []
            found: list[tuple[float, str, Arrival]] = []
            for entry in entries:
                key = str(entry["name"]).rstrip("/")
                name = key.rpartition("/")[2]
                directory = entry["type"] == "directory"
                if key == self.root or name.startswith(".") or (directory and name in (DONE, REJECTED)):
                    continue
                when = _timestamp(entry.get("LastModified"))
                if name.endswith(UNFINISHED_SUFFIXES):
                    waiting_for = "still being written"
                elif directory:
                    marker = self._marker_time(fs, key)
                    waiting_for = "" if marker is not None else f"no {self.ready_marker} in it yet"
                    when = marker if marker is not None else float("inf")
                else:
                    waiting_for = ""
                found.append((when, name, Arrival(PurePosixPath(key), waiting_for, directory)))
        except RatchetError:
            raise
        except Exception as exc:  # botocore's and s3fs's: no route, no credentials, access denied
            raise RatchetError(f"inbox {self.url}: cannot list it: {_one_line(exc)}") from None
        return [arrival for _, _, arrival in sorted(found, key=lambda f: (f[0], f[1]))]

    def _marker_time(self, fs: ObjectStore, key: str) -> float | None:
        try:
            info = fs.info(f"{key}/{self.ready_marker}")
        except FileNotFoundError:
            return None
        return _timestamp(info.get("LastModified")) if info.get("type") == "file" else None

    def take(self, ws: Workspace, arrival: Arrival, say: Callable[[str], None] | None = None) -> Taken:
        """Download the batch, version it from the staged copy as `take` does a local one, then move it
        on S3; the staged copy is removed whatever happened."""
        params = ws.params()
        name, key = arrival.name, str(arrival.path)
        fs = self.store()
        with ws.lock():
            objects = self._objects(fs, arrival)
            staging = state.directory(ws.root) / STAGING
            shutil.rmtree(staging, ignore_errors=True)  # what a killed run left
            staging.mkdir()
            try:
                local = staging / name
                self._download(fs, key, objects, local)

                def move(folder: str, note: str) -> str:
                    return self._move(fs, arrival, objects, folder, note)

                taken = _version(ws, params, local, name, move, say)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        if say is not None:
            say(taken.line())
        return taken

    def _objects(self, fs: ObjectStore, arrival: Arrival) -> list[str]:
        """The batch's object keys: the .npz, or everything under the directory."""
        key = str(arrival.path)
        try:
            if arrival.directory:
                objects = [k for k in fs.find(key) if k.rstrip("/") != key and not k.endswith("/")]
            else:
                objects = [key] if fs.exists(key) else []
        except Exception as exc:
            raise RatchetError(f"inbox {self.url}: cannot list {arrival.name}: {_one_line(exc)}") from None
        if not objects:
            raise RatchetError(f"{arrival.name} is no longer in the inbox (another run took it)")
        return objects

    def _download(self, fs: ObjectStore, key: str, objects: Sequence[str], local: Path) -> None:
        try:
            for obj in objects:
                target = local if obj == key else local / obj.removeprefix(f"{key}/")
                target.parent.mkdir(parents=True, exist_ok=True)
                fs.get_file(obj, str(target))
        except Exception as exc:
            name = key.rpartition("/")[2]
            raise RatchetError(f"inbox {self.url}: cannot download {name}: {_one_line(exc)}") from None

    def _move(self, fs: ObjectStore, arrival: Arrival, objects: Sequence[str], folder: str, note: str) -> str:
        """`_move` on S3: the note first, then a copy of every object under a name no earlier batch in
        `folder` has, then the originals deleted (the ready marker last, so a delete cut short leaves
        a batch the next run takes again, not one waiting forever)."""
        key, name = str(arrival.path), arrival.name
        to = f"{self.root}/{folder}"
        try:
            target = _free_name(name, arrival.directory, lambda candidate: fs.exists(f"{to}/{candidate}"))
            if note:
                fs.pipe_file(f"{to}/{_note_name(folder, target)}", (note + "\n").encode())
            for obj in objects:
                fs.cp_file(obj, f"{to}/{target}{obj.removeprefix(key)}")
            marker = f"{key}/{self.ready_marker}"
            rest = [obj for obj in objects if obj != marker]
            if rest:
                fs.rm(rest)
            if marker in objects:
                fs.rm([marker])
        except Exception as exc:
            raise RatchetError(
                f"inbox {self.url}: cannot move {name} to {folder}/: {_one_line(exc)}"
            ) from None
        return f"{folder}/{target}"


def _timestamp(value: object) -> float:
    return value.timestamp() if isinstance(value, datetime) else 0.0


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__
