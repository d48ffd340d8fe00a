"""Kill points: the step boundaries of ingest, retrain and the inbox, where the fault suite stops
ratchet dead.

`RATCHET_KILL_AT=<point>` makes the process SIGKILL itself on reaching that point (nothing runs
after it: no finally, no atexit), which is what a power cut or the OOM killer does. The suite then
runs the normal next command and checks nothing was lost. `RATCHET_TRACE_POINTS=<file>` appends
each point reached, so a test can prove the lists below are every boundary a real run crosses.
Unset, a point costs two dictionary lookups.
"""

from __future__ import annotations

import os
import signal

KILL_AT = "RATCHET_KILL_AT"
TRACE = "RATCHET_TRACE_POINTS"

# in the order a run reaches them
INGEST_POINTS: tuple[str, ...] = (
    "ingest:journal-written",  # the intent is on disk, nothing else
    "ingest:quarantine-published",  # quarantine/<id> renamed into place, the batch not yet
    "ingest:published",  # data/batches/<id> renamed into place
    "ingest:dvc-added",  # data.dvc rewritten, not committed
    "ingest:committed",  # data.dvc committed to git, and the journal says so
    "ingest:pushed",  # the batch is on the DVC remote; the journal is still there
)
RETRAIN_POINTS: tuple[str, ...] = (
    "retrain:planned",  # cycle.json written
    "retrain:prepared",
    "retrain:trained",
    "retrain:evaluated",
    "retrain:dvc-committed",  # dvc.lock names the outputs, not yet in git
    "retrain:git-committed",
    "retrain:pushed",  # the cycle's DVC-tracked files are on the remote (or the failure is noted)
    "retrain:run-started",  # an MLflow run is RUNNING
    "retrain:model-logged",
    "retrain:run-ended",  # the run is FINISHED, no version registered
    "retrain:registered",  # a version with its decision, no outcome
    "retrain:alias-moved",  # @champion points at it, its outcome not yet written
    "retrain:outcome-set",
)
INBOX_POINTS: tuple[str, ...] = (
    "inbox:versioned",  # a batch of the inbox is versioned and pushed, still in the inbox
)
POINTS = frozenset(INGEST_POINTS + RETRAIN_POINTS + INBOX_POINTS)


def reached(point: str) -> None:
    if point not in POINTS:  # a misspelt point would never fire and its test would pass vacuously
        raise ValueError(f"unknown kill point {point!r}")
    trace = os.environ.get(TRACE)
    if trace:
        with open(trace, "a", encoding="utf-8") as f:
            f.write(point + "\n")
    if os.environ.get(KILL_AT) == point:
        os.kill(os.getpid(), signal.SIGKILL)
