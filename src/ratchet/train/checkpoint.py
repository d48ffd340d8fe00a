"""A model directory: spec.json + weights.pt (a state_dict, loaded weights-only) + memory.npz, and
one `<strategy>.pt` per strategy that keeps state between cycles (e.g. ewc.pt).

This is the unit the registry stores for a version, so the next cycle gets back the weights AND the
continual-learning state (the class map lives in the spec, the replay memory in memory.npz).

memory.npz holds the memory's labels and seen counts, and each sample either as a reference to the
row of a batch's training split it came from (`Origins`) or, where that is not known, as its pixels.
Loading a memory with references takes a `SampleLookup` (training reads them from data/); without
one the checkpoint comes back without its memory, which only training reads.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ratchet.atomic import atomic_path, write_text
from ratchet.errors import InputError
from ratchet.train import strategies
from ratchet.train.memory import NOWHERE, Origins, ReplayMemory
from ratchet.train.model import Classifier, ModelSpec, build_model

SPEC_FILE = "spec.json"
WEIGHTS_FILE = "weights.pt"
MEMORY_FILE = "memory.npz"

# what one strategy keeps between cycles: named parts of named tensors (ewc: fisher and anchor
# per parameter); saved as <strategy>.pt, loaded weights-only
StrategyState = dict[str, dict[str, torch.Tensor]]

# a batch's training split, uint8 (N,H,W,C), by (batch id, content hash): what a memory's
# references are read back from
SampleLookup = Callable[[str, str], np.ndarray]


@dataclass(frozen=True)
class Checkpoint:
    model: Classifier
    spec: ModelSpec
    memory: ReplayMemory | None  # None: not loaded (it names samples, and no lookup was given)
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
    if memory is None:
        raise ValueError("a checkpoint loaded without its replay memory cannot be saved")
    origins = memory.known_origins()
    with atomic_path(directory / MEMORY_FILE) as tmp, tmp.open("wb") as f:
        seen = sorted(memory.seen.items())
        # compressed: labels and references are small once deflated (class names repeat, rows run)
        np.savez_compressed(
            f,
            images=memory.images[origins.which == NOWHERE],  # only the samples of no known batch
            labels=memory.labels,
            seen_classes=np.array([name for name, _ in seen], dtype=str),
            seen_counts=np.array([count for _, count in seen], dtype=np.int64),
            origin_ids=np.array([batch_id for batch_id, _ in origins.batches], dtype=str),
            origin_contents=np.array([content for _, content in origins.batches], dtype=str),
            origin_which=origins.which,
            origin_row=origins.row,
        )
    write_text(directory / SPEC_FILE, json.dumps(checkpoint.spec.to_json(), indent=1, sort_keys=True) + "\n")


def load_checkpoint(
    directory: Path, device: torch.device | str = "cpu", samples: SampleLookup | None = None
) -> Checkpoint:
    """The checkpoint in `directory`; its memory's referenced samples read through `samples`
    (without it, a memory that has any comes back as None)."""
    spec = ModelSpec.from_json(json.loads((directory / SPEC_FILE).read_text()))
    model = build_model(spec)
    # weights_only: registry content is never unpickled as code
    state = torch.load(directory / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    memory_path = directory / MEMORY_FILE
    memory: ReplayMemory | None = ReplayMemory.empty(spec.image_size, spec.in_channels)
    if memory_path.exists():
        memory = _load_memory(memory_path, spec, samples)
    states = {
        name: torch.load(directory / f"{name}.pt", map_location="cpu", weights_only=True)
        for name in strategies.NAMES
        if (directory / f"{name}.pt").exists()
    }
    return Checkpoint(model=model.to(device), spec=spec, memory=memory, states=states)


def _load_memory(path: Path, spec: ModelSpec, samples: SampleLookup | None) -> ReplayMemory | None:
    with np.load(path, allow_pickle=False) as npz:
        files = set(npz.files)
        seen = (
            dict(zip(npz["seen_classes"].tolist(), npz["seen_counts"].tolist(), strict=True))
            if "seen_classes" in files
            else {}
        )
        labels, stored = npz["labels"], npz["images"]
        if "origin_which" not in files:  # saved before references existed: every sample's pixels
            return ReplayMemory(images=stored, labels=labels, seen=seen)
        batches = zip(npz["origin_ids"].tolist(), npz["origin_contents"].tolist(), strict=True)
        origins = Origins(tuple(batches), npz["origin_which"], npz["origin_row"])
    if not origins.batches:  # the table names just the batches some sample is from: none here
        return ReplayMemory(images=stored, labels=labels, seen=seen, origins=origins)
    if samples is None:
        return None
    images = np.empty((len(labels), spec.image_size, spec.image_size, spec.in_channels), dtype=np.uint8)
    images[origins.which == NOWHERE] = stored
    for index, (batch_id, content) in enumerate(origins.batches):
        mine = origins.which == index
        split = samples(batch_id, content)
        rows = origins.row[mine]
        if len(rows) and int(rows.max()) >= len(split):
            raise InputError(
                f"{path}: the replay memory names row {int(rows.max())} of batch {batch_id}, whose "
                f"training split has {len(split)} samples: not the batch it was saved from"
            )
        images[mine] = split[rows]
    return ReplayMemory(images=images, labels=labels, seen=seen, origins=origins)
