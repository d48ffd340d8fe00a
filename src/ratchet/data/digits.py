"""The embedded default data: scikit-learn's digits (1,797 8x8 images) cut into a demo stream.

No download: `load_digits` ships inside scikit-learn. The stream is deterministic, so the same
batches (and the same DVC hashes) come out on every machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class StreamBatch:
    name: str
    description: str
    images: np.ndarray  # uint8 (N, 8, 8)
    labels: np.ndarray  # int64 (N,), digit = class name

    def save_npz(self, directory: Path) -> Path:
        path = directory / f"{self.name}.npz"
        np.savez(path, images=self.images, labels=self.labels)
        return path


def digits_stream(seed: int = 0) -> list[StreamBatch]:
    """Five batches: two class-incremental halves, more of everything, scrambled labels, a clean rest.

    The scrambled batch is the one a careless pipeline would ship: its labels are shuffled, so a
    candidate trained on it forgets what the champion knew, and the gate must reject it.
    """
    from sklearn.datasets import load_digits

    digits = load_digits()
    # digits are 0..16 intensities: stretch to the uint8 range real images arrive in
    images = np.clip(digits.images * 16, 0, 255).astype(np.uint8)
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    by_class = {c: rng.permutation(np.flatnonzero(labels == c)) for c in range(10)}

    def take(classes: range, start: float, stop: float) -> np.ndarray:
        parts = []
        for c in classes:
            idx = by_class[c]
            parts.append(idx[int(start * len(idx)) : int(stop * len(idx))])
        return rng.permutation(np.concatenate(parts))

    def batch(name: str, description: str, idx: np.ndarray, scramble: bool = False) -> StreamBatch:
        y = labels[idx].copy()
        if scramble:
            y = rng.permutation(y)
        return StreamBatch(name, description, images[idx], y)

    return [
        batch("digits-0-4", "digits 0-4 (first classes)", take(range(0, 5), 0.0, 0.5)),
        batch("digits-5-9", "digits 5-9 (new classes: the head grows)", take(range(5, 10), 0.0, 0.5)),
        batch("digits-more", "more of all ten digits", take(range(10), 0.5, 0.75)),
        batch("digits-scrambled", "all digits, labels scrambled", take(range(10), 0.75, 0.85), scramble=True),
        batch("digits-rest", "the rest of all ten digits", take(range(10), 0.85, 1.0)),
    ]
