"""The `ratchet` command: init, ingest, retrain, status, requeue, drop, rollback, demo, reference-data.

Every failure a user can cause prints one line and exits non-zero (2 for bad input); a traceback
means a bug, and RATCHET_DEBUG=1 shows it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ratchet.errors import InputError, RatchetError

if TYPE_CHECKING:  # lazy at run time: `ratchet --help` must not import numpy or mlflow
    from ratchet.data.catalog import BatchInfo
    from ratchet.ledger import BatchState


def _configure_runtime() -> None:
    # set in main(), never at import: quieter third-party defaults for a command-line tool
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


# ---- commands -------------------------------------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from ratchet.registry import open_registry
    from ratchet.workspace import init_workspace

    ws, done = init_workspace(
        args.directory, model_name=args.model_name, image_size=args.image_size, channels=args.channels
    )
    open_registry(ws).ensure_store()
    print(f"workspace {ws.root}: {'; '.join(done) if done else 'created nothing (already a workspace)'}")
    return 0


def ingest_into(ws_root: Path, source: Path, version: bool = True) -> Any:
    """Ingest one batch and (unless told not to) version it with DVC; undone whole if versioning fails."""
    from ratchet.data import versioning
    from ratchet.data.ingest import ingest_batch
    from ratchet.workspace import open_workspace

    ws = open_workspace(ws_root)
    params = ws.params()
    if not source.exists():
        raise InputError(f"batch not found: {source}")

    live = sys.stdout.isatty()

    def progress(done: int, total: int) -> None:
        # a live counter on a terminal; in logs only the final count
        if live or done == total:
            end = "\n" if done == total else ""
            print(f"\r  ingesting {source.name}: {done}/{total} files", end=end, flush=True)

    def dropped() -> set[str]:
        # a relabelled copy of a dropped batch is new data: its samples do not count as ingested
        from ratchet.registry import open_registry

        registry = open_registry(ws, params)
        registry.ensure_store()
        return {b for b, mark in registry.batch_marks().items() if mark.action == "drop"}

    with ws.lock():
        report = ingest_batch(source, ws.data_dir, params.data, progress, dropped)
        if report.batch_id is None or not version:
            return report
        try:
            data_version = versioning.version_data(ws.root, f"ingest {report.batch_id} from {source.name}")
        except BaseException:
            # keep data/ equal to the last committed data version: no half-ingested batch is left behind
            assert report.batch_dir is not None
            shutil.rmtree(report.batch_dir, ignore_errors=True)
            shutil.rmtree(ws.data_dir / "quarantine" / report.batch_id, ignore_errors=True)
            raise
    print(f"data version {data_version}")
    return report


def cmd_ingest(args: argparse.Namespace) -> int:
    report = ingest_into(args.workspace, args.path)
    print(report.summary())
    if report.batch_id is None:
        print("nothing new: every usable sample is already ingested")
    return 0


def run_retrain(workspace: Path, dry_run: bool = False, strategy: str | None = None) -> dict[str, Any] | None:
    from ratchet.flows.retrain import retrain
    from ratchet.train import strategies
    from ratchet.workspace import open_workspace

    # fail with one line before starting Prefect
    open_workspace(workspace).params()
    if strategy is not None:
        strategies.check(strategy)
    result = retrain(workspace=str(workspace.resolve()), dry_run=dry_run, strategy=strategy)
    return result


def cmd_retrain(args: argparse.Namespace) -> int:
    from ratchet.cycle import ledger
    from ratchet.registry import open_registry
    from ratchet.workspace import open_workspace

    outcome = run_retrain(args.workspace, dry_run=args.dry_run, strategy=args.strategy)
    if outcome is not None:
        print(format_outcome(outcome))
    ws = open_workspace(args.workspace)
    states = ledger(ws, open_registry(ws))
    held = [s.batch_id for s in states if s.state == "held"]
    pending = [s.batch_id for s in states if s.state == "pending"]
    if outcome is None:
        print("nothing new to train on")
    if held:
        print(
            f"{len(held)} batch(es) held: {', '.join(held)} (`ratchet status` says why; "
            "`ratchet requeue BATCH` tries one again, `ratchet drop BATCH --reason TEXT` retires it)"
        )
    if pending and outcome is not None:
        print(f"{len(pending)} batch(es) still pending (they asked for another strategy): retrain again")
    return 0


def format_outcome(o: dict[str, Any]) -> str:
    resumed = " (resumed a cycle recorded before a crash)" if o["resumed"] else ""
    lines = [f"version {o['version']} {o['action']}{resumed}: batches {', '.join(o['batches'])}"]
    lines += [f"  - {r}" for r in o["reasons"]]
    return "\n".join(lines)


def find_batch(states: list[BatchState], batches: list[BatchInfo], name: str) -> BatchState:
    """A batch by id, unique id prefix or the name it was ingested from."""
    by_id = {s.batch_id: s for s in states}
    matches = sorted(
        {b.batch_id for b in batches if b.batch_id == name}
        or {b.batch_id for b in batches if name in (b.source_name, Path(b.source_name).stem)}
        or {b.batch_id for b in batches if b.batch_id.startswith(name)}
    )
    if not matches:
        known = ", ".join(b.batch_id for b in batches) or "none"
        raise InputError(f"no batch {name!r} in this workspace (known: {known})")
    if len(matches) > 1:
        raise InputError(f"{name!r} names several batches ({', '.join(matches)}): give the batch id")
    return by_id[matches[0]]


def _mark_batch(args: argparse.Namespace, action: str) -> tuple[BatchState, str]:
    """Record a requeue or drop for one batch, under the workspace lock; returns its state and who."""
    import getpass
    from datetime import UTC, datetime

    from ratchet.cycle import ledger
    from ratchet.data import catalog
    from ratchet.ledger import BatchMark
    from ratchet.registry import open_registry
    from ratchet.train import strategies
    from ratchet.workspace import open_workspace

    ws = open_workspace(args.workspace)
    strategy = getattr(args, "strategy", None)
    if strategy is not None:
        strategies.check(strategy)
    try:
        by = args.by or getpass.getuser()
    except (OSError, KeyError):  # no login name and no passwd entry: a bare container
        raise InputError("cannot tell who you are: pass --by NAME") from None
    with ws.lock():
        registry = open_registry(ws)
        registry.ensure_store()
        state = find_batch(ledger(ws, registry), catalog.list_batches(ws.data_dir), args.batch)
        allowed = ("held", "dropped") if action == "requeue" else ("held", "pending")
        if state.state not in allowed:
            raise InputError(
                f"batch {state.batch_id} is {state.state}: only {' or '.join(allowed)} batches can be "
                + ("requeued" if action == "requeue" else "dropped")
            )
        mark = BatchMark(
            action="requeue" if action == "requeue" else "drop",
            reason=args.reason,
            by=by,
            at=datetime.now(UTC).isoformat(timespec="seconds"),
            after_version=state.version,
            strategy=strategy,
        )
        registry.mark_batch(state.batch_id, mark)
    return state, by


def cmd_requeue(args: argparse.Namespace) -> int:
    state, by = _mark_batch(args, "requeue")
    how = f" with strategy {args.strategy}" if args.strategy else ""
    print(f"batch {state.batch_id} requeued by {by}: the next `ratchet retrain` trains on it again{how}")
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    state, by = _mark_batch(args, "drop")
    print(f"batch {state.batch_id} dropped by {by}: it will not be trained on ({args.reason})")
    return 0


def fmt_accuracy(x: float | None) -> str:
    return "  -  " if x is None else f"{x:.3f}"


def cmd_status(args: argparse.Namespace) -> int:
    import dataclasses
    from collections import Counter

    from ratchet.cycle import ledger
    from ratchet.data import catalog
    from ratchet.registry import open_registry
    from ratchet.workspace import open_workspace

    ws = open_workspace(args.workspace)
    registry = open_registry(ws)
    registry.ensure_store()
    versions = registry.versions()
    champion = next((v for v in versions if v.status == "champion"), None)
    sources = {b.batch_id: b.source_name for b in catalog.list_batches(ws.data_dir)}
    states = ledger(ws, registry)
    if args.json:
        doc = {
            "model_name": registry.name,
            "champion": {"version": champion.version if champion else None},
            "versions": [v.to_json() for v in versions],
            "batches": [{**dataclasses.asdict(s), "source": sources.get(s.batch_id, "")} for s in states],
        }
        print(json.dumps(doc, indent=1))
        return 0
    print(f"model {registry.name}: champion {'version ' + champion.version if champion else 'none yet'}")
    counts = Counter(s.state for s in states)
    print("batches: " + ", ".join(f"{counts[k]} {k}" for k in ("learned", "pending", "held", "dropped")))
    for s in states:
        if s.state != "learned":
            retry = f" (requeued{', strategy ' + s.strategy if s.strategy else ''})" if s.retry_of else ""
            print(f"  {s.batch_id}  {sources.get(s.batch_id, '')}  {s.state}{retry}  {s.reason}".rstrip())
    for v in versions:
        d = v.to_json()
        m = d["metrics"]
        print(
            f"\nversion {v.version}  {v.status}  parent {d['parent'] or '-'}  strategy {d['strategy']}\n"
            f"  batches {', '.join(d['batches'])}  data {d['data_version']}\n  "
            + "   ".join(
                f"{split}: champion {fmt_accuracy(m['champion'][split])} "
                f"candidate {fmt_accuracy(m['candidate'][split])}"
                for split in ("old", "new")
            )
        )
        for reason in d["reasons"]:
            print(f"  - {reason}")
    return 0


def cmd_rollback(args: argparse.Namespace) -> int:
    from ratchet.registry import open_registry
    from ratchet.workspace import open_workspace

    ws = open_workspace(args.workspace)
    with ws.lock():
        old, new = open_registry(ws).rollback(args.to)
    print(f"champion rolled back from version {old} to version {new}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from ratchet.demo import run_demo

    return run_demo(args.workspace)


def cmd_reference_data(args: argparse.Namespace) -> int:
    """Regenerate the committed reference stream into DIR/data, byte for byte (no commit, no push)."""
    import tempfile

    from ratchet.data import versioning
    from ratchet.data.digits import digits_stream
    from ratchet.workspace import open_workspace

    ws = open_workspace(args.directory)
    with tempfile.TemporaryDirectory() as incoming:
        for batch in digits_stream():
            report = ingest_into(ws.root, batch.save_npz(Path(incoming)), version=False)
            print(f"{batch.name}: {report.batch_id or 'already present'}")
    # cache what was regenerated under data.dvc's hash; if the hash moved, the data is not that version
    versioning.dvc(ws.root, "commit", "-f", "-q", versioning.DATA_DVC)
    if versioning.git(ws.root, "status", "--porcelain", "--", versioning.DATA_DVC).strip():
        versioning.git(ws.root, "checkout", "--", versioning.DATA_DVC)
        raise RatchetError("the regenerated reference data does not match data.dvc: not that data version")
    print(f"data matches {versioning.DATA_DVC}: {versioning.data_version(ws.root)}")
    return 0


# ---- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratchet",
        description="Continual retraining of image classifiers: the champion only moves forward.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def workspace_arg(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "-w", "--workspace", type=Path, default=Path("."), help="workspace directory (default: .)"
        )

    p = sub.add_parser(
        "init",
        help="create a workspace (git, DVC with a local remote, params, MLflow store)",
        description="Create a workspace, or complete an existing one: keys its params.yaml lacks are "
        "added with their defaults and comments, and nothing else in it changes.",
    )
    p.add_argument("directory", type=Path, nargs="?", default=Path("."), help="where (default: .)")
    p.add_argument("--model-name", help="registered model name to write into a new params.yaml")
    p.add_argument(
        "--image-size",
        type=int,
        metavar="N",
        help="data.image_size for a new params.yaml: images are resized to NxN (default 8, sized for the "
        "digits demo; at least 8)",
    )
    p.add_argument(
        "--channels",
        type=int,
        metavar="C",
        help="data.channels for a new params.yaml: 1 (grayscale, the default) or 3 (RGB)",
    )
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("ingest", help="validate, split and version a new labelled batch")
    p.add_argument("path", type=Path, help="an ImageFolder directory or an .npz (images, labels[, classes])")
    workspace_arg(p)
    p.set_defaults(func=cmd_ingest)

    p = sub.add_parser("retrain", help="run one cycle (Prefect flow) over batches not yet trained on")
    workspace_arg(p)
    p.add_argument(
        "--dry-run", action="store_true", help="never move @champion: a passing candidate becomes @challenger"
    )
    p.add_argument(
        "--strategy",
        help="override params.yaml train.strategy for this cycle: finetune | replay | ewc | lwf | "
        "transfer | joint, or combined with + (replay+lwf)",
    )
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser("status", help="the champion and every version with lineage, metrics and reasons")
    workspace_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("requeue", help="try a held (or dropped) batch again in the next cycle")
    p.add_argument("batch", help="batch id, unique id prefix, or the name it was ingested from")
    workspace_arg(p)
    p.add_argument("--strategy", help="strategy for its next cycle (default: params.yaml train.strategy)")
    p.add_argument("--reason", default="requeued", help="why, for the record")
    p.add_argument("--by", help="who decides (default: the OS user)")
    p.set_defaults(func=cmd_requeue)

    p = sub.add_parser("drop", help="retire a held or pending batch on record: it is never trained on")
    p.add_argument("batch", help="batch id, unique id prefix, or the name it was ingested from")
    workspace_arg(p)
    p.add_argument("--reason", required=True, help="why, for the record")
    p.add_argument("--by", help="who decides (default: the OS user)")
    p.set_defaults(func=cmd_drop)

    p = sub.add_parser("rollback", help="point @champion back at an earlier promoted version")
    workspace_arg(p)
    p.add_argument("--to", help="version to restore (default: the champion's parent)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "demo", help="stream the embedded digits data through the real cycle and print a table"
    )
    p.add_argument(
        "--workspace", type=Path, help="where to build the demo workspace (default: a new temp dir)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("reference-data", help="regenerate the reference stream tracked by data.dvc, offline")
    p.add_argument("directory", type=Path, nargs="?", default=Path("."), help="workspace (default: .)")
    p.set_defaults(func=cmd_reference_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_runtime()
    try:
        return int(args.func(args))
    except RatchetError as exc:
        print(f"ratchet: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        # the reader went away (`ratchet status | head`): nothing left to say, and nothing failed
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - replaces the closed pipe until exit
        return 0
    except KeyboardInterrupt:
        print("ratchet: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("RATCHET_DEBUG"):
            raise
        print(
            f"ratchet: internal error: {type(exc).__name__}: {exc} (RATCHET_DEBUG=1 shows where)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
