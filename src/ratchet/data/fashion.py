"""Fashion-MNIST from local IDX files (Debian package `dataset-fashion-mnist`), and the two
continual-learning streams built from it: class-incremental and domain-incremental.

numpy only: the training core and the benchmarks run with torch alone on the GPU machine.
"""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("tshirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot")


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    # a writable copy: torch refuses to share read-only numpy memory
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims).copy()


@dataclass(frozen=True)
class Split:
    images: np.ndarray  # uint8 (N, 28, 28, 1)
    labels: np.ndarray  # class names (N,)

    def subset(self, idx: np.ndarray) -> Split:
        return Split(self.images[idx], self.labels[idx])


def load_fashion(directory: Path = DEFAULT_DIR) -> tuple[Split, Split]:
    """(train 60k, test 10k). Raises FileNotFoundError naming the Debian package when absent."""
    names = (
        "train-images-idx3-ubyte.gz",
        "train-labels-idx1-ubyte.gz",
        "t10k-images-idx3-ubyte.gz",
        "t10k-labels-idx1-ubyte.gz",
    )
    missing = [n for n in names if not (directory / n).exists()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {directory} (apt-get install dataset-fashion-mnist)"
        )
    arrays = [_read_idx(directory / n) for n in names]
    names_arr = np.array(CLASSES)
    return (
        Split(arrays[0][..., None], names_arr[arrays[1]]),
        Split(arrays[2][..., None], names_arr[arrays[3]]),
    )


@dataclass(frozen=True)
class StreamStep:
    name: str
    train: Split
    held_out: Split


def class_incremental(
    train: Split, test: Split, per_step: int = 2, fraction: float = 1.0, seed: int = 0
) -> list[StreamStep]:
    """Five steps of two new classes each (CLASSES order). `fraction` subsamples for quick CPU runs."""
    rng = np.random.default_rng(seed)
    steps = []
    for k in range(0, len(CLASSES), per_step):
        classes = CLASSES[k : k + per_step]
        tr = _pick(np.flatnonzero(np.isin(train.labels, classes)), fraction, rng)
        te = _pick(np.flatnonzero(np.isin(test.labels, classes)), fraction, rng)
        steps.append(StreamStep(f"classes {'+'.join(classes)}", train.subset(tr), test.subset(te)))
    return steps


def shift(images: np.ndarray, level: int) -> np.ndarray:
    """Domain shift `level` 0..4: rotate by 20 degrees per level and lower the contrast by 15% per level."""
    import torch
    from torchvision.transforms.functional import rotate

    if level == 0:
        return images
    x = torch.from_numpy(images).permute(0, 3, 1, 2)
    x = rotate(x, angle=20.0 * level)
    contrast = 1.0 - 0.15 * level
    y = (x.float() - 127.5) * contrast + 127.5
    out: np.ndarray = y.clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()
    return out


def domain_incremental(
    train: Split, test: Split, steps: int = 5, fraction: float = 1.0, seed: int = 0
) -> list[StreamStep]:
    """`steps` disjoint slices of all ten classes, slice k shifted by level k (rotation + contrast)."""
    rng = np.random.default_rng(seed)
    tr_parts = np.array_split(rng.permutation(len(train.labels)), steps)
    te_parts = np.array_split(rng.permutation(len(test.labels)), steps)
    out = []
    for k in range(steps):
        tr = train.subset(_pick(tr_parts[k], fraction, rng))
        te = test.subset(_pick(te_parts[k], fraction, rng))
        out.append(
            StreamStep(
                f"domain {k} (rotate {20 * k} deg, contrast {1 - 0.15 * k:.2f})",
                Split(shift(tr.images, k), tr.labels),
                Split(shift(te.images, k), te.labels),
            )
        )
    return out


def _pick(idx: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    if fraction >= 1.0:
        return np.sort(idx)
    return np.sort(rng.choice(idx, size=max(1, int(len(idx) * fraction)), replace=False))
