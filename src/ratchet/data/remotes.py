"""Team mode: the workspace's history shared through a git remote and its data through a DVC remote.

params.yaml `remotes` names both (`RemoteParams`); this module makes the repositories say the same
(`configure`), brings the workspace up to the git remote before anything is planned or ingested
(`sync`), and publishes each ingest and cycle commit (`publish`). The git remote is where machines
agree: a push that is not a fast-forward means another machine recorded something first, and the
loser merges it or, where both changed the same record, gives way. Git and DVC run through
`versioning`'s command runners.
"""

from __future__ import annotations

import configparser
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ratchet.config import RemoteParams
from ratchet.data import versioning
from ratchet.errors import RatchetError

ORIGIN = "origin"  # the name of the shared remote, in git as in DVC (the default DVC remote keeps `local`)
DVC_CONFIG = ".dvc/config"


class Superseded(RatchetError):
    """Another machine pushed a change to the same records first: this one was undone locally."""


@dataclass(frozen=True)
class Divergence:
    ahead: int  # local commits the remote lacks
    behind: int  # remote commits the workspace lacks


def _is_url(location: str) -> bool:
    return "://" in location or (":" in location.split("/")[0] and not location.startswith("/"))


def _dvc_remote(root: Path) -> tuple[str, str] | None:
    """The default DVC remote's name and its url as .dvc/config stores it (a path relative to .dvc/)."""
    parser = configparser.ConfigParser()
    parser.read(root / DVC_CONFIG)
    name = parser.get("core", "remote", fallback=None)
    if name is None:
        return None
    return name, parser.get(f"'remote \"{name}\"'", "url", fallback="")


def _same_place(root: Path, stored: str, wanted: str) -> bool:
    if _is_url(wanted) or _is_url(stored):
        return stored.rstrip("/") == wanted.rstrip("/")
    # DVC keeps a relative path relative to .dvc/; params.yaml's is relative to the workspace
    return (root / ".dvc" / stored).resolve() == (root / wanted).resolve()


def configure(root: Path, remotes: RemoteParams) -> list[str]:
    """Point DVC's default remote and git's `origin` where params.yaml says, when they point
    elsewhere; returns what changed. A changed .dvc/config is committed at once (clones read it)."""
    done: list[str] = []
    if remotes.dvc is not None:
        current = _dvc_remote(root)
        if current is None or current[0] != ORIGIN or not _same_place(root, current[1], remotes.dvc):
            # a relative path is given as params.yaml has it; DVC stores it relative to .dvc/config
            versioning.dvc(root, "remote", "add", "--force", "--default", ORIGIN, remotes.dvc)
            versioning.commit(root, [DVC_CONFIG], f"remotes: DVC remote {ORIGIN} is {remotes.dvc}")
            done.append(f"DVC remote {ORIGIN} is now {remotes.dvc} (the default)")
    if remotes.git is not None:
        current_git = _git(root, "remote", "get-url", ORIGIN)
        if current_git is None:
            versioning.git(root, "remote", "add", ORIGIN, remotes.git)
            done.append(f"git remote {ORIGIN} is now {remotes.git}")
        elif current_git.strip() != remotes.git:
            versioning.git(root, "remote", "set-url", ORIGIN, remotes.git)
            done.append(f"git remote {ORIGIN} is now {remotes.git} (was {current_git.strip()})")
    return done


def _git(root: Path, *args: str) -> str | None:
    """A git command whose failure is an answer (no such ref, no such remote): its output or None."""
    done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, check=False)
    return done.stdout if done.returncode == 0 else None


def branch(root: Path) -> str:
    return versioning.git(root, "rev-parse", "--abbrev-ref", "HEAD").strip()


def _divergence(root: Path, upstream: str) -> Divergence:
    counts = versioning.git(root, "rev-list", "--left-right", "--count", f"HEAD...{upstream}").split()
    return Divergence(ahead=int(counts[0]), behind=int(counts[1]))


def _fetch(root: Path) -> str | None:
    """Fetch the shared branch; its remote-tracking ref, or None when the remote does not have it yet."""
    name = branch(root)
    if not (_git(root, "ls-remote", "--heads", ORIGIN, name) or "").strip():
        return None
    versioning.git(root, "fetch", "-q", ORIGIN, name)
    return f"{ORIGIN}/{name}"


def sync(root: Path, remotes: RemoteParams, say: Callable[[str], None]) -> None:
    """Bring the workspace up to the git remote before planning or ingesting: fast-forward to what
    other machines pushed (and `dvc pull` the data it names), push what this one has not, merge when
    both moved; nothing of that without `remotes.git`. The caller holds the workspace lock and has
    called `configure` (before anything it pushes)."""
    if remotes.git is None:
        return
    upstream = _fetch(root)
    if upstream is None:  # a new shared repository: this workspace's history starts it
        if _push(root):
            say(f"pushed {branch(root)} to the new git remote {remotes.git}")
        return
    where = _divergence(root, upstream)
    if where.behind:
        before = versioning.head(root)
        if not where.ahead:
            versioning.git(root, "merge", "-q", "--ff-only", upstream)
        elif not _merged(root, upstream):
            both = f"`git log --oneline --graph HEAD {upstream}` shows both"
            raise RatchetError(
                f"the workspace and git remote {ORIGIN} both changed the same records since they last "
                f"agreed ({both}): settle it by hand, then retry"
            )
        _pull_data(root, before)
        say(f"pulled {where.behind} commit{'s' if where.behind > 1 else ''} from git remote {ORIGIN}")
    if where.ahead and not _push(root):
        say(
            f"git remote {ORIGIN} moved meanwhile: the next ingest or retrain pushes this workspace's commits"
        )


def _merged(root: Path, upstream: str) -> bool:
    """Merge what another machine pushed; False, with the merge undone, when both changed the same
    record (a conflict)."""
    done = subprocess.run(
        ["git", "merge", "-q", "--no-edit", upstream], cwd=root, capture_output=True, text=True
    )
    if done.returncode != 0:
        _git(root, "merge", "--abort")
        return False
    return True


def _pull_data(root: Path, before: str) -> None:
    """The data the new commits name, from the DVC remote (data/ was as `before` recorded it)."""
    changed = versioning.git(root, "diff", "--name-only", before, "HEAD", "--", versioning.DATA_DVC)
    if changed.strip():
        versioning.dvc(root, "pull", versioning.DATA_DVC)


def _push(root: Path) -> bool:
    """Push the branch; False when the remote refuses it as not a fast-forward (it moved on)."""
    name = branch(root)
    done = subprocess.run(
        ["git", "push", "-q", ORIGIN, f"HEAD:refs/heads/{name}"], cwd=root, capture_output=True, text=True
    )
    if done.returncode == 0:
        return True
    output = done.stderr + done.stdout
    if "non-fast-forward" in output or "fetch first" in output or "rejected" in output:
        return False
    versioning.raise_failure(root, ["git", "push", ORIGIN, name], done.returncode, output, "git push")


def publish(root: Path, remotes: RemoteParams, what: str, undo_to: str) -> None:
    """Push the commit just made (`what`, made on top of `undo_to`) to the git remote. When another
    machine pushed first: merge its commits and push again if they touch other records; if they
    changed the same ones, reset the workspace to `undo_to` plus the remote's commits and raise
    `Superseded` (the caller says what that means for its records)."""
    if remotes.git is None:
        return
    for _attempt in range(3):  # each retry follows a push another machine made in between
        if _push(root):
            return
        upstream = _fetch(root)
        assert upstream is not None  # it refused a push, so it has the branch
        if not _merged(root, upstream):
            versioning.git(root, "reset", "-q", "--hard", undo_to)
            versioning.git(root, "merge", "-q", "--ff-only", upstream)
            _pull_data(root, undo_to)
            raise Superseded(f"{what} was not published: another machine changed the same records first")
        _pull_data(root, undo_to)
    raise RatchetError(f"{what}: git remote {ORIGIN} kept moving during three pushes; retry")


def join(root: Path, remotes: RemoteParams, say: Callable[[str], None]) -> None:
    """`sync` for `ratchet init`, which may have just cloned the workspace: data/ is then empty,
    and the data data.dvc names comes from the DVC remote."""
    for line in configure(root, remotes):
        say(line)
    sync(root, remotes, say)
    batches = root / "data" / "batches"
    if (root / versioning.DATA_DVC).exists() and not any(batches.iterdir()):
        versioning.dvc(root, "pull", versioning.DATA_DVC)
        say("pulled data/ from the DVC remote")
