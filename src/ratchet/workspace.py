"""A workspace: a git + DVC repository holding params.yaml, dvc.yaml, data/ and the MLflow store."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shlex
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

from ratchet.config import (
    Params,
    check_params,
    complete_params,
    load_params,
    parse_params,
    read_yaml,
    render_params,
)
from ratchet.errors import InputError, RatchetError

PIPELINE = "dvc.yaml"
TEMPLATES = (PIPELINE,)  # params.yaml is rendered from ratchet.config
# dvc.yaml as earlier releases wrote it (sha256): ratchet owns the file, so a workspace that still
# has one of these is upgraded to today's template; a hand-edited one is left alone
LEGACY_PIPELINES = frozenset(
    {
        "193a13555bcf40aa916fc5be55dc3c53821014946045d187dff8cb5c6f0ff1f4",
        "0f0f30ee4357c5722bccc31a224b66ae2f4dfb0de47aaac143c1e91465d5ff16",  # prepare read no parent path
        "b13e46870d6814c332bf1e656edcb57e8be2d341e04515dd22681dea3ef85f39",  # evaluate: no train
        "1fec57c6b1c285d7d8e3849d328910e1e46b66a8424609d379461ff88a2eb1ac",  # prepare copied the samples
    }
)


@dataclass(frozen=True)
class StagePaths:
    """The stages' inputs and outputs, as dvc.yaml passes them on the stage command lines."""

    cycle: Path  # cycle.json: what the next `dvc repro` trains on and from
    data: Path
    parent: Path  # the parent's checkpoint directory, tracked by DVC in `parent_dvc`
    prepared: Path
    candidate: Path
    eval: Path

    @property
    def parent_dvc(self) -> Path:
        return self.parent.with_name(f"{self.parent.name}.dvc")  # where `dvc add` puts it

    def committed(self) -> list[Path]:
        """What a cycle commits to git besides dvc.yaml and dvc.lock: cycle.json, the parent's .dvc
        file and the .gitignore where DVC lists the parent, and the folders holding the stage outputs
        (DVC's .gitignore keeps the cached ones out)."""
        return [
            self.cycle,
            self.parent_dvc,
            self.parent.parent / ".gitignore",
            *sorted({p.parent for p in (self.prepared, self.candidate, self.eval)}),
        ]


@dataclass(frozen=True)
class Workspace:
    root: Path

    @property
    def params_path(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def mlruns(self) -> Path:
        return self.root / "mlruns"

    @property
    def registry_db(self) -> Path:
        return self.mlruns / "mlflow.db"

    @property
    def tracking_uri(self) -> str:
        return f"sqlite:///{self.registry_db}"

    @property
    def artifact_uri(self) -> str:
        return (self.mlruns / "artifacts").as_uri()

    @property
    def dvc_remote(self) -> Path:
        return self.root / ".dvc-storage"

    def params(self) -> Params:
        return load_params(self.params_path)

    def stage_paths(self) -> StagePaths:
        """Read from dvc.yaml, the one place that names them."""
        import yaml  # lazy: the training core is importable with torch alone

        pipeline = self.root / PIPELINE
        try:
            stages = yaml.safe_load(pipeline.read_text())["stages"]
            args = {name: _stage_args(stages[name]["cmd"], name) for name in ("prepare", "train", "evaluate")}
        except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as exc:
            raise InputError(
                f"{pipeline} does not name the stages' paths as this ratchet expects ({exc}): "
                f"compare it with `ratchet init` output in an empty directory"
            ) from None
        if (args["prepare"][3], args["prepare"][3]) != (args["train"][0], args["evaluate"][0]) or (
            args["train"][1] != args["evaluate"][1]
        ):
            raise InputError(f"{pipeline}: the stages do not pass their outputs on to each other")
        cycle, data, parent, prepared = args["prepare"]
        if self.root / data != self.data_dir:  # ingest writes there, and data.dvc tracks it
            raise InputError(f"{pipeline}: prepare reads {data}, but this workspace's batches are in data/")
        # train and evaluate read the samples from the data directory prepare names them in
        # (a dvc.yaml of an earlier release passes them none: `upgrade_pipeline` replaces it)
        if any(len(args[s]) > _DATA_ARG[s] and args[s][_DATA_ARG[s]] != data for s in ("train", "evaluate")):
            raise InputError(f"{pipeline}: train and evaluate must read the data prepare reads, {data}")
        candidate, evaluated = args["train"][1], args["evaluate"][2]
        return StagePaths(*(self.root / p for p in (cycle, data, parent, prepared, candidate, evaluated)))

    def upgrade_pipeline(self) -> bool:
        """Replace a dvc.yaml an earlier release wrote with today's; True if it did."""
        from ratchet.atomic import write_text

        pipeline = self.root / PIPELINE
        if (
            not pipeline.is_file()
            or hashlib.sha256(pipeline.read_bytes()).hexdigest() not in LEGACY_PIPELINES
        ):
            return False
        write_text(pipeline, template(PIPELINE))
        return True

    @contextmanager
    def lock(self) -> Iterator[None]:
        """One cycle or ingest at a time per workspace; a second one fails fast instead of racing."""
        fd = os.open(self.root / ".ratchet.lock", os.O_CREAT | os.O_RDWR)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise RatchetError(
                    f"workspace {self.root} is busy: another ratchet command holds it"
                ) from None
            yield
        finally:
            os.close(fd)


def open_workspace(path: Path) -> Workspace:
    root = path.resolve()
    if not root.is_dir():
        raise InputError(f"workspace not found: {path} (create one with `ratchet init {path}`)")
    if not (root / "params.yaml").is_file() or not (root / ".dvc").is_dir():
        raise InputError(f"not a ratchet workspace: {path} (create one with `ratchet init {path}`)")
    return Workspace(root)


# where train and evaluate take the data directory on their command lines
_DATA_ARG = {"train": 2, "evaluate": 3}


def _stage_args(cmd: str, stage: str) -> list[str]:
    """`python -m ratchet.stages.train A B C` -> ["A", "B", "C"], checking the count."""
    words = shlex.split(cmd)
    args = words[words.index(f"ratchet.stages.{stage}") + 1 :]
    # train and evaluate of earlier releases took no data directory
    expected = {"prepare": (4,), "train": (2, 3), "evaluate": (3, 4)}[stage]
    if len(args) not in expected:
        raise ValueError(f"stage {stage} passes {len(args)} paths, not {' or '.join(map(str, expected))}")
    return args


def template(name: str) -> str:
    return resources.files("ratchet.templates").joinpath(name).read_text()


# what `ratchet init` may set in a new params.yaml: its keyword, the flag, the params key
INIT_CHOICES = (
    ("model_name", "--model-name", "registry.model_name"),
    ("image_size", "--image-size", "data.image_size"),
    ("channels", "--channels", "data.channels"),
    ("tracking_uri", "--tracking-uri", "registry.tracking_uri"),
    ("remote", "--remote", "remotes.dvc"),
    ("git_remote", "--git-remote", "remotes.git"),
)


def _with(params: Params, key: str, value: object) -> Params:
    section, name = key.split(".")
    return replace(params, **{section: replace(getattr(params, section), **{name: value})})


def _params_text(path: Path, chosen: Mapping[str, object]) -> tuple[str, list[str]]:
    """The params.yaml to write (a new one with what `ratchet init` was told, range-checked, or the
    existing one completed) and the keys it adds. A choice other than an existing file's is refused."""
    if not path.exists():
        params = Params()
        for keyword, _flag, key in INIT_CHOICES:
            if chosen.get(keyword) is not None:
                params = _with(params, key, chosen[keyword])
        check_params(params)
        return render_params(params), []
    text, added = complete_params(path.read_text(), str(path))
    existing = parse_params(read_yaml(text, str(path)))
    for keyword, flag, key in INIT_CHOICES:
        section, name = key.split(".")
        wanted, current = chosen.get(keyword), getattr(getattr(existing, section), name)
        if wanted is not None and wanted != current:
            why = f"the workspace already uses {key} {current}; edit {path.name} instead"
            raise InputError(f"{flag} {wanted}: {why}")
    return text, added


def init_workspace(
    path: Path,
    model_name: str | None = None,
    image_size: int | None = None,
    channels: int | None = None,
    tracking_uri: str | None = None,
    remote: str | None = None,
    git_remote: str | None = None,
) -> tuple[Workspace, list[str]]:
    """Create or complete a workspace; returns what it did, one phrase each. Safe to run again.

    The choices (`INIT_CHOICES`) go into a new params.yaml. An existing one keeps its values and
    comments; keys it lacks are added with their defaults, and a choice other than its own is an
    error. A new directory with a `git_remote` that already has a history joins it: a clone.
    """
    from ratchet.atomic import write_text
    from ratchet.data import versioning

    root = path.resolve()
    if root.exists() and not root.is_dir():
        raise InputError(f"cannot create a workspace at {path}: it is a file")
    ws = Workspace(root)
    created: list[str] = []
    joined = versioning.remote_branch(git_remote) if git_remote and not (root / ".git").exists() else None
    if git_remote is not None and joined is not None:
        if root.exists() and any(root.iterdir()):
            raise InputError(f"--git-remote {git_remote} has a history: join it in a new or empty directory")
        root.parent.mkdir(parents=True, exist_ok=True)
        versioning.git(root.parent, "clone", "-q", "--branch", joined, git_remote, str(root))
        created.append(f"clone of {git_remote}")
    chosen = dict(
        model_name=model_name,
        image_size=image_size,
        channels=channels,
        tracking_uri=tracking_uri,
        remote=remote,
        git_remote=git_remote,
    )
    params_text, added = _params_text(ws.params_path, chosen)
    root.mkdir(parents=True, exist_ok=True)
    had_git = (root / ".git").exists()
    versioning.ensure_repos(root, ws.dvc_remote)
    if not had_git:
        created.append("git repository")
    if not ws.params_path.exists():
        write_text(ws.params_path, params_text)
        created.append("params.yaml")
    elif added:
        write_text(ws.params_path, params_text)
    for name in TEMPLATES:
        target = root / name
        if not target.exists():
            write_text(target, template(name))
            created.append(name)
    if ws.upgrade_pipeline():
        created.append("dvc.yaml (upgraded from an earlier release's)")
    ignore = root / ".gitignore"
    current = ignore.read_text().splitlines() if ignore.exists() else []
    missing = [ln for ln in template("gitignore").splitlines() if ln and ln not in current]
    if missing:
        write_text(ignore, "\n".join(current + missing) + "\n")
        created.append(".gitignore entries")
    (ws.data_dir / "batches").mkdir(parents=True, exist_ok=True)
    ws.params()  # a hand-edited params.yaml that is broken should fail here, not mid-cycle
    versioning.commit(root, ["params.yaml", "dvc.yaml", ".gitignore", ".dvc"], "ratchet init")
    done = [f"created {', '.join(created)}"] if created else []
    if added:
        done.append(f"params.yaml: added {', '.join(added)}")
    return ws, done
