"""Typed params with one home per knob: its default, its range check and its comment sit on the field.

params.yaml holds a workspace's values. A key it leaves out takes the default below, so adding a
knob does not break existing workspaces; an unknown key or a wrong type is still a one-line error
with the dotted key, so a typo never silently falls back to a default. The params.yaml text is
rendered from these fields (`render_params`): the comments a user reads are the ones written here.

Plain frozen dataclasses, no validation library: the training core and the benchmarks import
TrainParams on a machine with only torch installed. YAML is imported lazily for the same reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import textwrap
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from ratchet.errors import InputError
from ratchet.train import strategies  # the registry only: it imports no torch

# The params.yaml layout this ratchet writes and reads. 1: the release before `schema` existed
# (same keys, every one required); 2: keys may be left out and take their defaults.
SCHEMA = 2

T = TypeVar("T")
Scalar = str | int | float | bool | None  # a params.yaml leaf value

_COMMENT = "comment"
_CHECK = "check"
_WHY = "why"


def knob(default: T, comment: str, check: Callable[[T], bool] | None = None, why: str = "") -> T:
    """A params field: its default, the comment rendered beside it in params.yaml, and its range.

    `check` returns whether a value is allowed (or raises InputError saying why not); `why` ends the
    error message when it is not: "params: <key> <why>, got <value>".
    """
    if check is not None and not why:
        raise ValueError("a knob with a check needs a why")
    return dataclasses.field(default=default, metadata={_COMMENT: comment, _CHECK: check, _WHY: why})


def section(cls: Callable[[], T], comment: str = "") -> T:
    """A params.yaml section: its dataclass (defaults all round) and a comment rendered under its name."""
    return dataclasses.field(default_factory=cls, metadata={_COMMENT: comment})


def _positive(v: float) -> bool:
    return v > 0


def _not_negative(v: float) -> bool:
    return v >= 0


def _fraction(v: float) -> bool:
    return 0.0 <= v <= 1.0


def _devices(v: int | str) -> bool:
    return v == "auto" or (isinstance(v, int) and v >= 1)


def _strategy(name: str) -> bool:
    strategies.check(name)
    return True


POSITIVE = "must be positive"
NOT_NEGATIVE = "must not be negative"
IN_0_1 = "must be in [0, 1]"


@dataclass(frozen=True)
class RegistryParams:
    model_name: str = knob("ratchet-classifier", "one registered model per workspace")
    experiment: str = knob("ratchet", "MLflow experiment for the cycle runs")
    tracking_uri: str | None = knob(
        None, "MLflow tracking store; default the workspace's mlruns/mlflow.db; MLFLOW_TRACKING_URI overrides"
    )
    registry_uri: str | None = knob(None, "MLflow model registry; default: the tracking store")


@dataclass(frozen=True)
class DataParams:
    image_size: int = knob(
        8,
        "canonical height = width, pixels; inputs are resized to it",
        check=lambda v: v >= 8,
        why="must be at least 8",
    )
    channels: int = knob(1, "1 = grayscale, 3 = RGB", check=lambda v: v in (1, 3), why="must be 1 or 3")
    held_out_fraction: float = knob(
        0.3,
        "per class and batch; held-out samples never train a model",
        check=lambda v: 0.0 < v < 1.0,
        why="must be between 0 and 1",
    )
    max_file_bytes: int = knob(
        10_000_000, "image files larger than this are quarantined unread", check=_positive, why=POSITIVE
    )
    max_image_pixels: int = knob(
        25_000_000, "decoded width*height cap (decompression bombs)", check=_positive, why=POSITIVE
    )
    max_unpacked_bytes: int = knob(
        1_000_000_000,
        "an .npz whose arrays unpack to more than this is refused before any is read (zip bombs)",
        check=_positive,
        why=POSITIVE,
    )


@dataclass(frozen=True)
class ModelParams:
    arch: Literal["small_cnn", "resnet18"] = knob(
        "small_cnn", "small_cnn | resnet18 (torchvision, head replaced)"
    )
    width: int = knob(
        32,
        "small_cnn: channels of the first conv block; the second has twice as many",
        check=_positive,
        why=POSITIVE,
    )
    dropout: float = knob(
        0.1,
        "dropout probability on the features before the classifier head",
        check=lambda v: 0.0 <= v < 1.0,
        why="must be in [0, 1)",
    )
    pretrained: str | None = knob(
        None,
        "bootstrap weights: a local state_dict file, e.g. torchvision resnet18 (no hub downloads)",
    )
    norm: Literal["batch", "group"] = knob(
        "batch",
        "batch | group (group has no running statistics to drift: it suits ewc/lwf on domain shifts; "
        "replay prefers batch)",
    )


@dataclass(frozen=True)
class TrainParams:
    strategy: str = knob(
        "replay",
        " | ".join(strategies.NAMES) + ", or several joined by +: replay+lwf",
        check=_strategy,
        why="is not a strategy",
    )
    num_epochs: int = knob(12, "passes over the training data per cycle", check=_positive, why=POSITIVE)
    batch_size: int = knob(64, "samples per minibatch", check=_positive, why=POSITIVE)
    lr: float = knob(
        0.005, "peak learning rate from scratch (one-cycle schedule)", check=_positive, why=POSITIVE
    )
    finetune_lr: float = knob(
        0.003,
        "peak learning rate when continuing from the champion: smaller steps keep what it knew",
        check=_positive,
        why=POSITIVE,
    )
    weight_decay: float = knob(0.0001, "AdamW weight decay", check=_not_negative, why=NOT_NEGATIVE)
    seed: int = knob(
        0,
        "seeds the initial weights, minibatch order and replay memory",
        check=lambda v: 0 <= v < 2**32,
        why="must be in [0, 2**32)",
    )
    device: Literal["auto", "cpu", "cuda"] = knob("auto", "auto | cpu | cuda (bf16 autocast on cuda)")
    devices: int | Literal["auto"] = knob(
        1,
        "processes training together, data-parallel (DDP), one per GPU with cuda, gloo on the CPU; "
        "batch_size is split among them; auto = every GPU of the machine",
        check=_devices,
        why="must be a positive integer or auto",
    )
    deterministic: bool = knob(True, "bitwise-repeatable runs on the same machine: what `dvc repro` checks")
    threads: int = knob(
        2,
        "CPU threads, pinned: the count decides how sums split, so the same value gives the same "
        "weights on any CPU; 0 = all cores (repeatable on this machine only)",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    replay_memory_per_class: int = knob(
        60, "replay: stored training samples per class, class-balanced", check=_not_negative, why=NOT_NEGATIVE
    )
    replay_fraction: float = knob(
        0.5,
        "replay: share of each minibatch drawn from the memory",
        check=lambda v: 0.0 <= v < 1.0,
        why="must be in [0, 1)",
    )
    replay_balance: bool = knob(
        True, "replay: logit-adjusted loss, so plentiful new classes are not favoured over the memory's"
    )
    ewc_lambda: float = knob(
        100.0,
        "ewc: weight of the penalty towards the champion's weights",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    ewc_gamma: float = knob(
        0.9, "ewc (online): decay of earlier cycles' Fisher information, 0..1", check=_fraction, why=IN_0_1
    )
    ewc_fisher_samples: int = knob(
        512, "ewc: training samples used to estimate the Fisher information", check=_positive, why=POSITIVE
    )
    lwf_alpha: float = knob(
        1.0, "lwf: weight of distilling the champion's outputs", check=_not_negative, why=NOT_NEGATIVE
    )
    lwf_temperature: float = knob(
        2.0, "lwf: softmax temperature of the distillation", check=_positive, why=POSITIVE
    )
    derpp_alpha: float = knob(
        0.3,
        "derpp: weight of matching the outputs recorded with each memory sample",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    derpp_beta: float = knob(
        0.5, "derpp: weight of the cross-entropy on memory samples", check=_not_negative, why=NOT_NEGATIVE
    )
    transfer_head_epochs: int = knob(
        3,
        "transfer: head-only epochs before unfreezing, last block first",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    transfer_lr_decay: float = knob(
        0.3,
        "transfer: lr factor per block further from the head, 0..1",
        check=lambda v: 0.0 < v <= 1.0,
        why="must be in (0, 1]",
    )
    compile: bool = knob(False, "torch.compile the model (pays off on a GPU for long runs)")
    max_resident_mb: int = knob(
        4096,
        "training images up to this size live on the device (GPU); larger ones stream from host memory",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    loader_workers: int = knob(
        2,
        "streaming only: threads gathering minibatches ahead of the training step",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )


@dataclass(frozen=True)
class GateParams:
    alpha: float = knob(
        0.05,
        "a drop counts only if McNemar's paired test finds it significant at this level: noise on a small "
        "held-out set is not forgetting",
        check=lambda v: 0.0 < v < 1.0,
        why="must be between 0 and 1",
    )
    max_old_drop_pt: float = knob(
        2.0,
        "forgetting: allowed drop on old held-out data, points, predictions taken among the champion's "
        "classes only (interference is gated apart)",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    max_class_drop_pt: float = knob(
        15.0,
        "forgetting of one class that the average would hide, points (its test is corrected for the "
        "number of classes)",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    hard_drop_pt: float = knob(
        10.0,
        "a drop of more points on old or new data rejects, significant or not",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    max_interference_pt: float = knob(
        25.0,
        "% of old samples the candidate may take for this cycle's new classes: the price of learning "
        "them (a finetune takes ~100%)",
        check=lambda v: 0.0 <= v <= 100.0,
        why="must be in [0, 100]",
    )
    max_new_drop_pt: float = knob(
        1.0,
        "allowed drop, points, on this batch's held-out data of classes the champion already knows "
        "(new domains, more of the same)",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    min_new_class_lift: float = knob(
        0.5,
        "new classes must be told apart: (accuracy - chance) / (1 - chance) among themselves; 0 = chance "
        "(scrambled labels), 1 = perfect; a gain over a champion that never saw them is no proof",
        check=_fraction,
        why=IN_0_1,
    )
    max_label_gap_pt: float = knob(
        15.0,
        "suspect labels: champion AND candidate score this many points below what their old per-class "
        "accuracy predicts for this batch",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    min_accuracy: float = knob(
        0.6, "floor on the candidate's accuracy over all held-out data, 0..1", check=_fraction, why=IN_0_1
    )
    min_class_accuracy: float = knob(
        0.1,
        "floor for every class, 0..1: one the candidate has not learned at all",
        check=_fraction,
        why=IN_0_1,
    )


@dataclass(frozen=True)
class ReviewParams:
    approval: Literal["auto", "manual"] = knob(
        "auto",
        "auto | manual: manual keeps a candidate that passes the gate as @challenger until a person runs "
        "`ratchet approve VERSION` or `ratchet reject VERSION`; new batches wait for that",
    )
    wait_minutes: float = knob(
        60.0,
        "manual: a deployment run of the retrain flow that leaves a version for a person pauses this "
        "long for the answer in the Prefect UI; unanswered, the version waits for the command line",
        check=_positive,
        why=POSITIVE,
    )


def _file_name(name: str) -> bool:
    return "/" not in name and name not in (".", "..")


@dataclass(frozen=True)
class InboxParams:
    path: str = knob(
        "incoming",
        "where upstream drops new batches: a directory (relative to the workspace, or absolute; outside "
        "data/) or an s3://bucket/prefix URL (credentials and endpoint from the environment, as boto3 "
        "reads them)",
    )
    ready_marker: str = knob(
        "_READY",
        "a batch directory is complete once it holds a file of this name; an .npz is complete as it "
        "appears (write it under a name starting with . or ending in .tmp or .part, then rename it)",
        check=_file_name,
        why="must be a file name, not a path",
    )


_CRON_FIELD = re.compile(r"[0-9A-Za-z*/,?#-]+")


def _cron(expr: str) -> bool:
    """Five fields of cron characters; `ratchet deploy` has Prefect check the rest (ranges, names)."""
    fields = expr.split()
    return len(fields) == 5 and all(_CRON_FIELD.fullmatch(f) for f in fields)


def _timezone(name: str) -> bool:
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


@dataclass(frozen=True)
class ScheduleParams:
    cron: str = knob(
        "0 * * * *",
        "when the deployment of `ratchet deploy` runs a cycle anyway (minute hour day month weekday): "
        "picks up batches no event announced",
        check=_cron,
        why="must be a cron expression of five fields, e.g. '0 * * * *'",
    )
    timezone: str = knob(
        "UTC",
        "IANA time zone the cron is read in, e.g. Europe/Paris",
        check=_timezone,
        why="is not a time zone",
    )
    debounce_seconds: int = knob(
        60,
        "a batch's arrival starts a run this long after it, and further arrivals within it join that "
        "run: five batches landing in a minute make one cycle",
        check=_not_negative,
        why=NOT_NEGATIVE,
    )
    work_pool: str = knob(
        "ratchet", "Prefect process work pool the deployment's runs go to; `ratchet worker` polls it"
    )


@dataclass(frozen=True)
class RemoteParams:
    dvc: str | None = knob(
        None,
        "DVC remote for data, parents and candidates: a directory, s3://bucket/prefix or "
        "ssh://user@host[:port]/path; default the workspace's .dvc-storage/. Credentials stay out of git: "
        "the environment or `dvc remote modify --local origin ...`",
    )
    git: str | None = knob(
        None,
        "git remote of the workspace's history (a bare repository, ssh or https URL): pulled before "
        "each ingest and cycle, pushed after, so another clone can run the next cycle; default none",
    )


@dataclass(frozen=True)
class Params:
    registry: RegistryParams = section(RegistryParams)
    data: DataParams = section(
        DataParams,
        "The defaults are sized for the digits demo (8x8 grayscale): for larger or colour images set "
        "image_size and channels (`ratchet init --image-size N --channels C` in a new workspace).",
    )
    model: ModelParams = section(ModelParams)
    train: TrainParams = section(TrainParams)
    gate: GateParams = section(
        GateParams,
        'Each check protects against one way a candidate or a batch can be bad; see README "The gate".',
    )
    # not a stage's input: who decides after the gate changes no candidate, so dvc.yaml names none
    review: ReviewParams = section(ReviewParams)
    # not a tunable either: where batches arrive changes no candidate
    inbox: InboxParams = section(
        InboxParams, 'The inbox of `ratchet inbox` and the ingest-and-retrain flow (README "Inbox").'
    )
    # where the history is shared changes no candidate either
    remotes: RemoteParams = section(RemoteParams, 'Shared remotes for team mode (README "Team mode").')
    # nor when a cycle runs
    schedule: ScheduleParams = section(
        ScheduleParams, "The deployment `ratchet deploy` makes on a Prefect server, run by `ratchet worker`."
    )

    def digest(self) -> str:
        """Short stable hash of every tunable: the `params_hash` lineage tag and part of a cycle's id.
        Where the MLflow stores are is not a tunable: moving to a tracking server changes no id."""
        tunables = dataclasses.asdict(self)
        for where in ("tracking_uri", "registry_uri"):
            del tunables["registry"][where]
        del tunables["review"]  # who approves changes no candidate
        del tunables["inbox"]  # nor does where batches arrive
        del tunables["remotes"]  # nor where the history is shared
        del tunables["schedule"]  # nor when a cycle runs
        blob = json.dumps(tunables, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


# ---- reading ---------------------------------------------------------------------------------


def _coerce(value: Any, annotation: Any, key: str) -> Any:
    origin = get_origin(annotation)
    if origin is Literal:
        allowed = get_args(annotation)
        if value not in allowed:
            raise InputError(f"params: {key} must be one of {', '.join(map(str, allowed))}, got {value!r}")
        return value
    if origin in (types.UnionType, typing.Union):
        if value is None and type(None) in get_args(annotation):
            return None
        options = [a for a in get_args(annotation) if a is not type(None)]
        if len(options) == 1:
            return _coerce(value, options[0], key)
        for option in options:  # the first that takes it
            try:
                return _coerce(value, option, key)
            except InputError:
                pass
        raise InputError(f"params: {key} must be {' or '.join(map(_describe, options))}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        return _build(annotation, value, key)  # type: ignore[arg-type]
    if annotation is bool:
        if not isinstance(value, bool):
            raise InputError(f"params: {key} must be true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(f"params: {key} must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise InputError(f"params: {key} must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str) or not value:
            raise InputError(f"params: {key} must be a non-empty string, got {value!r}")
        return value
    raise TypeError(f"unsupported params annotation {annotation!r} for {key}")


def _describe(annotation: Any) -> str:
    """What a value of one member of a union must be, for an error message."""
    if get_origin(annotation) is Literal:
        return " or ".join(map(str, get_args(annotation)))
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a non-empty string"}
    return names.get(annotation, str(annotation))


def _dotted(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _build(cls: type[T], raw: Any, prefix: str) -> T:
    """`cls` from a mapping: unknown keys and wrong types are errors, missing keys take the default."""
    where = prefix or "top level"
    if not isinstance(raw, dict):
        raise InputError(f"params: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields), key=str)
    if unknown:
        dotted = ", ".join(_dotted(prefix, str(k)) for k in unknown)
        raise InputError(f"params: unknown key {dotted} (known: {', '.join(fields)})")
    values = {f: _coerce(raw[f], hints[f], _dotted(prefix, f)) for f in fields if f in raw}
    return cls(**values)


def check_params(obj: Any, prefix: str = "") -> None:
    """Run every field's range check on `obj` (Params or one of its sections), recursively."""
    for field in dataclasses.fields(obj):
        value = getattr(obj, field.name)
        key = _dotted(prefix, field.name)
        if dataclasses.is_dataclass(value):
            check_params(value, key)
            continue
        check = field.metadata.get(_CHECK)
        if check is None:
            continue
        try:
            ok = check(value)
        except InputError as exc:
            raise InputError(f"params: {key}: {exc}") from None
        if not ok:
            raise InputError(f"params: {key} {field.metadata[_WHY]}, got {value!r}")


def _schema(raw: dict[Any, Any]) -> int:
    schema = raw.get("schema", 1)
    if isinstance(schema, bool) or not isinstance(schema, int) or schema < 1:
        raise InputError(f"params: schema must be a positive integer, got {schema!r}")
    if schema > SCHEMA:
        raise InputError(
            f"params.yaml was written by a newer ratchet (schema {schema}); this one reads up to {SCHEMA}"
        )
    return schema


def parse_params(raw: Any) -> Params:
    """Params from parsed YAML: every schema up to SCHEMA, missing keys and sections taking defaults."""
    if not isinstance(raw, dict):
        raise InputError(f"params: top level must be a mapping, got {type(raw).__name__}")
    _schema(raw)
    params = _build(Params, {k: v for k, v in raw.items() if k != "schema"}, "")
    check_params(params)
    return params


def read_yaml(text: str, where: str) -> Any:
    """Parsed YAML, or one InputError line naming `where` and the line of the problem."""
    import yaml  # lazy: the training core is importable with torch alone

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"params: {where} is not valid YAML{line}") from None


def load_params(path: Path) -> Params:
    """Read and validate params.yaml; every problem is one InputError line."""
    if not path.is_file():
        raise InputError(f"params file not found: {path}")
    return parse_params(read_yaml(path.read_text(), str(path)))


# ---- writing ---------------------------------------------------------------------------------

HEADER = (
    "# Every tunable of this workspace. A key left out takes ratchet's default; `ratchet init` adds\n"
    "# the missing ones with their comments and leaves the values and comments here alone.\n"
)
_INDENT = "  "
_COMMENT_COLUMN = 35  # where `# ...` starts on a key's line (for the default two-space indent)
_WIDTH = 110


def _scalar(value: Any) -> str:
    import yaml

    text: str = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


def _wrap(text: str, width: int) -> list[str]:
    return textwrap.wrap(text, max(width, 30), break_long_words=False, break_on_hyphens=False)


def _comment_lines(comment: str, indent: str) -> list[str]:
    return [f"{indent}# {part}" for part in _wrap(comment, _WIDTH - len(indent) - 2)]


def _key_lines(name: str, value: Any, comment: str, indent: str = _INDENT) -> list[str]:
    """`key: value   # comment`, a long comment continued on comment lines in the same column."""
    head = f"{indent}{name}: {_scalar(value)}"
    if not comment:
        return [head]
    column = max(_COMMENT_COLUMN + len(indent) - len(_INDENT), len(head) + 2)
    parts = _wrap(comment, _WIDTH - column - 2)
    return [f"{head.ljust(column)}# {parts[0]}"] + [f"{' ' * column}# {part}" for part in parts[1:]]


def _section_lines(field: dataclasses.Field[Any], values: Any) -> list[str]:
    lines = [f"{field.name}:"]
    if field.metadata.get(_COMMENT):
        lines += _comment_lines(field.metadata[_COMMENT], _INDENT)
    for knob_field in dataclasses.fields(values):
        value = getattr(values, knob_field.name)
        lines += _key_lines(knob_field.name, value, knob_field.metadata[_COMMENT])
    return lines


def render_params(params: Params | None = None) -> str:
    """The params.yaml text of `params` (default: every default), each key with its comment."""
    params = Params() if params is None else params
    check_params(params)
    lines = [HEADER.rstrip("\n"), f"schema: {SCHEMA}"]
    for field in dataclasses.fields(params):
        lines += _section_lines(field, getattr(params, field.name))
    return "\n".join(lines) + "\n"


_TOP_KEY = re.compile(r"(?P<key>[A-Za-z_][\w-]*)\s*:(?P<rest>.*)$")
_SCHEMA_LINE = re.compile(r"schema\s*:\s*[^#\s]+")


def complete_params(text: str, where: str = "params.yaml") -> tuple[str, list[str]]:
    """Add the keys and sections that `text` lacks, with their defaults and comments; change nothing else.

    Returns the new text and what was added: dotted keys, a section's name for a whole section,
    "schema" for the schema line (added, or raised from an older schema). Missing keys go at the end
    of their section, missing sections at the end of the file. Raises InputError when `text` is not
    valid params, or when its layout (a section in flow style) leaves no line to add a key on.
    """
    raw = read_yaml(text, where)
    before = parse_params(raw)
    defaults = Params()
    lines = text.splitlines()
    tops: dict[str, int] = {}
    for i, line in enumerate(lines):
        match = _TOP_KEY.match(line)
        if match:
            tops.setdefault(match["key"], i)
    starts = sorted(tops.values())
    added: list[str] = []
    inserts: dict[int, list[str]] = {}  # line index -> lines to insert before it
    appended: list[str] = []  # whole sections, after everything else

    if "schema" not in raw:
        at = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
        inserts.setdefault(at, []).append(f"schema: {SCHEMA}")
        added.append("schema")
    elif raw["schema"] < SCHEMA:
        lines[tops["schema"]] = _SCHEMA_LINE.sub(f"schema: {SCHEMA}", lines[tops["schema"]], count=1)
        added.append("schema")

    for field in dataclasses.fields(Params):
        name = field.name
        section_defaults = getattr(defaults, name)
        if name not in raw:
            appended += _section_lines(field, section_defaults)
            added.append(name)
            continue
        present = raw[name] or {}
        missing = [f for f in dataclasses.fields(section_defaults) if f.name not in present]
        if not missing:
            continue
        head = tops[name]
        match = _TOP_KEY.match(lines[head])
        assert match is not None
        rest = match["rest"].strip()
        if rest and not rest.startswith("#"):
            raise InputError(
                f"params: cannot add {', '.join(f'{name}.{f.name}' for f in missing)} to {where}: "
                f"section {name} is not written one key a line; add them by hand"
            )
        following = next((s for s in starts if s > head), len(lines))
        body = [i for i in range(head + 1, following) if lines[i][:1].isspace() and lines[i].strip()]
        keys = [lines[i] for i in body if not lines[i].lstrip().startswith("#")]
        indent = keys[0][: len(keys[0]) - len(keys[0].lstrip())] if keys else _INDENT
        at = body[-1] + 1 if body else head + 1
        for f in missing:
            inserts.setdefault(at, []).extend(
                _key_lines(f.name, getattr(section_defaults, f.name), f.metadata[_COMMENT], indent)
            )
            added.append(f"{name}.{f.name}")

    if not added:
        return text, []
    out: list[str] = []
    for i in range(len(lines) + 1):
        out += inserts.get(i, [])
        if i < len(lines):
            out.append(lines[i])
    new_text = "\n".join(out + appended) + "\n"
    _check_complete(new_text, where, before, added)
    return new_text, added


def _check_complete(text: str, where: str, before: Params, added: list[str]) -> None:
    """The completed text must read as the same params, now with every key written out."""
    failed = InputError(
        f"params: could not add {', '.join(added)} to {where} without changing what it says; "
        "add them by hand (`ratchet init` in an empty directory writes a complete params.yaml)"
    )
    try:
        raw = read_yaml(text, where)
        after = parse_params(raw)
    except InputError:
        raise failed from None
    complete = raw.get("schema") == SCHEMA and all(
        isinstance(raw.get(field.name), dict)
        and all(f.name in raw[field.name] for f in dataclasses.fields(getattr(after, field.name)))
        for field in dataclasses.fields(after)
    )
    if after != before or not complete:
        raise failed
