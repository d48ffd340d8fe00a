"""Typed, strict params: params.yaml is the one home of every tunable.

Unknown keys, missing keys and wrong types are errors with the dotted key in the message, so a
typo never silently falls back to a default that lives somewhere else.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

from ratchet.errors import InputError

# A strategy is one name or several joined by "+" (e.g. "replay+lwf"); see parse_strategy.
STRATEGIES: tuple[str, ...] = ("finetune", "replay", "ewc", "lwf", "transfer", "joint")


@dataclass(frozen=True)
class RegistryParams:
    model_name: str
    experiment: str
    tracking_uri: str | None = None
    registry_uri: str | None = None


@dataclass(frozen=True)
class DataParams:
    image_size: int  # canonical height and width, pixels
    channels: int  # 1 (grayscale) or 3 (RGB)
    held_out_fraction: float  # per class, never trains a model
    max_file_bytes: int  # larger image files are quarantined unread
    max_image_pixels: int  # decoded size cap (decompression bombs)


@dataclass(frozen=True)
class ModelParams:
    arch: Literal["small_cnn", "resnet18"]
    width: int  # small_cnn: channels of the first conv block; later blocks double it
    dropout: float
    pretrained: str | None  # bootstrap weights: a local state_dict file (e.g. torchvision resnet18)
    norm: Literal["batch", "group"]  # group: no running statistics to drift when domains shift


@dataclass(frozen=True)
class TrainParams:
    strategy: str  # finetune | replay | ewc | lwf | transfer | joint, or a combination like replay+lwf
    num_epochs: int
    batch_size: int
    lr: float  # peak learning rate when training from scratch (one-cycle schedule)
    finetune_lr: (
        float  # peak learning rate when continuing from the champion: smaller steps keep what it knew
    )
    weight_decay: float
    seed: int
    device: Literal["auto", "cpu", "cuda"]
    deterministic: bool  # bitwise-repeatable runs on the same machine (what `dvc repro` checks)
    replay_memory_per_class: int  # replay: stored training samples per class, class-balanced
    replay_fraction: float  # replay: share of each minibatch drawn from the memory
    replay_balance: bool  # replay: logit-adjusted loss against the new-vs-memory class imbalance
    ewc_lambda: float  # ewc: weight of the quadratic penalty towards the champion's weights
    ewc_gamma: float  # ewc (online): decay of earlier cycles' Fisher information, 0..1
    ewc_fisher_samples: int  # ewc: training samples used to estimate the Fisher information
    lwf_alpha: float  # lwf: weight of the distillation loss on the champion's outputs
    lwf_temperature: float  # lwf: softmax temperature of the distillation
    transfer_head_epochs: int  # transfer: epochs training the head only before unfreezing
    transfer_lr_decay: float  # transfer: lr factor per block further from the head, 0..1
    compile: bool  # torch.compile the model (worth it on a GPU for long runs)
    max_resident_mb: int  # training images up to this size live on the device; larger ones stream from host
    loader_workers: int  # streaming only: threads gathering minibatches ahead of the training step


@dataclass(frozen=True)
class GateParams:
    alpha: float  # significance of the paired tests: a drop must be real, not noise on a small set
    max_old_drop_pt: float  # forgetting: allowed drop on old held-out data, known classes, points
    max_class_drop_pt: float  # forgetting: allowed drop of any one old class, points
    hard_drop_pt: float  # a drop on old or new data beyond this rejects, significant or not
    max_interference_pt: float  # % of old samples the candidate may give to this cycle's new classes
    max_new_drop_pt: float  # allowed drop on new held-out data of classes the champion knows, points
    min_new_class_lift: float  # new classes told apart: (accuracy - chance) / (1 - chance), 0..1
    max_label_gap_pt: float  # suspect labels: both models this far below what old data predicts
    min_accuracy: float  # absolute floor on the candidate's accuracy over all held-out data, 0..1
    min_class_accuracy: float  # absolute floor on every class, 0..1


@dataclass(frozen=True)
class Params:
    registry: RegistryParams
    data: DataParams
    model: ModelParams
    train: TrainParams
    gate: GateParams

    def digest(self) -> str:
        """Short stable hash of every tunable: the `params_hash` lineage tag."""
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


T = TypeVar("T")


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
        return _coerce(value, next(a for a in get_args(annotation) if a is not type(None)), key)
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


def _build(cls: type[T], raw: Any, prefix: str) -> T:
    where = prefix or "top level"
    if not isinstance(raw, dict):
        raise InputError(f"params: {where} must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        dotted = ", ".join(f"{prefix}.{k}" if prefix else str(k) for k in unknown)
        raise InputError(f"params: unknown key {dotted} (known: {', '.join(fields)})")
    # a field with a default may be left out: files written before it existed still load
    missing = [
        f.name
        for f in dataclasses.fields(cls)  # type: ignore[arg-type]
        if f.name not in raw and f.default is dataclasses.MISSING
    ]
    if missing:
        dotted = ", ".join(f"{prefix}.{k}" if prefix else k for k in missing)
        raise InputError(f"params: missing key {dotted}")
    values = {f: _coerce(raw[f], hints[f], f"{prefix}.{f}" if prefix else f) for f in fields if f in raw}
    return cls(**values)


def _check_ranges(p: Params) -> None:
    checks = [
        (p.data.image_size >= 8, "data.image_size must be at least 8"),
        (p.data.channels in (1, 3), "data.channels must be 1 or 3"),
        (0.0 < p.data.held_out_fraction < 1.0, "data.held_out_fraction must be between 0 and 1"),
        (p.data.max_file_bytes > 0, "data.max_file_bytes must be positive"),
        (p.data.max_image_pixels > 0, "data.max_image_pixels must be positive"),
        (p.model.width > 0, "model.width must be positive"),
        (0.0 <= p.model.dropout < 1.0, "model.dropout must be in [0, 1)"),
        (p.train.num_epochs > 0, "train.num_epochs must be positive"),
        (p.train.batch_size > 0, "train.batch_size must be positive"),
        (p.train.lr > 0, "train.lr must be positive"),
        (p.train.finetune_lr > 0, "train.finetune_lr must be positive"),
        (p.train.weight_decay >= 0, "train.weight_decay must not be negative"),
        (0 <= p.train.seed < 2**32, "train.seed must be in [0, 2**32)"),
        (p.train.replay_memory_per_class >= 0, "train.replay_memory_per_class must not be negative"),
        (0.0 <= p.train.replay_fraction < 1.0, "train.replay_fraction must be in [0, 1)"),
        (p.train.ewc_lambda >= 0, "train.ewc_lambda must not be negative"),
        (0.0 <= p.train.ewc_gamma <= 1.0, "train.ewc_gamma must be in [0, 1]"),
        (p.train.ewc_fisher_samples > 0, "train.ewc_fisher_samples must be positive"),
        (p.train.lwf_alpha >= 0, "train.lwf_alpha must not be negative"),
        (p.train.lwf_temperature > 0, "train.lwf_temperature must be positive"),
        (p.train.transfer_head_epochs >= 0, "train.transfer_head_epochs must not be negative"),
        (0.0 < p.train.transfer_lr_decay <= 1.0, "train.transfer_lr_decay must be in (0, 1]"),
        (p.train.max_resident_mb >= 0, "train.max_resident_mb must not be negative"),
        (p.train.loader_workers >= 0, "train.loader_workers must not be negative"),
        (0.0 < p.gate.alpha < 1.0, "gate.alpha must be between 0 and 1"),
        (p.gate.max_old_drop_pt >= 0, "gate.max_old_drop_pt must not be negative"),
        (p.gate.max_class_drop_pt >= 0, "gate.max_class_drop_pt must not be negative"),
        (p.gate.hard_drop_pt >= 0, "gate.hard_drop_pt must not be negative"),
        (0.0 <= p.gate.max_interference_pt <= 100.0, "gate.max_interference_pt must be in [0, 100]"),
        (p.gate.max_new_drop_pt >= 0, "gate.max_new_drop_pt must not be negative"),
        (0.0 <= p.gate.min_new_class_lift <= 1.0, "gate.min_new_class_lift must be in [0, 1]"),
        (p.gate.max_label_gap_pt >= 0, "gate.max_label_gap_pt must not be negative"),
        (0.0 <= p.gate.min_accuracy <= 1.0, "gate.min_accuracy must be in [0, 1]"),
        (0.0 <= p.gate.min_class_accuracy <= 1.0, "gate.min_class_accuracy must be in [0, 1]"),
    ]
    for ok, message in checks:
        if not ok:
            raise InputError(f"params: {message}")


def parse_strategy(name: str) -> frozenset[str]:
    """ "replay+lwf" -> {"replay", "lwf"}. finetune and joint stand alone; the others combine."""
    parts = [p.strip() for p in name.split("+")]
    unknown = [p for p in parts if p not in STRATEGIES]
    if unknown or not name:
        raise InputError(f"unknown strategy {name!r} (known: {', '.join(STRATEGIES)}, combined with +)")
    alone = {"finetune", "joint"} & set(parts)
    if alone and len(parts) > 1:
        raise InputError(f"strategy {next(iter(alone))} does not combine with others: {name!r}")
    return frozenset(parts)


def check_strategy(name: str) -> str:
    parse_strategy(name)
    return name


def parse_params(raw: Any) -> Params:
    params = _build(Params, raw, "")
    _check_ranges(params)
    try:
        parse_strategy(params.train.strategy)
    except InputError as exc:
        raise InputError(f"params: train.strategy: {exc}") from None
    return params


def load_params(path: Path) -> Params:
    """Read and validate params.yaml; every problem is one InputError line."""
    import yaml  # lazy: the training core is importable with torch alone

    if not path.is_file():
        raise InputError(f"params file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise InputError(f"params: {path} is not valid YAML{where}") from None
    return parse_params(raw)
