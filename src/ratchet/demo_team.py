"""`ratchet demo-team` (`make demo-team`): team mode on one machine, with real services.

PostgreSQL with an MLflow tracking server on it, a Prefect server (its UI on) and a process worker
start on 127.0.0.1; a workspace is made with the tracking server, a git remote (a bare repository)
and a DVC remote (a directory), and deployed: the `ingest-and-retrain` flow every minute and on
each ingest event. Then the demo plays the upstream system: it drops the digits batches into the
inbox one at a time and waits for the schedule to take each one through a cycle on the worker;
nobody calls `ratchet retrain`. The same table as `ratchet demo` follows, with where to open both
UIs. Every service started is stopped on the way out, on Ctrl-C and SIGTERM too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from types import FrameType

from ratchet import app, services
from ratchet.cycle import Outcome
from ratchet.data import versioning
from ratchet.data.digits import digits_stream
from ratchet.demo import cycle_table, plot_cycles
from ratchet.errors import RatchetError
from ratchet.registry import VersionInfo

MODEL = "ratchet-team-demo"
CRON = "* * * * *"  # every minute: the schedule, not the demo, takes each batch in
DEBOUNCE_S = 5
CYCLE_WAIT_S = 600  # a minute to the next scheduled run, a worker's process start, then the cycle
POLL_S = 2.0


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt  # SIGTERM stops the services the way Ctrl-C does


def outcome_of(v: VersionInfo) -> Outcome:
    """A version's cycle, as the table shows it, read back from the registry."""
    return Outcome(
        cycle_id=v.tag("cycle_id"),
        version=v.version,
        parent=v.tag("parent_version") or None,
        batches=tuple(v.tag_list("batches")),
        strategy=v.tag("strategy"),
        metrics=v.metrics,
        action=v.action or "rejected",
        reasons=v.reasons,
        resumed=False,
    )


def _decided(root: Path) -> dict[str, VersionInfo]:
    return {v.version: v for v in app.status(root).versions if v.action in ("promoted", "rejected")}


def run_demo_team(home: Path | None = None, say: Callable[[str], None] = print) -> int:
    t0 = time.perf_counter()
    root = home or Path(tempfile.mkdtemp(prefix="ratchet-team-demo-"))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with ExitStack() as stack:
            _run(root, stack, say, t0)
    except KeyboardInterrupt:
        say("interrupted: every service this demo started is stopped")
        return 130
    except services.Unavailable as exc:
        raise RatchetError(f"team demo: {exc}") from None
    say("stopped the worker, the Prefect server, the MLflow server and PostgreSQL")
    return 0


def _run(root: Path, stack: ExitStack, say: Callable[[str], None], t0: float) -> None:
    root.mkdir(parents=True, exist_ok=True)
    say(f"team demo in {root}")
    say("starting PostgreSQL and an MLflow tracking server on it ...")
    mlflow = stack.enter_context(services.mlflow_server(root / "mlflow-artifacts", root / "mlflow.log"))
    up = f"up in {mlflow.seconds_to_start:.0f} s"
    say(f"  MLflow tracking server {mlflow.url} on {mlflow.backend_uri} ({up})")
    say("starting a Prefect server ...")
    prefect = stack.enter_context(services.prefect_server(root, ui=True))
    ui = prefect.api_url.removesuffix("/api")
    say(f"  Prefect server {ui}")
    # `ratchet deploy` and the worker talk to it, as a user's commands would; the worker's runs inherit it
    env = dict(os.environ, PREFECT_API_URL=prefect.api_url)

    shared = root / "shared.git"
    versioning.git(root, "init", "-q", "--bare", str(shared))
    ws, _ = app.init(
        root / "ws", MODEL, tracking_uri=mlflow.url, remote=str(root / "dvc-remote"), git_remote=str(shared)
    )
    params = ws.params_path
    text = re.sub(r"(?m)^  cron: .*?(\s+#)", rf'  cron: "{CRON}"\1', params.read_text(), count=1)
    text = re.sub(r"(?m)^  debounce_seconds: \d+", f"  debounce_seconds: {DEBOUNCE_S}", text, count=1)
    params.write_text(text)
    versioning.commit(ws.root, ["params.yaml"], f"team demo: the schedule every minute ({CRON})")
    deployed = subprocess.run(
        [sys.executable, "-m", "ratchet.cli", "deploy", "-w", str(ws.root)],
        env=env,
        capture_output=True,
        text=True,
    )
    for line in (deployed.stdout + deployed.stderr).splitlines():
        say(f"  {line}")
    if deployed.returncode != 0:
        raise RatchetError("team demo: `ratchet deploy` failed (above)")

    worker_log = root / "worker.log"
    with worker_log.open("wb") as log:
        worker = subprocess.Popen(
            [sys.executable, "-m", "ratchet.cli", "worker", "-w", str(ws.root)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    stack.callback(services.stop_group, worker)
    say(f"  worker started (log: {worker_log})")

    inbox = ws.root / ws.params().inbox.path
    inbox.mkdir(parents=True, exist_ok=True)
    upstream = root / "upstream"
    upstream.mkdir(exist_ok=True)
    rows: list[tuple[str, Outcome]] = []
    for batch in digits_stream():
        before = _decided(ws.root)
        say(f"\n=== {batch.name}: {batch.description}: dropped in {inbox.name}/ ===")
        # written elsewhere, then renamed into the inbox: complete as it appears there
        staged = batch.save_npz(upstream)
        part = inbox / staged.name
        staged.rename(part)
        started = time.monotonic()
        while not (new := sorted(set(_decided(ws.root)) - set(before), key=int)):
            if worker.poll() is not None:
                raise RatchetError(f"the worker stopped (exit {worker.returncode}); see {worker_log}")
            refused = inbox / "rejected" / f"{part.name}.reason.txt"
            if refused.exists():
                say(f"  refused by the inbox: {refused.read_text().strip()}")
                break
            if time.monotonic() - started > CYCLE_WAIT_S:
                raise RatchetError(f"no cycle took {batch.name} in {CYCLE_WAIT_S} s; see {worker_log}")
            time.sleep(POLL_S)
        for version in new:
            outcome = outcome_of(_decided(ws.root)[version])
            rows.append((batch.name, outcome))
            waited = time.monotonic() - started
            say(f"  version {version}: {outcome.action}, {waited:.0f} s after the drop, run by the worker")

    plot = root / "cycles.png"
    plot_cycles(rows, plot)
    say("\n" + cycle_table(rows))
    say(f"\ntotal {time.perf_counter() - t0:.0f} s; plot: {plot}")
    say(f"MLflow UI (versions, runs, reasons): {mlflow.url}")
    say(f"Prefect UI (deployment, schedule, trigger, flow runs): {ui}")
    say(f"workspace: {ws.root} (`ratchet status -w {ws.root}` while the services run)")
    if sys.stdin.isatty():
        input("press Enter to stop the services (Ctrl-C too) ")
