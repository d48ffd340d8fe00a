"""Replay: rebuild a workspace's whole chain of cycles from git and its DVC remote alone, and say for
each cycle whether it came out exactly as recorded.

Each cycle's commit holds what its candidate was made from (data.dvc, parent.dvc, cycle.json,
params.yaml, dvc.yaml), and everything it produced is on the DVC remote (a cycle pushes when it
ends). A replay clones the repository and, for each cycle commit from the oldest: checks it out,
pulls its data and its recorded candidate, puts in the parent path the candidate this replay made
for the parent (not the recorded one: a chain reproduces only if every link does), runs the three
stages in-process, and compares the new candidate and metrics with the recorded ones. No registry is
needed; when the workspace's can be read, it only gives the cycles their version numbers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import re
import shutil
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from ratchet import state
from ratchet.atomic import write_text
from ratchet.cycle import CYCLE_COMMIT
from ratchet.data import versioning
from ratchet.errors import InputError, RatchetError
from ratchet.metrics import SPLITS, CycleMetrics
from ratchet.stages.inputs import Cycle, content_hash
from ratchet.workspace import Workspace, open_workspace

RESULTS = "replay.json"  # in the replay directory, beside the workspace it rebuilt
CLONE = "workspace"  # the replay's git + DVC clone
CHECKPOINTS = "checkpoints"  # <n>-<cycle id>/recorded and /replayed, outside the clone's work tree

Result = Literal["exact", "differs", "failed"]

_SUBJECT = re.compile(CYCLE_COMMIT.format(id="(?P<id>[0-9a-f]{12})", batches="(?P<batches>.*)"))


@dataclass(frozen=True)
class CycleCommit:
    commit: str
    cycle_id: str
    batches: str  # the new batches, as the commit message lists them
    version: str | None  # the version it registered, where the workspace's registry can say

    @property
    def label(self) -> str:
        return f"version {self.version}" if self.version else f"cycle {self.cycle_id}"


@dataclass(frozen=True)
class Replayed:
    """One cycle's replay: a row of the table and of replay.json."""

    cycle: CycleCommit
    result: Result
    weights_diff: float | None = None  # max |replayed - recorded| over the weights' float tensors
    accuracy_diff: float | None = None  # max |replayed - recorded| of the candidate's old/new/all accuracy
    same_decision: bool | None = None  # the gate's promote/reject, replayed vs recorded
    note: str = ""  # why it failed; else the parent if not this replay's own, another ratchet
    seconds: float = 0.0

    def to_json(self) -> dict[str, object]:
        doc = dataclasses.asdict(self)
        doc["cycle"] = {**doc["cycle"], "label": self.cycle.label}
        return doc


def cycle_commits(ws: Workspace) -> list[CycleCommit]:
    """The cycle commits of the workspace's current branch, oldest first, with their version numbers."""
    versions = _versions(ws)
    found = []
    for line in versioning.git(ws.root, "log", "--reverse", "--format=%H %s", "HEAD").splitlines():
        commit, _, subject = line.partition(" ")
        if m := _SUBJECT.fullmatch(subject):
            found.append(CycleCommit(commit, m["id"], m["batches"], versions.get(m["id"])))
    return found


def _versions(ws: Workspace) -> dict[str, str]:
    """cycle id -> the version it registered; empty when the registry is absent or unreadable: the
    numbers only name the cycles, so no store error stops a replay."""
    from ratchet.registry import existing_registry

    try:
        registry = existing_registry(ws)
        versions = registry.versions() if registry else []
    except Exception:  # anything a store (or its server) raises: the numbers are names only
        return {}
    numbers: dict[str, str] = {}
    for v in versions:  # oldest first: a cycle registered twice is its first version, as find_cycle says
        numbers.setdefault(v.tag("cycle_id"), v.version)
    return numbers


def up_to(cycles: list[CycleCommit], to: str) -> list[CycleCommit]:
    """The cycles up to the one `to` names: a version number, else a cycle id prefix."""
    last = [i for i, c in enumerate(cycles) if c.version == to] or [
        i for i, c in enumerate(cycles) if c.cycle_id.startswith(to)
    ]
    if not last:
        known = ", ".join(c.label for c in cycles)
        unnumbered = (
            "" if any(c.version for c in cycles) else "; version numbers need the registry, not readable here"
        )
        raise InputError(
            f"--to {to}: no such version or cycle id among this branch's cycles ({known}){unnumbered}"
        )
    if len({cycles[i].cycle_id for i in last}) > 1:
        raise InputError(f"--to {to}: names several cycles ({', '.join(cycles[i].cycle_id for i in last)})")
    return cycles[: last[-1] + 1]


def default_remote(ws: Workspace) -> tuple[str, str]:
    """(name, url) of the workspace's default DVC remote, the url as DVC resolves it (a relative one
    is relative to the config file's `.dvc/` directory: a clone must be told the absolute one)."""
    config = dict(
        line.partition("=")[::2] for line in versioning.dvc(ws.root, "config", "--list").splitlines()
    )
    name = config.get("core.remote", "")
    url = config.get(f"remote.{name}.url", "")
    if not name or not url:
        raise InputError(f"{ws.root} has no default DVC remote: nothing to pull the cycles' data from")
    return name, url


def replay(ws: Workspace, to: str | None, into: Path | None, say: Callable[[str], None]) -> list[Replayed]:
    """Rebuild the cycles of `ws`'s current branch (up to `to`) in a clone under `into` (kept; a
    temporary directory otherwise), saying a line as each cycle starts and ends."""
    if into is not None and into.exists() and (not into.is_dir() or any(into.iterdir())):
        raise InputError(f"--into {into}: not an empty directory; give a new or empty one")
    cycles = cycle_commits(ws)
    if not cycles:
        raise InputError(f"no cycles to replay: no commit of {ws.root}'s current branch is a cycle's")
    if to is not None:
        cycles = up_to(cycles, to)
    name, url = default_remote(ws)
    with _directory(into) as where:
        clone = where / CLONE
        versioning.git(where, "clone", "-q", str(ws.root), str(clone))
        versioning.dvc(clone, "remote", "modify", "--local", name, "url", url)
        kept = "" if into else " (removed at the end)"
        say(f"replaying {len(cycles)} cycle(s) of {ws.root} from git and DVC remote {url} in {where}{kept}")
        made: dict[str, tuple[CycleCommit, Path | None]] = {}  # recorded candidate hash -> its replay
        results = []
        for n, c in enumerate(cycles, 1):
            which = f"{c.label} (cycle {c.cycle_id})" if c.version else c.label
            say(f"[{n}/{len(cycles)}] {which}: batches {c.batches}")
            start = time.monotonic()
            try:
                done = _replay_cycle(
                    open_workspace(clone), c, where / CHECKPOINTS / f"{n:02d}-{c.cycle_id}", made
                )
            except RatchetError as exc:
                done = Replayed(c, "failed", note=str(exc))
            except Exception as exc:  # a bug in a stage fails its cycle, not the replay
                logged = state.log(
                    ws.root, f"replay of {c.label} (cycle {c.cycle_id})", traceback.format_exc()
                )
                done = Replayed(c, "failed", note=f"{type(exc).__name__}: {exc} (traceback in {logged})")
            done = dataclasses.replace(done, seconds=round(time.monotonic() - start, 1))
            say(f"    {describe(done)}")
            results.append(done)
        if into is not None:
            doc = {"source": str(ws.root), "cycles": [r.to_json() for r in results]}
            write_text(where / RESULTS, json.dumps(doc, indent=1) + "\n")
    return results


@contextlib.contextmanager
def _directory(into: Path | None) -> Iterator[Path]:
    if into is not None:
        into.mkdir(parents=True, exist_ok=True)
        yield into.resolve()
        return
    with tempfile.TemporaryDirectory(prefix="ratchet-replay-") as tmp:
        yield Path(tmp)


def _replay_cycle(
    ws: Workspace, c: CycleCommit, aside: Path, made: dict[str, tuple[CycleCommit, Path | None]]
) -> Replayed:
    """Check out one cycle commit in the clone `ws`, put its parent in place, run the stages and
    compare. `made` maps each earlier cycle's recorded candidate (by content hash) to its replay,
    None where that failed; this cycle's is added as soon as it is known."""
    from ratchet import cycle as stages
    from ratchet.stages import evaluate, train

    versioning.git(ws.root, "checkout", "-q", "-f", c.commit)
    paths = ws.stage_paths()  # this commit's dvc.yaml names them
    # the train stage by name: DVC takes a missing output path for the name of a stage, and finds none
    versioning.dvc(ws.root, "pull", "--force", versioning.DATA_DVC, "train")
    # the recorded candidate goes aside before the stages overwrite it; the recorded evaluation is in git
    recorded = aside / "recorded"
    shutil.copytree(paths.candidate / train.CHECKPOINT, recorded)
    recorded_hash = content_hash(recorded)
    recorded_metrics = json.loads((paths.eval / evaluate.METRICS).read_text())
    recorded_promote = json.loads((paths.eval / evaluate.DECISION).read_text())["promote"]
    made[recorded_hash] = (c, None)  # until the stages have made it: a child of a failed cycle fails

    cycle = Cycle.load(paths.cycle)
    notes = []
    if cycle.parent_version is not None:
        if cycle.parent_hash is None:
            raise RatchetError("planned before parents were tracked (cycle.json has no parent_hash)")
        if cycle.parent_hash in made:
            parent_cycle, parent = made[cycle.parent_hash]
            if parent is None:
                raise RatchetError(f"parent failed ({parent_cycle.label})")
            # the path may hold files DVC linked from its cache: remove them, never write through them
            shutil.rmtree(paths.parent, ignore_errors=True)
            shutil.copytree(parent, paths.parent)
            if (replayed_parent := content_hash(paths.parent)) != cycle.parent_hash:
                # the chain diverged earlier: train from the replayed parent, and say so in cycle.json,
                # which the prepare stage checks the parent against
                dataclasses.replace(cycle, parent_hash=replayed_parent).save(paths.cycle)
                notes.append(f"from a replayed parent that differs ({parent_cycle.label})")
        else:  # a parent no earlier cycle on this branch made (history that began on another branch)
            versioning.dvc(ws.root, "pull", "--force", str(paths.parent_dvc.relative_to(ws.root)))
            notes.append("from the recorded parent")

    if cycle.code_note() and cycle.code:  # another ratchet may train differently: said beside the result
        notes.append(f"planned by ratchet source {cycle.code.source}")
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        stages.run_prepare(ws)
        stages.run_train(ws)
        stages.run_evaluate(ws)
    replayed = aside / "replayed"
    shutil.copytree(paths.candidate / train.CHECKPOINT, replayed)
    made[recorded_hash] = (c, replayed)

    same_checkpoint = content_hash(replayed) == recorded_hash
    metrics = json.loads((paths.eval / evaluate.METRICS).read_text())
    same_decision = json.loads((paths.eval / evaluate.DECISION).read_text())["promote"] == recorded_promote
    if same_checkpoint and metrics == recorded_metrics and same_decision:
        return Replayed(c, "exact", 0.0, 0.0, True, "; ".join(notes))
    weights = weights_diff(recorded, replayed)
    if weights is None:
        notes.append("the weights hold different tensors")
    elif weights == 0.0 and not same_checkpoint:
        notes.append("same weights; other checkpoint files differ")
    return Replayed(
        c, "differs", weights, accuracy_diff(recorded_metrics, metrics), same_decision, "; ".join(notes)
    )


def weights_diff(a: Path, b: Path) -> float | None:
    """max |a - b| over the float tensors of two checkpoints' weights; None when their tensors are
    not the same names and shapes."""
    import torch

    from ratchet.train.checkpoint import WEIGHTS_FILE

    x: dict[str, torch.Tensor] = torch.load(a / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    y: dict[str, torch.Tensor] = torch.load(b / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    if x.keys() != y.keys() or any(x[k].shape != y[k].shape for k in x):
        return None
    floats = [k for k in x if x[k].is_floating_point() and x[k].numel()]
    return max((float((x[k].double() - y[k].double()).abs().max()) for k in floats), default=0.0)


def accuracy_diff(a: dict[str, object], b: dict[str, object]) -> float | None:
    """The largest difference in the candidate's accuracy on old, new and all held-out data."""
    x, y = (CycleMetrics.from_json(m).headline().candidate for m in (a, b))
    return max(
        (abs(p - q) for s in SPLITS if (p := x.split(s)) is not None and (q := y.split(s)) is not None),
        default=None,
    )


def describe(r: Replayed) -> str:
    """One cycle's result in a line."""
    took = f" ({r.seconds:.1f}s)"
    note = f"; {r.note}" if r.note else ""
    if r.result == "exact":
        return f"reproduced exactly{note}{took}"
    if r.result == "failed":
        return f"failed: {r.note}{took}"
    return (
        f"differs: weights by up to {fmt_diff(r.weights_diff)}, accuracy by up to "
        f"{fmt_diff(r.accuracy_diff)}, decision {fmt_decision(r.same_decision)}{note}{took}"
    )


def fmt_diff(value: float | None) -> str:
    return "-" if value is None else "0" if value == 0 else f"{value:.3g}"


def fmt_decision(same: bool | None) -> str:
    return "-" if same is None else "same" if same else "changed"
