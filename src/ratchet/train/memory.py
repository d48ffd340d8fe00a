"""Replay memory: a bounded, class-balanced store of earlier training samples."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class ReplayMemory:
    images: np.ndarray  # uint8 (N,H,W,C), same canonical shape as the workspace's batches
    labels: np.ndarray  # class names, unicode (N,)
    # training samples of each class offered to the memory so far (stored or not): what keeps a
    # class's memory an unbiased sample of everything it has seen. A class missing here counts
    # as having seen just what the memory holds (memories saved before the counts existed).
    seen: dict[str, int] = field(default_factory=dict)

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

    def seen_per_class(self) -> dict[str, int]:
        return {**self.per_class(), **self.seen}

    def updated(self, images: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> ReplayMemory:
        """Keep at most `per_class` samples of every class, a uniform sample of all it has seen.

        Reservoir sampling done a batch at a time: a class seen in n earlier samples and m new ones
        keeps about per_class * n / (n + m) of its stored samples and fills the rest from the new.
        A class seen again in a shifted domain so keeps its earlier domains in proportion, instead
        of being taken over by the latest batch; classes absent from the batch keep theirs.
        """
        if per_class == 0:
            return ReplayMemory.empty(images.shape[1], images.shape[3])
        old_labels = self.labels.astype(str)
        new_labels = labels.astype(str)
        seen_before = self.seen_per_class()
        rng = np.random.default_rng(seed)
        keep_old: list[np.ndarray] = [np.zeros((0,), dtype=np.int64)]
        keep_new: list[np.ndarray] = [np.zeros((0,), dtype=np.int64)]
        seen: dict[str, int] = {}
        for name in np.unique(np.concatenate([old_labels, new_labels])):
            old = np.flatnonzero(old_labels == name)
            new = np.flatnonzero(new_labels == name)
            n_before = seen_before.get(str(name), 0)
            seen[str(name)] = n_before + len(new)
            if len(old) + len(new) <= per_class:
                keep_old.append(old)
                keep_new.append(new)
                continue
            take_new = min(len(new), round(per_class * len(new) / (n_before + len(new))))
            take_old = min(len(old), per_class - take_new)
            take_new = per_class - take_old  # rounding's remainder goes to the new samples
            keep_old.append(np.sort(rng.choice(old, size=take_old, replace=False)))
            keep_new.append(np.sort(rng.choice(new, size=take_new, replace=False)))
        old_idx, new_idx = np.concatenate(keep_old), np.concatenate(keep_new)
        all_images = np.concatenate([self.images[old_idx], images[new_idx]])
        all_labels = np.concatenate([old_labels[old_idx], new_labels[new_idx]])
        order = np.argsort(all_labels, kind="stable")  # grouped by class: one stored order for a seed
        return ReplayMemory(images=all_images[order], labels=all_labels[order], seen=seen)
