"""ratchet's own files in a workspace, under `.ratchet/` (git-ignored, never under data/):
the log that keeps what a one-line error leaves out, the ingest journal, the note of a push
that has not reached the DVC remote yet, where the last cycle's time went, and the stages' cache."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

STATE_DIR = ".ratchet"
LOG = f"{STATE_DIR}/ratchet.log"
INGEST_JOURNAL = f"{STATE_DIR}/ingest.json"
UNPUSHED = f"{STATE_DIR}/unpushed.txt"  # what a failed or interrupted `dvc push` left behind
CYCLE_TIMES = f"{STATE_DIR}/cycle-times.json"  # where the last cycle's time went: steps, git, DVC
# what the stages keep between cycles, derived from versioned files and safe to delete: decoded
# samples by batch content, and models' scores on them (`ratchet.stages.sets`, `.predictions`)
CACHE = "cache"


def directory(root: Path) -> Path:
    """`.ratchet/`, created with a .gitignore of its own: git ignores it in any workspace, however old."""
    path = root / STATE_DIR
    path.mkdir(exist_ok=True)
    ignore = path / ".gitignore"
    if not ignore.exists():
        ignore.write_text("*\n", encoding="utf-8")
    return path


def cache(root: Path) -> Path:
    """The stages' cache, under `.ratchet/` so that git ignores it and DVC never tracks it."""
    return directory(root) / CACHE


def log(root: Path, title: str, text: str) -> str:
    """Append `text` under a dated title to the workspace's log; returns the log's path as a user
    would type it from the workspace, or "" when even the log cannot be written (a full disk)."""
    if not root.is_dir():  # never create a workspace by logging into it
        return ""
    path = root / LOG
    try:
        directory(root)
        with path.open("a", encoding="utf-8") as f:
            f.write(f"---- {datetime.now(UTC).isoformat(timespec='seconds')} {title}\n{text.rstrip()}\n")
    except OSError:
        return ""
    return str(path)
