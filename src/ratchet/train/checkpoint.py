"""A model directory: spec.json + weights.pt (a state_dict, loaded weights-only) + memory.npz.

This is the unit the registry stores for a version, so the next cycle gets back the weights AND the
continual-learning state (the class map lives in the spec, the replay memory in memory.npz).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ratchet.atomic import atomic_path, write_text
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import ModelSpec, SmallCNN, build_model

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"
MEMORY_FILE = "memory.npz"


@dataclass(frozen=True)
class Checkpoint:
    model: SmallCNN
    spec: ModelSpec
    memory: ReplayMemory


def save_checkpoint(directory: Path, model: SmallCNN, spec: ModelSpec, memory: ReplayMemory) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    # through memory: torch.save names the archive after the file, and the temp name is random,
    # which would make identical weights hash differently (dvc.lock compares hashes)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        tmp.write_bytes(buffer.getvalue())
    with atomic_path(directory / MEMORY_FILE) as tmp, tmp.open("wb") as f:
        np.savez(f, images=memory.images, labels=memory.labels)
    write_text(directory / SPEC_FILE, json.dumps(spec.to_json(), indent=1, sort_keys=True) + "\n")


def load_checkpoint(directory: Path, device: torch.device | str = "cpu") -> Checkpoint:
    spec = ModelSpec.from_json(json.loads((directory / SPEC_FILE).read_text()))
    model = build_model(spec)
    # weights_only: registry content is never unpickled as code
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    memory_path = directory / MEMORY_FILE
    if memory_path.exists():
        with np.load(memory_path, allow_pickle=False) as npz:
            memory = ReplayMemory(images=npz["images"], labels=npz["labels"])
    else:
        memory = ReplayMemory.empty(spec.image_size, spec.in_channels)
    return Checkpoint(model=model.to(device), spec=spec, memory=memory)
