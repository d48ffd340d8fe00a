"""Replay memory: a bounded, class-balanced store of earlier training samples."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ReplayMemory:
    images: np.ndarray  # uint8 (N,H,W,C), same canonical shape as the workspace's batches
    labels: np.ndarray  # class names, unicode (N,)

    @staticmethod
    def empty(image_size: int, channels: int) -> ReplayMemory:
        return ReplayMemory(
            images=np.zeros((0, image_size, image_size, channels), dtype=np.uint8),
            labels=np.zeros((0,), dtype="<U1"),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def per_class(self) -> dict[str, int]:
        names, counts = np.unique(self.labels, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}

    def updated(self, images: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> ReplayMemory:
        """Keep at most `per_class` samples of every class from the memory plus the new samples.

        Each class is sampled uniformly from old memory and new samples together, so a class seen
        again in a shifted domain gets fresh examples while classes absent from the batch keep theirs.
        """
        if per_class == 0:
            return ReplayMemory.empty(images.shape[1], images.shape[3])
        all_images = np.concatenate([self.images, images]) if len(self) else images
        all_labels = np.concatenate([self.labels.astype(str), labels.astype(str)])
        rng = np.random.default_rng(seed)
        keep: list[np.ndarray] = []
        for name in np.unique(all_labels):
            idx = np.flatnonzero(all_labels == name)
            if len(idx) > per_class:
                idx = np.sort(rng.choice(idx, size=per_class, replace=False))
            keep.append(idx)
        chosen = np.concatenate(keep) if keep else np.zeros((0,), dtype=np.int64)
        return ReplayMemory(images=all_images[chosen], labels=all_labels[chosen])
