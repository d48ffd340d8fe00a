"""Tiny synthetic classes for training tests: four 8x8 patterns a small CNN learns in a few epochs."""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from ratchet.config import TrainParams
from ratchet.train.model import ModelSpec

SPEC = ModelSpec(arch="small_cnn", in_channels=1, image_size=8, width=8, dropout=0.0, classes=())
# the training defaults, made small and fast for 8x8 patterns on a CPU
PARAMS = dataclasses.replace(
    TrainParams(),
    num_epochs=5,
    batch_size=32,
    lr=0.01,
    finetune_lr=0.01,
    weight_decay=0.0,
    device="cpu",
    replay_memory_per_class=20,
    ewc_fisher_samples=64,
    transfer_head_epochs=1,
)


def params(**changes: object) -> TrainParams:
    return dataclasses.replace(PARAMS, **changes)  # type: ignore[arg-type]


def pattern(name: str) -> np.ndarray:
    """Each class is a distinct bright pattern on 8x8: rows, columns, checkerboard, solid."""
    p = np.zeros((8, 8))
    if name == "A":
        p[::2, :] = 1
    elif name == "B":
        p[:, ::2] = 1
    elif name == "C":
        p[np.add.outer(np.arange(8), np.arange(8)) % 2 == 0] = 1
    elif name == "D":
        p[:] = 1
    else:
        raise ValueError(name)
    return p


def make(classes: str, n_per_class: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N,8,8,1) noisy images of the patterns, shuffled, with unicode class names."""
    rng = np.random.default_rng(seed)
    labels = np.array([c for c in classes for _ in range(n_per_class)])
    base = np.stack([pattern(c) for c in labels]) * 160 + 40
    images = np.clip(base + rng.normal(0, 30, base.shape), 0, 255).astype(np.uint8)[..., None]
    order = rng.permutation(len(labels))
    return images[order], labels[order]


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
