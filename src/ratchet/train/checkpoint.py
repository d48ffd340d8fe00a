"""A model directory: spec.json + weights.pt (a state_dict, loaded weights-only) + memory.npz, and
one `<strategy>.pt` per strategy that keeps state between cycles (e.g. ewc.pt).

This is the unit the registry stores for a version, so the next cycle gets back the weights AND the
continual-learning state (the class map lives in the spec, the replay memory in memory.npz).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ratchet.atomic import atomic_path, write_text
from ratchet.train import strategies
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import Classifier, ModelSpec, build_model

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"
MEMORY_FILE = "memory.npz"

# what one strategy keeps between cycles: named parts of named tensors (ewc: fisher and anchor
# per parameter); saved as <strategy>.pt, loaded weights-only
StrategyState = dict[str, dict[str, torch.Tensor]]


@dataclass(frozen=True)
class Checkpoint:
    model: Classifier
    spec: ModelSpec
    memory: ReplayMemory
    states: dict[str, StrategyState] = field(default_factory=dict)  # by strategy name


def _save_tensors(path: Path, obj: object) -> None:
    # through memory: torch.save names the archive after the file, and the temp name is random,
    # which would make identical weights hash differently (dvc.lock compares hashes)
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def _cpu(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def save_checkpoint(directory: Path, checkpoint: Checkpoint) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    _save_tensors(directory / WEIGHTS_FILE, _cpu(checkpoint.model.state_dict()))
    for name, state in checkpoint.states.items():
        _save_tensors(directory / f"{name}.pt", {part: _cpu(tensors) for part, tensors in state.items()})
    memory = checkpoint.memory
    with atomic_path(directory / MEMORY_FILE) as tmp, tmp.open("wb") as f:
        seen = sorted(memory.seen.items())
        np.savez(
            f,
            images=memory.images,
            labels=memory.labels,
            seen_classes=np.array([name for name, _ in seen], dtype=str),
            seen_counts=np.array([count for _, count in seen], dtype=np.int64),
        )
    write_text(directory / SPEC_FILE, json.dumps(checkpoint.spec.to_json(), indent=1, sort_keys=True) + "\n")


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> Checkpoint:
    spec = ModelSpec.from_json(json.loads((directory / SPEC_FILE).read_text()))
    model = build_model(spec)
    # weights_only: registry content is never unpickled as code
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    memory_path = directory / MEMORY_FILE
    if memory_path.exists():
        with np.load(memory_path, allow_pickle=False) as npz:
            seen = (
                dict(zip(npz["seen_classes"].tolist(), npz["seen_counts"].tolist(), strict=True))
                if "seen_classes" in npz.files
                else {}
            )
            memory = ReplayMemory(images=npz["images"], labels=npz["labels"], seen=seen)
    else:
        memory = ReplayMemory.empty(spec.image_size, spec.in_channels)
    states = {
        name: torch.load(directory / f"{name}.pt", map_location="cpu", weights_only=True)
        for name in strategies.NAMES
        if (directory / f"{name}.pt").exists()
    }
    return Checkpoint(model=model.to(device), spec=spec, memory=memory, states=states)
