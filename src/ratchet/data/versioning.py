"""Git and DVC through their command lines: the only place ratchet talks to DVC.

`dvc.api` has no repro/add/push, and the command line is what users run too, so the workspace
stays something a person can inspect with the same tools.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TypeVar

from ratchet import state
from ratchet.errors import RatchetError

if TYPE_CHECKING:  # lazy at run time: DVC takes half a second to import
    from dvc.repo import Repo

T = TypeVar("T")

DATA_DVC = "data.dvc"
_IDENTITY = {"user.name": "ratchet", "user.email": "ratchet@localhost"}


@dataclass(frozen=True)
class DataVersion:
    """Which data a model saw: the commit of data.dvc and the md5 DVC recorded for data/."""

    commit: str
    md5: str

    def __str__(self) -> str:
        return f"{self.commit[:10]}:{self.md5}"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # stage commands say `python -m ratchet.stages.X`: make that the interpreter running ratchet
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("DVC_NO_ANALYTICS", "1")
    return env


# wall seconds this process has waited on git and DVC commands, by tool: where a cycle's time goes
SPENT: dict[str, float] = {"git": 0.0, "dvc": 0.0}


def _run(args: list[str], cwd: Path, what: str) -> str:
    start = time.perf_counter()
    try:
        done = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise RatchetError(f"{what} failed: {args[0]} is not installed") from None
    finally:
        tool = what.split()[0]  # "git" or "dvc", as git() and dvc() name their commands
        SPENT[tool] = SPENT.get(tool, 0.0) + time.perf_counter() - start
    if done.returncode != 0:
        raise_failure(cwd, args, done.returncode, done.stderr + done.stdout, what)
    return done.stdout


def raise_failure(cwd: Path, args: list[str], code: int, output: str, what: str) -> NoReturn:
    """One line for a failed command, its whole output in the workspace's log."""
    logged = state.log(cwd, f"{' '.join(args)} (exit {code})", output)
    where = f" (full output in {logged})" if logged else ""
    raise RatchetError(f"{what} failed: {failure_cause(output)}{where}")


def failure_cause(output: str) -> str:
    """The line of a failed git or DVC command that says why, named plainly where we can tell."""
    # DVC ends every failure with an invitation to its support chat: never the cause
    lines = [ln.strip() for ln in output.splitlines() if ln.strip() and "Having any troubles" not in ln]
    if any("No space left on device" in ln for ln in lines):
        return "disk full (No space left on device)"
    errors = [ln for ln in lines if "ERROR" in ln or "error:" in ln or "fatal:" in ln]
    return (errors or lines or ["no output"])[-1]


def git(root: Path, *args: str) -> str:
    return _run(["git", *args], root, f"git {args[0]}")


def dvc(root: Path, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], root, f"dvc {args[0]}")


def preload() -> None:
    """Import DVC's API (`dvc_api`), for a warm process (`ratchet.warm`)."""
    import dvc.repo  # noqa: F401


def dvc_api(root: Path, what: str, call: Callable[[Repo], T]) -> T:
    """`call` with the workspace's DVC repository, in this process: the work of the `dvc` command
    `what` names, without a Python starting and importing DVC for it (about half a second each, and
    a cycle runs several). For the commands a cycle and an ingest run every time; the rest go
    through `dvc`. A failure is one line, as the command's would be, its traceback in the log."""
    from dvc.repo import Repo

    start = time.perf_counter()
    said = io.StringIO()  # DVC's own lines, logged and printed, and its progress bars: for the log
    try:
        with _only_into(said), contextlib.chdir(root), Repo(str(root)) as repo:  # as the command runs
            return call(repo)
    except Exception as exc:  # noqa: BLE001 - any failure of DVC's is the command's failure
        causes = " - ".join(str(e) or type(e).__name__ for e in _chain(exc))
        output = f"{said.getvalue()}{traceback.format_exc()}ERROR: {causes}"
        raise_failure(root, ["dvc", *what.split()[1:]], 1, output, what)
    finally:
        SPENT["dvc"] += time.perf_counter() - start


@contextlib.contextmanager
def _only_into(said: io.StringIO) -> Iterator[None]:
    """DVC's output goes to `said` alone while DVC runs here: its prints, and its log records, which
    would otherwise reach this process's own handlers."""
    log = logging.getLogger("dvc")
    # alone: a handler DVC's own command line set up earlier in this process writes to the stream
    # of that moment, which may be closed by now, and DVC then fails the command it logs for
    handlers, propagate, level = log.handlers, log.propagate, log.level
    log.handlers = [logging.StreamHandler(said)]
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        with contextlib.redirect_stdout(said), contextlib.redirect_stderr(said):
            yield
    finally:
        log.handlers = handlers
        log.propagate = propagate
        log.setLevel(level)


def _chain(exc: BaseException) -> list[BaseException]:
    """An exception and its causes: DVC wraps the one that says why (a full disk, a refused write)."""
    chain = [exc]
    while (cause := chain[-1].__cause__ or chain[-1].__context__) is not None and cause not in chain:
        chain.append(cause)
    return chain


def dvc_add(root: Path, target: Path) -> None:
    """`dvc add target`: hash it into the cache and write its .dvc file."""
    dvc_api(root, f"dvc add {target.name}", lambda repo: repo.add(str(target.resolve())))


def dvc_commit(root: Path) -> None:
    """`dvc commit -f`: record the stage outputs as they are now in dvc.lock and the cache."""
    dvc_api(root, "dvc commit", lambda repo: repo.commit(force=True))


def dvc_push(root: Path) -> None:
    """`dvc push`: everything the workspace tracks, to its default remote."""
    dvc_api(root, "dvc push", lambda repo: repo.push())


def ensure_repos(root: Path, remote: Path) -> None:
    """git init + dvc init + a default local DVC remote; each step only if it is missing."""
    if not (root / ".git").exists():
        git(root, "init", "-q", "-b", "main")
    for key, value in _IDENTITY.items():
        # commits need an identity; a user's own git config wins when it has one
        if not git_config(root, key):
            git(root, "config", key, value)
    if not (root / ".dvc").exists():
        dvc(root, "init")  # no -q anywhere: DVC then says nothing about why it failed
        dvc(root, "config", "core.analytics", "false")
    if not dvc(root, "remote", "list").strip():
        remote.mkdir(parents=True, exist_ok=True)
        # relative: DVC stores it relative to .dvc/config, so clones and moved workspaces keep working
        dvc(root, "remote", "add", "-d", "local", os.path.relpath(remote, root))


def push(root: Path, what: str) -> str | None:
    """`dvc push` everything the workspace tracks (data.dvc, parent.dvc, the outputs dvc.lock
    names). A note left first makes the next command retry when the push fails or the process
    dies; returns the line to say when it failed, None when all is on the remote."""
    state.directory(root)
    note = root / state.UNPUSHED
    note.write_text(what + "\n", encoding="utf-8")
    try:
        dvc_push(root)
    except RatchetError as exc:
        return (
            f"{what} is committed but not backed up ({exc}); fix the DVC remote, then the next "
            "ingest or retrain pushes it"
        )
    note.unlink()
    return None


def push_unpushed(root: Path) -> str | None:
    """Retry the push an earlier command could not finish; what happened in one line, or None when
    nothing was waiting."""
    what = unpushed(root)
    if what is None:
        return None
    return push(root, what) or f"pushed {what} to the DVC remote (an earlier push had not finished)"


def unpushed(root: Path) -> str | None:
    """What is committed but not yet on the DVC remote (a failed or interrupted push); None if nothing."""
    note = root / state.UNPUSHED
    if not note.is_file():
        return None
    return note.read_text(encoding="utf-8").strip() or "the workspace"


def remote_branch(url: str) -> str | None:
    """The branch to join in the git repository at `url`: the one its HEAD names, else `main`, else
    its only one; None when it has none (empty, or unreachable: a new workspace then starts the
    history, and its first push says why if it cannot)."""
    done = subprocess.run(["git", "ls-remote", "--symref", url], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return None
    lines = [ln.split() for ln in done.stdout.splitlines() if ln.strip()]
    heads = [ref.removeprefix("refs/heads/") for _, ref, *_ in lines if ref.startswith("refs/heads/")]
    named = [ref.removeprefix("refs/heads/") for kind, ref, *_ in lines if kind == "ref:"]
    # a bare repository made with `git init --bare` may name a branch nobody pushed (master)
    for candidate in [*named, "main"]:
        if candidate in heads:
            return candidate
    return heads[0] if heads else None


def git_config(root: Path, key: str) -> str:
    done = subprocess.run(["git", "config", key], cwd=root, capture_output=True, text=True, check=False)
    return done.stdout.strip()


def commit(root: Path, paths: list[str], message: str) -> str:
    """Commit `paths` (if they changed) and return HEAD."""
    git(root, "add", "--", *paths)
    if subprocess.run(["git", "diff", "--cached", "--quiet"], cwd=root, check=False).returncode != 0:
        git(root, "commit", "-q", "-m", message)
    return head(root)


def commit_times(root: Path, pattern: str) -> list[int]:
    """Commit times (unix seconds) of HEAD's commits with a message line matching `pattern`
    (extended regex); none in a repository without commits."""
    args = ["git", "log", "--format=%ct", "-E", f"--grep={pattern}", "HEAD"]
    done = subprocess.run(args, cwd=root, capture_output=True, text=True)
    return [int(t) for t in done.stdout.split()] if done.returncode == 0 else []


def head(root: Path) -> str:
    return git(root, "rev-parse", "HEAD").strip()


def restore_from_head(root: Path, paths: list[str]) -> None:
    """Put `paths` back as HEAD has them, in the index and on disk; delete those HEAD lacks."""
    for path in paths:
        known = subprocess.run(["git", "cat-file", "-e", f"HEAD:{path}"], cwd=root, capture_output=True)
        if known.returncode == 0:
            git(root, "checkout", "HEAD", "--", path)
        else:
            git(root, "rm", "-q", "--cached", "--ignore-unmatch", "--", path)
            (root / path).unlink(missing_ok=True)


def data_changes(root: Path) -> list[str]:
    """Files under data/ that are not as data.dvc records them ("modified data/...", "deleted ...",
    "added ..."): edited or removed after ingest, or left by an ingest that never finished."""
    status = dvc_api(root, "dvc data status", lambda repo: repo.data_status(granular=True))
    uncommitted = status.get("uncommitted", {})
    return [
        f"{kind} {path}"
        for kind, paths in sorted(uncommitted.items())
        for path in paths
        # files of data/ only (stage outputs are DVC-tracked too); the directory itself adds nothing
        if isinstance(path, str) and path.startswith("data/") and path != "data/"
    ]


def data_version(root: Path) -> DataVersion:
    dvc_file = root / DATA_DVC
    if not dvc_file.exists():
        raise RatchetError(f"no data version yet: {dvc_file} is missing (ingest a batch first)")
    md5 = ""
    for line in dvc_file.read_text().splitlines():
        line = line.strip().removeprefix("- ")
        if line.startswith("md5:"):
            md5 = line.split(":", 1)[1].strip()
            break
    last = git(root, "log", "-1", "--format=%H", "--", DATA_DVC).strip()
    return DataVersion(commit=last or "uncommitted", md5=md5)


def lock_hashes(root: Path) -> dict[str, str]:
    """Every path dvc.lock records, each stage's inputs and outputs, with its md5: which data,
    parent, prepared data and candidate a cycle had, in DVC's own terms (params and metrics have none)."""
    import yaml  # lazy, as in workspace.stage_paths

    lock = yaml.safe_load((root / "dvc.lock").read_text()) or {}
    return {
        str(entry["path"]): str(entry["md5"])
        for stage in (lock.get("stages") or {}).values()
        for kind in ("deps", "outs")
        for entry in stage.get(kind) or ()
        if "md5" in entry
    }
