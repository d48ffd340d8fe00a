"""Held-out predictions and metrics for champion and candidate. Pure PyTorch/numpy: no I/O, no tracking.

Each model predicts each held-out set once; the gate's per-sample view (`HeldOut`) and the
accuracies in metrics.json are both derived from those predictions.
"""

from __future__ import annotations

import numpy as np
import torch

from ratchet.gate import HeldOut
from ratchet.metrics import Confusion, ModelMetrics, SplitMetrics
from ratchet.train.checkpoint import Checkpoint
from ratchet.train.model import label_indices, preprocess

# images per forward pass when scoring: on a 2-core CPU, 256 scores 28x28 images 1.5x faster than
# 2048 (the activations of a smaller pass stay in cache), with the same scores
BATCH_SIZE = 256


@torch.no_grad()
def logits(checkpoint: Checkpoint, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """float32 (N, C) scores over checkpoint.spec.classes for uint8 (N,H,W,C) images."""
    model = checkpoint.model.eval()
    device = next(model.parameters()).device
    out = [np.zeros((0, checkpoint.spec.num_classes), dtype=np.float32)]
    for start in range(0, len(images), batch_size):
        xb = torch.from_numpy(np.ascontiguousarray(images[start : start + batch_size])).to(device)
        out.append(model(preprocess(xb)).float().cpu().numpy())
    return np.concatenate(out)


def predict(checkpoint: Checkpoint, images: np.ndarray, batch_size: int = BATCH_SIZE) -> np.ndarray:
    """Predicted class indices into checkpoint.spec.classes for uint8 (N,H,W,C) images."""
    indices: np.ndarray = logits(checkpoint, images, batch_size).argmax(1)
    return indices


def argmax_among(scores: np.ndarray, classes: tuple[str, ...], allowed: tuple[str, ...]) -> np.ndarray:
    """The best-scoring class name of `allowed` for each row ("" everywhere when none is allowed)."""
    columns = [i for i, name in enumerate(classes) if name in allowed]
    if not columns:
        return np.full(len(scores), "", dtype=np.str_)
    names = np.asarray(classes, dtype=np.str_)[columns]
    return names[scores[:, columns].argmax(1)] if len(scores) else np.zeros((0,), dtype=np.str_)


def held_out(
    candidate: Checkpoint, champion: Checkpoint | None, images: np.ndarray, labels: np.ndarray
) -> HeldOut:
    """Both models on one held-out set, sample by sample, as the gate reads it."""
    return held_out_of(
        candidate.spec.classes,
        champion.spec.classes if champion is not None else None,
        logits(candidate, images),
        logits(champion, images) if champion is not None else None,
        labels,
    )


def held_out_of(
    candidate_classes: tuple[str, ...],
    champion_classes: tuple[str, ...] | None,
    candidate_scores: np.ndarray,
    champion_scores: np.ndarray | None,
    labels: np.ndarray,
) -> HeldOut:
    """`held_out` from the models' scores (`logits`), however they were obtained; no champion: None."""
    known = champion_classes or ()
    new_classes = tuple(c for c in candidate_classes if c not in known)
    champ = (
        argmax_among(champion_scores, known, known)
        if champion_scores is not None
        else np.full(len(labels), "", dtype=np.str_)
    )
    return HeldOut(
        labels=labels.astype(np.str_),
        champion=champ,
        candidate=argmax_among(candidate_scores, candidate_classes, candidate_classes),
        candidate_known=argmax_among(candidate_scores, candidate_classes, known),
        candidate_among_new=argmax_among(candidate_scores, candidate_classes, new_classes),
    )


def accuracy_of(labels: np.ndarray, predicted: np.ndarray) -> SplitMetrics:
    """Accuracy against class names, overall and per true class."""
    names = labels.astype(np.str_)
    hits = predicted == names
    per_class = {str(name): float(hits[names == name].mean()) for name in np.unique(names)}
    n, correct = int(len(names)), int(hits.sum())
    return SplitMetrics(accuracy=correct / n if n else 0.0, n=n, correct=correct, per_class=per_class)


def split_metrics(checkpoint: Checkpoint, images: np.ndarray, labels: np.ndarray) -> SplitMetrics:
    """One model's accuracy on one set; a class the model doesn't know always counts as a miss."""
    truth = label_indices(labels.astype(str), checkpoint.spec.classes)
    hits = predict(checkpoint, images) == truth
    names = labels.astype(np.str_)
    return accuracy_of(names, np.where(hits, names, ""))


Labelled = tuple[np.ndarray, np.ndarray]  # (true class names, predicted class names)


def per_batch_accuracy(labels: np.ndarray, predicted: np.ndarray, batches: np.ndarray) -> dict[str, float]:
    """Accuracy on each batch's samples, batch id -> accuracy, in order of first appearance."""
    hits = predicted == labels.astype(np.str_)
    ids = batches.astype(np.str_)
    order = dict.fromkeys(ids.tolist())
    return {str(batch): float(hits[ids == batch].mean()) for batch in order}


def model_metrics(old: Labelled, new: Labelled, batches: np.ndarray | None = None) -> ModelMetrics:
    """Old/new/all accuracy of one model from its predictions; no old samples gives `old=None`.

    `batches` names the batch of each sample, old samples first (as `all` orders them); without it
    there is no accuracy per batch.
    """
    every = (np.concatenate([old[0], new[0]]), np.concatenate([old[1], new[1]]))
    return ModelMetrics(
        old=accuracy_of(*old) if len(old[0]) else None,
        new=accuracy_of(*new),
        all=accuracy_of(*every),
        per_batch=per_batch_accuracy(*every, batches) if batches is not None else {},
    )


def confusion(labels: np.ndarray, predicted: np.ndarray, classes: tuple[str, ...]) -> Confusion:
    """Counts of each (true, predicted) pair over `classes`, then any true class `classes` lacks.

    A true class the model lacks still gets its row (all misses), so each row sums to that class's
    samples whenever every prediction is one of `classes`, as a model's own predictions are.
    """
    names = labels.astype(np.str_)
    order = classes + tuple(sorted(set(names.tolist()) - set(classes)))
    index = {name: i for i, name in enumerate(order)}
    counts = np.zeros((len(order), len(order)), dtype=np.int64)
    for truth, guess in zip(names.tolist(), predicted.astype(np.str_).tolist(), strict=True):
        if guess in index:
            counts[index[truth], index[guess]] += 1
    return Confusion(classes=order, counts=tuple(tuple(int(n) for n in row) for row in counts))
