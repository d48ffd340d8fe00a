"""Fashion-MNIST reading (IDX) and the two continual streams, on small synthetic files."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from ratchet.data.fashion import CLASSES, Split, class_incremental, domain_incremental, load_fashion, shift


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


@pytest.fixture()
def fake_fashion(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 200), ("t10k", 100)):
        write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return tmp_path


def test_idx_files_load_as_images_and_class_names(fake_fashion: Path) -> None:
    train, test = load_fashion(fake_fashion)
    assert train.images.shape == (200, 28, 28, 1) and train.images.dtype == np.uint8
    assert test.labels[:3].tolist() == list(CLASSES[:3])


def test_missing_files_name_the_debian_package(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion(tmp_path)


def test_class_incremental_gives_two_new_classes_per_step(fake_fashion: Path) -> None:
    steps = class_incremental(*load_fashion(fake_fashion))
    assert len(steps) == 5
    seen: set[str] = set()
    for step in steps:
        classes = set(step.train.labels.tolist())
        assert len(classes) == 2 and not classes & seen
        assert set(step.held_out.labels.tolist()) == classes
        seen |= classes


def test_domain_incremental_shifts_grow_and_slices_are_disjoint(fake_fashion: Path) -> None:
    train, test = load_fashion(fake_fashion)
    steps = domain_incremental(train, test)
    assert len(steps) == 5 and sum(len(s.train.labels) for s in steps) == 200
    assert np.array_equal(shift(train.images[:4], 0), train.images[:4])
    # lower contrast each level: the spread of pixel values shrinks
    spreads = [float(shift(train.images, level).std()) for level in range(5)]
    assert spreads == sorted(spreads, reverse=True)


def test_fraction_subsamples_each_step() -> None:
    split = Split(np.zeros((1000, 28, 28, 1), np.uint8), np.array(CLASSES)[np.arange(1000) % 10])
    steps = class_incremental(split, split, fraction=0.1)
    assert all(len(s.train.labels) == 20 for s in steps)
