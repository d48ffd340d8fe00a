"""Replay memory: a bounded, class-balanced store of earlier training samples.

Each stored sample may also know where it came from: a row of one batch's training split
(`Origins`). A checkpoint saves such a sample as that reference, not as its pixels: the batch is
already versioned in data/, and a memory saved whole would store most of its images again every
cycle (the DVC cache and the registry would grow by the whole memory per cycle, not by what is new).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NOWHERE = -1  # `Origins.which` for a sample whose batch is not known (stored by its pixels)


@dataclass(frozen=True, eq=False)
class Origins:
    """Where each of N samples came from: row `row[i]` of the training split of batch
    `batches[which[i]]`, named by (batch id, content hash); `which[i]` NOWHERE when not known."""

    batches: tuple[tuple[str, str], ...]
    which: np.ndarray  # int32 (N,)
    row: np.ndarray  # int32 (N,)

    @staticmethod
    def unknown(n: int) -> Origins:
        return Origins((), np.full(n, NOWHERE, dtype=np.int32), np.zeros(n, dtype=np.int32))

    @staticmethod
    def of_batches(batches: list[tuple[tuple[str, str], int]]) -> Origins:
        """The origins of batches' training splits laid end to end: ((id, content), sample count)."""
        sizes = [n for _, n in batches]
        return Origins(
            batches=tuple(b for b, _ in batches),
            which=np.repeat(np.arange(len(batches), dtype=np.int32), sizes),
            row=np.concatenate([np.zeros(0, np.int32), *(np.arange(n, dtype=np.int32) for n in sizes)]),
        )

    def __len__(self) -> int:
        return int(self.which.shape[0])

    def take(self, idx: np.ndarray) -> Origins:
        return Origins(self.batches, self.which[idx], self.row[idx])

    def joined(self, other: Origins) -> Origins:
        """These samples then `other`'s, over one table holding just the batches still named."""
        table = list(dict.fromkeys(self.batches + other.batches))
        position = {b: i for i, b in enumerate(table)}

        def remap(o: Origins) -> np.ndarray:
            lookup = np.array([position[b] for b in o.batches] + [NOWHERE], dtype=np.int32)
            which: np.ndarray = lookup[o.which]  # NOWHERE (-1) reads the last entry: NOWHERE again
            return which

        which = np.concatenate([remap(self), remap(other)])
        row = np.concatenate([self.row, other.row])
        used = sorted({int(w) for w in which if w != NOWHERE})
        compact = np.full(len(table) + 1, NOWHERE, dtype=np.int32)
        compact[used] = np.arange(len(used), dtype=np.int32)
        return Origins(tuple(table[i] for i in used), compact[which], row)


@dataclass(frozen=True)
class ReplayMemory:
    images: np.ndarray  # uint8 (N,H,W,C), same canonical shape as the workspace's batches
    labels: np.ndarray  # class names, unicode (N,)
    # training samples of each class offered to the memory so far (stored or not): what keeps a
    # class's memory an unbiased sample of everything it has seen. A class missing here counts
    # as having seen just what the memory holds (memories saved before the counts existed).
    seen: dict[str, int] = field(default_factory=dict)
    origins: Origins | None = None  # where each sample came from; None: nowhere known

    @staticmethod
    def empty(image_size: int, channels: int) -> ReplayMemory:
        return ReplayMemory(
            images=np.zeros((0, image_size, image_size, channels), dtype=np.uint8),
            labels=np.zeros((0,), dtype="<U1"),
        )

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def known_origins(self) -> Origins:
        return self.origins if self.origins is not None else Origins.unknown(len(self))

    def per_class(self) -> dict[str, int]:
        names, counts = np.unique(self.labels, return_counts=True)
        return {str(n): int(c) for n, c in zip(names, counts, strict=True)}

    def seen_per_class(self) -> dict[str, int]:
        return {**self.per_class(), **self.seen}

    def updated(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        per_class: int,
        seed: int,
        origins: Origins | None = None,
    ) -> ReplayMemory:
        """Keep at most `per_class` samples of every class, a uniform sample of all it has seen.
        `origins`: where the new samples came from, kept with those stored (None: not known).

        Reservoir sampling done a batch at a time: a class seen in n earlier samples and m new ones
        keeps about per_class * n / (n + m) of its stored samples and fills the rest from the new.
        A class seen again in a shifted domain so keeps its earlier domains in proportion, instead
        of being taken over by the latest batch; classes absent from the batch keep theirs.
        """
        if per_class == 0:
            return ReplayMemory.empty(images.shape[1], images.shape[3])
        new_origins = origins if origins is not None else Origins.unknown(len(labels))
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
        kept = self.known_origins().take(old_idx).joined(new_origins.take(new_idx)).take(order)
        return ReplayMemory(images=all_images[order], labels=all_labels[order], seen=seen, origins=kept)
