"""Ingest as a transaction: a batch is recorded whole (files under data/, data.dvc committed to git,
pushed to the DVC remote) or not at all.

An intent file, `.ratchet/ingest.json`, is written before the first byte of the batch and removed
after the push. The git commit of data.dvc is the commit point:

- a failure ratchet sees before it (validation, `dvc add`, a hook refusing the commit, a full disk)
  rolls the batch back at once: its files go, data.dvc and .gitignore return to HEAD;
- a failure after it (the remote refuses the push) keeps the journal: the batch is committed, and
  the next command pushes it;
- a process killed anywhere leaves the journal, and the next ingest or retrain finishes the job:
  forward when the batch's files were published whole (the rename in `ingest._publish` is atomic),
  back when they were not. Re-running the ingest that was killed therefore completes it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ratchet import faults, state
from ratchet.atomic import write_text
from ratchet.config import DataParams
from ratchet.data import versioning
from ratchet.data.catalog import batches_dir
from ratchet.data.ingest import IngestReport, ProgressFn, ingest_batch
from ratchet.data.versioning import DataVersion
from ratchet.errors import RatchetError

# what `dvc add data` may rewrite besides data/ itself
_DVC_FILES = [versioning.DATA_DVC, ".gitignore"]


@dataclass(frozen=True)
class Intent:
    batch_id: str
    source: str  # as the user gave it, for messages
    message: str  # the commit message
    committed: bool = False  # past the commit point: only forward from here


def ingest(
    root: Path,
    data_dir: Path,
    source: Path,
    params: DataParams,
    progress: ProgressFn | None = None,
    dropped: Callable[[], set[str]] | None = None,
    ready_marker: str | None = None,
) -> tuple[IngestReport, DataVersion | None]:
    """Ingest `source` and record it whole; (report, None) when nothing in it was new."""
    intent: Intent | None = None

    def begin(batch_id: str) -> None:
        nonlocal intent
        intent = Intent(batch_id, str(source), f"ingest {batch_id} from {source.name}")
        _write(root, intent)
        faults.reached("ingest:journal-written")

    try:
        report = ingest_batch(
            source, data_dir, params, progress, dropped, before_publish=begin, ready_marker=ready_marker
        )
    except BaseException:
        if intent is not None:
            _roll_back(root, data_dir, intent)
        raise
    if intent is None:
        return report, None
    faults.reached("ingest:published")
    return report, _finish(root, data_dir, intent)


def pending(root: Path) -> Intent | None:
    path = root / state.INGEST_JOURNAL
    if not path.exists():
        return None
    try:
        return Intent(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        raise RatchetError(
            f"{path} is damaged ({exc}): compare data/ with `dvc data status`, then delete it"
        ) from None


def recover(root: Path, data_dir: Path) -> str | None:
    """Finish an ingest a killed or failed process left; what was done, in one line, or None."""
    intent = pending(root)
    if intent is None:
        return None
    if not intent.committed and not (batches_dir(data_dir) / intent.batch_id / "manifest.json").exists():
        _roll_back(root, data_dir, intent)
        return (
            f"rolled back the interrupted ingest of {intent.source}: none of it had been recorded; "
            "ingest it again"
        )
    try:
        version = _finish(root, data_dir, intent)
    except RatchetError as exc:
        raise RatchetError(f"could not finish the interrupted ingest of {intent.source}: {exc}") from None
    return (
        f"finished the interrupted ingest of {intent.source}: batch {intent.batch_id}, data version {version}"
    )


def _finish(root: Path, data_dir: Path, intent: Intent) -> DataVersion:
    if not intent.committed:
        try:
            versioning.dvc_add(root, data_dir)
            faults.reached("ingest:dvc-added")
            versioning.commit(root, _DVC_FILES, intent.message)
        except BaseException as exc:
            versioning.restore_from_head(root, _DVC_FILES)
            _roll_back(root, data_dir, intent)
            if isinstance(exc, RatchetError):
                raise RatchetError(f"batch {intent.batch_id} not ingested, nothing kept: {exc}") from None
            raise
        intent = replace(intent, committed=True)
        _write(root, intent)
        faults.reached("ingest:committed")
    try:
        versioning.dvc_push(root)
    except RatchetError as exc:
        raise RatchetError(
            f"batch {intent.batch_id} is committed but not backed up ({exc}); "
            "fix the DVC remote, then the next ingest or retrain pushes it"
        ) from None
    faults.reached("ingest:pushed")
    (root / state.INGEST_JOURNAL).unlink()
    return versioning.data_version(root)


def _roll_back(root: Path, data_dir: Path, intent: Intent) -> None:
    """Remove every trace of the batch's files, then the journal."""
    quarantine = data_dir / "quarantine"
    for path in (
        batches_dir(data_dir) / intent.batch_id,
        batches_dir(data_dir) / f".incoming-{intent.batch_id}",
        quarantine / intent.batch_id,
        quarantine / f".incoming-{intent.batch_id}",
    ):
        shutil.rmtree(path, ignore_errors=True)
    (root / state.INGEST_JOURNAL).unlink(missing_ok=True)


def _write(root: Path, intent: Intent) -> None:
    state.directory(root)
    write_text(root / state.INGEST_JOURNAL, json.dumps(asdict(intent), indent=1) + "\n")
