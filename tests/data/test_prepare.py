"""The prepare stage's arrays: held-out samples keep the batch they came from."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from ratchet.config import Params
from ratchet.data.catalog import load_split
from ratchet.data.ingest import ingest_batch
from ratchet.errors import InputError
from ratchet.stages import prepare
from ratchet.stages._common import load_arrays, load_batch_ids
from ratchet.stages.inputs import Cycle

from .images import PARAMS, make_folder


def no_parent(version: str, dst: Path) -> Path:
    raise AssertionError("a cycle without a parent fetches none")


@pytest.fixture
def two_batches(tmp_path: Path) -> tuple[Path, str, str]:
    data = tmp_path / "data"
    first = ingest_batch(make_folder(tmp_path / "one", {"cat": [1, 2], "dog": [3, 4]}), data, PARAMS)
    second = ingest_batch(make_folder(tmp_path / "two", {"dog": [5, 6], "eel": [7, 8, 9, 10]}), data, PARAMS)
    assert first.batch_id and second.batch_id
    return data, first.batch_id, second.batch_id


def params(image_size: int = 8) -> Params:
    return dataclasses.replace(Params(), data=dataclasses.replace(PARAMS, image_size=image_size))


def test_held_out_arrays_name_each_samples_batch(tmp_path: Path, two_batches: tuple[Path, str, str]) -> None:
    # given a cycle learning b2 on top of a parent that learned b1
    data, b1, b2 = two_batches
    Cycle("c1", new_batches=(b2,), old_batches=(b1,), parent_version=None, strategy="joint").save(
        tmp_path / "cycle.json"
    )
    out = prepare.run(tmp_path / "cycle.json", data, tmp_path / "prepared", params(), no_parent)
    # then old and new held-out data carry their batch ids beside the same samples as before
    for name, batch in ((prepare.OLD, b1), (prepare.NEW, b2)):
        images, labels = load_arrays(out / name)
        assert labels.tolist() == load_split(data, [batch], "held_out").labels.tolist()
        ids = load_batch_ids(out / name)
        assert ids is not None and ids.tolist() == [batch] * len(labels)
    # and joint trains on both batches, each sample still named by its own batch
    ids = load_batch_ids(out / prepare.TRAIN)
    assert ids is not None and sorted(set(ids.tolist())) == [b1, b2]
    assert len(ids) == len(load_split(data, [b1, b2], "train"))


def test_a_cycle_without_old_batches_writes_empty_old_arrays(
    tmp_path: Path, two_batches: tuple[Path, str, str]
) -> None:
    data, b1, _ = two_batches
    Cycle("c1", new_batches=(b1,), old_batches=(), parent_version=None, strategy="replay").save(
        tmp_path / "cycle.json"
    )
    out = prepare.run(tmp_path / "cycle.json", data, tmp_path / "prepared", params(), no_parent)
    images, labels = load_arrays(out / prepare.OLD)
    assert images.shape == (0, 8, 8, 3) and len(labels) == 0
    ids = load_batch_ids(out / prepare.OLD)
    assert ids is not None and len(ids) == 0


def test_a_batch_of_another_image_size_is_refused_by_name(
    tmp_path: Path, two_batches: tuple[Path, str, str]
) -> None:
    data, b1, b2 = two_batches
    Cycle("c1", new_batches=(b2,), old_batches=(b1,), parent_version=None, strategy="replay").save(
        tmp_path / "cycle.json"
    )
    # the training batch (b2) is read first, and the error names it
    with pytest.raises(InputError, match=f"batch {b2} holds images of shape"):
        prepare.run(tmp_path / "cycle.json", data, tmp_path / "prepared", params(image_size=16), no_parent)
