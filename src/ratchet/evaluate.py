"""Held-out metrics for champion and candidate. Pure PyTorch/numpy: no I/O, no tracking."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ratchet.train.checkpoint import Checkpoint
from ratchet.train.model import label_indices, preprocess


@dataclass(frozen=True)
class SplitMetrics:
    accuracy: float
    n: int
    correct: int
    per_class: dict[str, float]  # accuracy per true class name


@dataclass(frozen=True)
class ModelMetrics:
    old: SplitMetrics | None  # None when there is no old data yet (the first cycle)
    new: SplitMetrics
    all: SplitMetrics

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@torch.no_grad()
def predict(checkpoint: Checkpoint, images: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """Predicted class indices into checkpoint.spec.classes for uint8 (N,H,W,C) images."""
    model = checkpoint.model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(images), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        out.append(model(preprocess(xb)).argmax(1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0,), dtype=np.int64)


def split_metrics(checkpoint: Checkpoint, images: np.ndarray, labels: np.ndarray) -> SplitMetrics:
    """Accuracy against class names; a class the model doesn't know always counts as a miss."""
    names = labels.astype(str)
    truth = label_indices(names, checkpoint.spec.classes)
    hits = predict(checkpoint, images) == truth
    per_class = {str(name): float(hits[names == name].mean()) for name in np.unique(names)}
    n = int(len(labels))
    correct = int(hits.sum())
    return SplitMetrics(accuracy=correct / n if n else 0.0, n=n, correct=correct, per_class=per_class)


def evaluate_model(
    checkpoint: Checkpoint,
    old: tuple[np.ndarray, np.ndarray] | None,
    new: tuple[np.ndarray, np.ndarray],
) -> ModelMetrics:
    """Old/new/all held-out accuracy of one model; `old` is None or empty before any history."""
    old_m = split_metrics(checkpoint, *old) if old is not None and len(old[1]) else None
    new_m = split_metrics(checkpoint, *new)
    if old_m is None:
        all_m = new_m
    else:
        assert old is not None
        all_m = split_metrics(checkpoint, np.concatenate([old[0], new[0]]), np.concatenate([old[1], new[1]]))
    return ModelMetrics(old=old_m, new=new_m, all=all_m)
