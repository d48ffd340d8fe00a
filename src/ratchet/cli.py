"""The `ratchet` command: init, ingest, retrain, warm, inbox, deploy, worker, status, approve,
reject, override, history, requeue, drop, rollback, replay, demo, reference-data.

Every failure a user can cause prints one line and exits non-zero (2 for bad input); a traceback
means a bug: it goes to the workspace's .ratchet/ratchet.log, and --debug (or RATCHET_DEBUG=1)
shows it here.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import logging
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from ratchet import state
from ratchet.errors import RatchetError
from ratchet.train import strategies  # the registry only: no torch

if TYPE_CHECKING:  # lazy at run time: `ratchet --help` must not import numpy or mlflow
    from ratchet.cycle import Outcome
    from ratchet.data.ingest import ProgressFn


def _configure_runtime() -> None:
    # set in main(), never at import: quieter third-party defaults for a command-line tool
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


# ---- commands: parse, call ratchet.app, print --------------------------------------------------


def cmd_init(args: argparse.Namespace) -> int:
    from ratchet import app

    ws, done = app.init(
        args.directory,
        args.model_name,
        args.image_size,
        args.channels,
        args.tracking_uri,
        args.remote,
        args.git_remote,
    )
    print(f"workspace {ws.root}: {'; '.join(done) if done else 'created nothing (already a workspace)'}")
    return 0


def ingest_progress(source: Path) -> ProgressFn:
    live = sys.stdout.isatty()

    def progress(done: int, total: int) -> None:
        # a live counter on a terminal; in logs only the final count
        if live or done == total:
            end = "\n" if done == total else ""
            print(f"\r  ingesting {source.name}: {done}/{total} files", end=end, flush=True)

    return progress


def cmd_ingest(args: argparse.Namespace) -> int:
    from ratchet import app

    done = app.ingest(args.workspace, args.path, ingest_progress(args.path), recovered=print, warn=_warn)
    if done.data_version is not None:
        print(f"data version {done.data_version}")
    print(done.report.summary())
    if done.report.batch_id is None:
        print("nothing new: every usable sample is already ingested")
    return 0


def _warn(line: str) -> None:
    print(f"ratchet: warning: {line}", file=sys.stderr)


def _on_prefect_server(args: argparse.Namespace, run: Callable[[Path, Callable[[str], None]], object]) -> int:
    """`ratchet deploy` and `ratchet worker`: `run(workspace, say)` with Prefect's output as for retrain."""
    from ratchet.workspace import open_workspace

    root = open_workspace(args.workspace).root
    from ratchet.flows import deploy  # noqa: F401 - configures Prefect's logging, adjusted next

    with _run_output(root, args):
        run(args.workspace, lambda line: print(line, flush=True))
    return 0


def cmd_deploy(args: argparse.Namespace) -> int:
    from ratchet import app

    return _on_prefect_server(args, app.deploy)


def cmd_worker(args: argparse.Namespace) -> int:
    from ratchet import app

    return _on_prefect_server(args, app.worker)


class _NoTraceback(logging.Formatter):
    """Formats as `inner` does, leaving out the traceback (the log file keeps it)."""

    def __init__(self, inner: logging.Formatter | None) -> None:
        super().__init__()
        self.inner = inner or logging.Formatter()

    def format(self, record: logging.LogRecord) -> str:
        # the record is shared with the other handlers: hide its traceback only while formatting
        saved = record.exc_info, record.exc_text, record.stack_info
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        try:
            return self.inner.format(record)
        finally:
            record.exc_info, record.exc_text, record.stack_info = saved


def _is_run_failure(record: logging.LogRecord) -> bool:
    # Prefect says a failed task's error three times (task, flow, final state); main() says it once
    runs = record.name.startswith(("prefect.task_runs", "prefect.flow_runs"))
    return runs and (record.levelno >= logging.ERROR or "in state Failed" in record.getMessage())


def _is_chatter(record: logging.LogRecord) -> bool:
    # Prefect's own INFO lines (run names, UI links, states, its temporary server). What ratchet
    # prints inside the flow is an INFO record too, made by Prefect's print patch, but it names the
    # ratchet line that printed as its source
    return record.levelno < logging.WARNING and f"{os.sep}prefect{os.sep}" in record.pathname


@contextmanager
def _run_output(workspace: Path | None, args: argparse.Namespace) -> Iterator[None]:
    """On the console, ratchet's own lines and Prefect's warnings (--verbose: all of Prefect's
    and MLflow's lines; --debug: tracebacks too); in the workspace's log, everything logged. In a
    Prefect run, entered after Prefect has configured logging (importing it does): its console
    handler is the root logger's stream handler. Undone on exit, so a process that runs several
    commands starts each afresh."""
    root = logging.getLogger()
    debug = bool(os.environ.get("RATCHET_DEBUG"))
    console = [
        h
        for h in root.handlers
        if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
    ]
    saved = [(h, h.formatter, list(h.filters)) for h in console]
    for handler in console:
        if not debug:
            handler.setFormatter(_NoTraceback(handler.formatter))
            handler.addFilter(lambda record: not _is_run_failure(record))
        if not args.verbose:
            handler.addFilter(lambda record: not _is_chatter(record))
    mlflow_log = logging.getLogger("mlflow")
    saved_level = mlflow_log.level
    if not args.verbose:  # "Created version '2' of model ...": ratchet says which version it made
        mlflow_log.setLevel(logging.WARNING)
    to_file = None
    if workspace is not None:
        state.directory(workspace)
        to_file = logging.FileHandler(workspace / state.LOG, encoding="utf-8")
        to_file.setLevel(logging.INFO)
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(to_file)
    try:
        yield
    finally:
        for handler, formatter, filters in saved:
            handler.setFormatter(formatter)
            handler.filters = filters
        mlflow_log.setLevel(saved_level)
        if to_file is not None:
            root.removeHandler(to_file)
            to_file.close()


def cmd_retrain(args: argparse.Namespace) -> int:
    from ratchet import app
    from ratchet.workspace import open_workspace

    root = open_workspace(args.workspace).root
    if app.prefect_api_configured():
        # with nothing to train on, the answer comes without a flow run (which alone takes seconds)
        if not app.settle(args.workspace, args.strategy):
            from ratchet.cycle import NOTHING_PENDING

            print(NOTHING_PENDING)  # the flow's line
            print_cycle(args.workspace, None)
            return 0
        from ratchet.flows import retrain  # noqa: F401 - configures Prefect's logging, adjusted next
    with _run_output(root, args):
        outcome = app.retrain(args.workspace, dry_run=args.dry_run, strategy=args.strategy)
    print_cycle(args.workspace, outcome)
    return 0


def cmd_warm(args: argparse.Namespace) -> int:
    from ratchet import warm
    from ratchet.workspace import open_workspace

    root = open_workspace(args.workspace).root
    idle = warm.IDLE_SECONDS if args.idle is None else args.idle
    if args.serve:
        return warm.serve(root, idle, finished)
    if args.stop:
        pid = warm.stop(root)
        print(f"warm process {pid} stopped" if pid else f"no warm process in {root}")
        return 0
    if args.status:
        pid = warm.status(root)
        print(f"warm process {pid} takes this workspace's retrains" if pid else f"no warm process in {root}")
        return 0
    pid = warm.start(root, idle)
    print(
        f"warm process {pid}: later `ratchet retrain` in {root} starts in it (stops after {idle:.0f}s idle)"
    )
    return 0


def cmd_inbox(args: argparse.Namespace) -> int:
    from ratchet import app
    from ratchet.workspace import open_workspace

    if app.prefect_api_configured():
        from ratchet.flows import inbox  # noqa: F401 - configures Prefect's logging, adjusted next
    with _run_output(open_workspace(args.workspace).root, args):
        run = app.inbox(args.workspace)
    if run.unreadable:
        print(f"{run.unreadable}: nothing versioned")
    elif not run.batches:
        print(f"inbox {run.inbox}: empty")
    for taken in run.batches:
        print(taken.line())
    if run.cycle_ran:
        print_cycle(args.workspace, run.outcome)
    else:
        print("no cycle: nothing was versioned and no batch is pending")
    # a set-aside batch was dealt with; one left in the inbox means git, DVC or the lock failed
    return 1 if run.with_status("left") or run.unreadable else 0


def print_cycle(workspace: Path, outcome: Outcome | None) -> None:
    """What a retrain run did, and what waits for a person."""
    from ratchet import app

    if outcome is not None:
        print(format_outcome(outcome))
    now = app.status(workspace)
    held, pending = now.in_state("held"), now.in_state("pending")
    if outcome is None and now.awaiting:
        print(
            f"version {', '.join(now.awaiting)} awaits review: `ratchet approve VERSION --reason TEXT` "
            "or `ratchet reject VERSION --reason TEXT`; pending batches wait for it"
        )
    elif outcome is None:
        print("nothing new to train on")
    if held:
        print(
            f"{len(held)} batch(es) held: {', '.join(held)} (`ratchet status` says why; "
            "`ratchet requeue BATCH` tries one again, `ratchet drop BATCH --reason TEXT` retires it)"
        )
    if pending and outcome is not None:
        print(f"{len(pending)} batch(es) still pending (they asked for another strategy): retrain again")


def format_outcome(o: Outcome) -> str:
    resumed = " (resumed a cycle recorded before a crash)" if o.resumed else ""
    lines = [f"version {o.version} {o.action}{resumed}: batches {', '.join(o.batches)}"]
    lines += [f"  - {r}" for r in o.reasons]
    return "\n".join(lines)


def cmd_requeue(args: argparse.Namespace) -> int:
    from ratchet import app

    state, mark = app.requeue(args.workspace, args.batch, args.reason, args.by, args.strategy)
    how = f" with strategy {args.strategy}" if args.strategy else ""
    print(f"batch {state.batch_id} requeued by {mark.by}: the next `ratchet retrain` trains on it again{how}")
    return 0


def cmd_drop(args: argparse.Namespace) -> int:
    from ratchet import app

    state, mark = app.drop(args.workspace, args.batch, args.reason, args.by)
    print(f"batch {state.batch_id} dropped by {mark.by}: it will not be trained on ({mark.reason})")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    import dataclasses
    from collections import Counter

    from ratchet import app

    now = app.status(args.workspace)
    champion = now.champion
    if args.json:
        doc = {
            "model_name": now.model_name,
            "champion": {"version": champion.version if champion else None},
            "versions": [v.to_json() for v in now.versions],
            "interrupted_ingest": dataclasses.asdict(now.interrupted) if now.interrupted else None,
            "unpushed": now.unpushed,
            "batches": [
                {**dataclasses.asdict(s), "source": now.sources.get(s.batch_id, "")} for s in now.batches
            ],
        }
        print(json.dumps(doc, indent=1))
        return 0
    print(f"model {now.model_name}: champion {'version ' + champion.version if champion else 'none yet'}")
    if now.interrupted:
        i = now.interrupted
        print(
            f"interrupted ingest of {i.source} (batch {i.batch_id}, "
            f"{'committed, not pushed' if i.committed else 'not committed'}): "
            "the next `ratchet ingest` or `ratchet retrain` completes or undoes it"
        )
    if now.unpushed:
        print(
            f"not backed up: {now.unpushed} is committed but not on the DVC remote; the next `ratchet "
            "ingest` or `ratchet retrain` pushes it (or `dvc push`, once the remote is reachable)"
        )
    counts = Counter(s.state for s in now.batches)
    print("batches: " + ", ".join(f"{counts[k]} {k}" for k in ("learned", "pending", "held", "dropped")))
    for s in now.batches:
        if s.state != "learned":
            requeued = s.retry_of and not s.reason  # a person's requeue (a rollback says why itself)
            retry = f" (requeued{', strategy ' + s.strategy if s.strategy else ''})" if requeued else ""
            print(f"  {s.batch_id}  {now.sources.get(s.batch_id, '')}  {s.state}{retry}  {s.reason}".rstrip())
    if now.versions:
        print()
        print_table(
            ["version", "status", "parent", "batches", "old accuracy", "new accuracy", "verdict", "by"],
            [
                [
                    v.version,
                    v.status,
                    v.tag("parent_version") or "-",
                    ", ".join(v.tag_list("batches")),
                    v.headline_pair("old"),
                    v.headline_pair("new"),
                    v.display()["verdict"],
                    v.review.by if v.review else "gate",
                ]
                for v in now.versions
            ],
        )
        print("(accuracy on held-out data: champion -> candidate)")
    # the whole argument for the versions a person may act on next; every version's with --reasons
    for v in now.versions:
        if args.reasons or v.status == "awaiting approval" or v is now.versions[-1]:
            lineage = f"strategy {v.tag('strategy')}, data {v.tag('data_version')}"
            print(f"\nversion {v.version} ({v.status}, {lineage})")
            if v.review:
                print(f"  {v.review.sentence()}")
            for reason in v.reasons:
                print(f"  - {reason}")
    return 0


def print_table(headers: list[str], rows: list[list[str]]) -> None:
    """Columns as wide as their widest cell; when the terminal is narrower, the widest columns are cut
    (ending in ~), so that each version stays on one line."""
    import shutil

    widths = [max(len(c) for c in col) for col in zip(headers, *rows, strict=True)]
    room = shutil.get_terminal_size((120, 24)).columns - 2 * (len(widths) - 1)
    while sum(widths) > room and max(widths) > 8:
        widths[widths.index(max(widths))] -= 1

    def cut(cell: str, width: int) -> str:
        return cell if len(cell) <= width else cell[: width - 1] + "~"

    for row in [headers, *rows]:
        print("  ".join(cut(c, w).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def cmd_rollback(args: argparse.Namespace) -> int:
    from ratchet import app

    old, new = app.rollback(args.workspace, args.to, args.by)
    print(f"champion rolled back from version {old} to version {new}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from ratchet import app

    v = app.review(args.workspace, args.version, args.action, args.reason, args.by)
    review = v.review
    assert review is not None
    done = "now @champion" if v.status == "champion" else f"{v.status}; its batches are held"
    print(f"version {v.version}: {review.sentence()} ({done})")
    return 0


def cmd_history(args: argparse.Namespace) -> int:
    from ratchet import app

    events = app.history(args.workspace)
    if args.json:
        import dataclasses

        print(json.dumps([dataclasses.asdict(e) for e in events], indent=1))
        return 0
    if not events:
        print("no history yet: nothing has been registered")
    for e in events:
        batches = f"  [{e.batches}]" if e.batches else ""
        reason = f"  {e.reason}" if e.reason else ""
        print(f"{e.at}  {e.what:<12} {e.by:<10} {e.versions:<8}{batches}{reason}")
    return 0


def cmd_replay(args: argparse.Namespace) -> int:
    from ratchet import app
    from ratchet.replay import CLONE, RESULTS, fmt_decision, fmt_diff

    results = app.replay(args.workspace, args.to, args.into, lambda line: print(line, flush=True))
    print()
    print_table(
        ["cycle", "batches", "result", "weights max diff", "accuracy max diff", "decision", "note"],
        [
            [
                r.cycle.label,
                r.cycle.batches,
                r.result,
                fmt_diff(r.weights_diff),
                fmt_diff(r.accuracy_diff),
                fmt_decision(r.same_decision),
                r.note,
            ]
            for r in results
        ],
    )
    if args.into:
        print(f"\nin {args.into}: the replay's workspace ({CLONE}/) and the results ({RESULTS})")
    exact = sum(r.result == "exact" for r in results)
    print(f"{exact} of {len(results)} cycles reproduced exactly")
    return 0 if exact == len(results) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from ratchet import app
    from ratchet.demo import run_demo

    if app.prefect_api_configured():
        from ratchet.flows import retrain  # noqa: F401 - configures Prefect's logging, adjusted next
    with _run_output(None, args):
        return run_demo(args.workspace)


def cmd_demo_team(args: argparse.Namespace) -> int:
    from ratchet.demo_team import run_demo_team

    # Prefect stays out of this process: `ratchet deploy` and the worker run as a user runs them
    return run_demo_team(args.directory, lambda line: print(line, flush=True))


def cmd_reference_data(args: argparse.Namespace) -> int:
    from ratchet import app

    version = app.reference_data(
        args.directory, lambda name, batch_id: print(f"{name}: {batch_id or 'already present'}")
    )
    print(f"data matches data.dvc: {version}")
    return 0


# ---- parser ---------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ratchet",
        description="Continual retraining of image classifiers: the champion only moves forward.",
    )
    parser.add_argument(
        "--debug", action="store_true", help=f"print tracebacks here too (they always go to {state.LOG})"
    )
    parser.add_argument(
        "--verbose", action="store_true", help="print Prefect's own log lines too (run names, links, states)"
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
    p.add_argument(
        "--tracking-uri",
        metavar="URI",
        help="registry.tracking_uri: an MLflow tracking server (http://host:5000) or store; default the "
        "workspace's mlruns/mlflow.db",
    )
    p.add_argument(
        "--remote",
        metavar="URL",
        help="remotes.dvc: the shared DVC remote (a directory, s3://bucket/prefix, ssh://user@host/path); "
        "default the workspace's .dvc-storage/",
    )
    p.add_argument(
        "--git-remote",
        metavar="URL",
        help="remotes.git: the shared git remote of the workspace's history; one that has a history "
        "already is cloned into DIRECTORY (joining a team's workspace)",
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
        help="override params.yaml train.strategy for this cycle; " + strategies.help_text(),
    )
    p.set_defaults(func=cmd_retrain)

    p = sub.add_parser(
        "warm",
        help="keep a process with torch, MLflow and DVC imported: later retrains here start in seconds",
        description="Start the workspace's warm process in the background: one Python process that has "
        "imported what a cycle needs, from which each later `ratchet retrain` in this workspace forks "
        "(its output, exit status and Ctrl-C stay the command's). It stops after --idle seconds without "
        "a command, or with --stop.",
    )
    workspace_arg(p)
    group = p.add_mutually_exclusive_group()
    group.add_argument("--stop", action="store_true", help="stop the workspace's warm process")
    group.add_argument("--status", action="store_true", help="say whether one is running")
    group.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the process itself
    p.add_argument(
        "--idle", type=float, default=None, help="seconds without a command before it stops (default 1800)"
    )
    p.set_defaults(func=cmd_warm)

    p = sub.add_parser(
        "inbox",
        help="version the complete batches in the inbox (params.yaml inbox.path), then retrain",
        description="Run the Prefect flow ingest-and-retrain once: each complete batch in the inbox, "
        "oldest first, is versioned as `ratchet ingest` does and moved to done/ (refused whole: to "
        "rejected/, beside NAME.reason.txt); batches still being written are left alone. Then, if a "
        "batch was versioned or one is pending, one cycle runs as `ratchet retrain` does.",
    )
    workspace_arg(p)
    p.set_defaults(func=cmd_inbox)

    p = sub.add_parser(
        "deploy",
        help="create or update this workspace's deployment on the Prefect server (PREFECT_API_URL)",
        description="On the Prefect server PREFECT_API_URL (or the Prefect profile) names: create the "
        "process work pool params.yaml schedule.work_pool if missing, and one deployment of the flow "
        "ingest-and-retrain for this workspace, named after its registered model: a run on the cron "
        "schedule.cron (in schedule.timezone), a run schedule.debounce_seconds after a batch is "
        "ingested (batches arriving meanwhile join it), one run at a time. `ratchet worker` runs them.",
    )
    workspace_arg(p)
    p.set_defaults(func=cmd_deploy)

    p = sub.add_parser(
        "worker",
        help="run the deployment's runs: a Prefect process worker on the work pool, until Ctrl-C",
        description="Poll the work pool params.yaml schedule.work_pool on the Prefect server and run "
        "each flow run in a subprocess of this Python environment, until Ctrl-C or SIGTERM.",
    )
    workspace_arg(p)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("status", help="the champion and every version with lineage, metrics and reasons")
    workspace_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--reasons", action="store_true", help="every version's gate reasons, not only the latest")
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

    for action, what in (
        ("approve", "promote a @challenger awaiting review (review.approval: manual, or a dry run)"),
        ("reject", "reject a @challenger awaiting review: its batches are held"),
        ("override", "promote a version the gate rejected, with the reason on record"),
    ):
        p = sub.add_parser(action, help=what)
        p.add_argument("version", help="the model version")
        workspace_arg(p)
        p.add_argument("--reason", required=True, help="why, for the record (tags, description, history)")
        p.add_argument("--by", help="who decides (default: the OS user)")
        p.set_defaults(func=cmd_review, action=action)

    p = sub.add_parser("history", help="every change of @champion and every decision, with who, when and why")
    workspace_arg(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("rollback", help="point @champion back at an earlier promoted version")
    workspace_arg(p)
    p.add_argument("--to", help="version to restore (default: the champion's parent)")
    p.add_argument("--by", help="who decides (default: the OS user)")
    p.set_defaults(func=cmd_rollback)

    p = sub.add_parser(
        "replay",
        help="rebuild every cycle from git and the DVC remote alone and compare each with its record",
        description="Clone the workspace, then for each cycle commit of its current branch, oldest "
        "first: check it out, pull its data, train from the parent this replay rebuilt, and compare "
        "the candidate's weights, metrics and gate decision with the recorded ones. Needs no MLflow "
        "registry (when there is one, it names the versions). Exit 0 only if every cycle is exact.",
    )
    workspace_arg(p)
    p.add_argument(
        "--to", metavar="VERSION_OR_CYCLE", help="stop after this version number or cycle id prefix"
    )
    p.add_argument(
        "--into",
        type=Path,
        metavar="DIR",
        help="keep the replay in DIR (new or empty): the workspace clone and replay.json "
        "(default: a temporary directory, removed at the end)",
    )
    p.set_defaults(func=cmd_replay)

    p = sub.add_parser(
        "demo", help="stream the embedded digits data through the real cycle and print a table"
    )
    p.add_argument(
        "--workspace", type=Path, help="where to build the demo workspace (default: a new temp dir)"
    )
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser(
        "demo-team",
        help="team mode on this machine: PostgreSQL, MLflow and Prefect servers, a worker; the schedule "
        "takes the digits batches from the inbox, then the same table",
    )
    p.add_argument(
        "--directory", type=Path, help="where the services and the workspace live (default: a new temp dir)"
    )
    p.set_defaults(func=cmd_demo_team)

    p = sub.add_parser("reference-data", help="regenerate the reference stream tracked by data.dvc, offline")
    p.add_argument("directory", type=Path, nargs="?", default=Path("."), help="workspace (default: .)")
    p.set_defaults(func=cmd_reference_data)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.debug:
        os.environ["RATCHET_DEBUG"] = "1"
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
        where = getattr(args, "workspace", None) or getattr(args, "directory", None)
        logged = state.log(where, "internal error", traceback.format_exc()) if where else ""
        print(
            f"ratchet: internal error: {type(exc).__name__}: {exc} "
            f"(traceback in {logged or 'nowhere: the workspace is not writable'}; --debug prints it)",
            file=sys.stderr,
        )
        return 1


def run() -> NoReturn:
    """The `ratchet` command: in the workspace's warm process when it has one (`ratchet.warm`),
    else `main` here; then an exit without the interpreter's teardown. Clearing the thousands of
    modules MLflow, DVC and torch load takes seconds at the end of every command, for a process
    that is done."""
    argv = sys.argv[1:]
    code = _in_warm_process(argv)
    os._exit(finished(argv) if code is None else code)


def _in_warm_process(argv: Sequence[str]) -> int | None:
    """`ratchet ARGV` in its workspace's warm process, if the command is one it runs and the
    workspace has one that fits (`warm.forward`); None to run it here."""
    from ratchet import warm
    from ratchet.workspace import open_workspace

    if not argv or argv[0] not in warm.COMMANDS:
        return None
    args = build_parser().parse_args(argv)  # a bad argument is said here, as the command would
    try:
        root = open_workspace(args.workspace).root
    except RatchetError:
        return None  # the command itself says what is wrong
    return warm.forward(root, argv)


def finished(argv: Sequence[str]) -> int:
    """`main`, then what a normal exit does first; after it nothing is left to do."""
    code = main(argv)
    wind_up()
    return code


def wind_up() -> None:
    """What a normal exit does first: exit handlers (MLflow's remove its temporary directories),
    logging's, and the streams flushed; after it nothing is left to do."""
    atexit._run_exitfuncs()
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a reader gone, or a stream already closed
            stream.flush()


if __name__ == "__main__":
    run()
