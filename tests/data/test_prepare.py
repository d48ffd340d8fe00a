"""The prepare stage's arrays: held-out samples keep the batch they came from."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from ratchet.config import Params
from ratchet.data.catalog import load_split
from ratchet.data.ingest import ingest_batch
from ratchet.errors import InputError
from ratchet.stages import prepare
from ratchet.stages._common import load_arrays, load_batch_ids
from ratchet.stages.inputs import Cycle, content_hash

from .images import PARAMS, make_folder


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
    out = prepare.run(tmp_path / "cycle.json", data, tmp_path / "parent", tmp_path / "prepared", params())
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
    out = prepare.run(tmp_path / "cycle.json", data, tmp_path / "parent", tmp_path / "prepared", params())
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
        prepare.run(
            tmp_path / "cycle.json", data, tmp_path / "parent", tmp_path / "prepared", params(image_size=16)
        )


def test_the_parent_is_read_only_when_its_hash_is_the_one_cycle_json_names(
    tmp_path: Path, two_batches: tuple[Path, str, str]
) -> None:
    # given a parent checkpoint directory at the path dvc.yaml names, and a cycle naming its hash
    data, b1, b2 = two_batches
    parent = tmp_path / "parent"
    parent.mkdir()
    (parent / "spec.json").write_text('{"arch": "tiny"}\n')
    (parent / "weights.pt").write_bytes(b"weights")
    cycle = Cycle("c2", (b2,), (b1,), parent_version="1", strategy="replay", parent_hash=content_hash(parent))
    cycle.save(tmp_path / "cycle.json")
    out = tmp_path / "prepared"

    # then the prepared data carries that parent, byte for byte
    prepare.run(tmp_path / "cycle.json", data, parent, out, params())
    assert content_hash(out / prepare.PARENT) == cycle.parent_hash

    # when the parent's content changes, or it is missing, or cycle.json names no hash
    shutil.rmtree(out)
    (parent / "weights.pt").write_bytes(b"other weights")
    refusals = [(cycle, parent, "not the .* cycle.json names; not training from it")]
    refusals.append((cycle, tmp_path / "nowhere", "no checkpoint at .*dvc checkout"))
    refusals.append((dataclasses.replace(cycle, parent_hash=None), parent, "records no parent_hash"))
    for planned, where, message in refusals:
        planned.save(tmp_path / "cycle.json")
        # then prepare refuses with one line and writes nothing
        with pytest.raises(InputError, match=message) as err:
            prepare.run(tmp_path / "cycle.json", data, where, out, params())
        assert "\n" not in str(err.value)
        assert not out.exists() and not (tmp_path / ".prepared.tmp").exists()


def test_an_old_cycle_json_reads_back_unchanged(tmp_path: Path) -> None:
    # as a bootstrap, or any cycle planned before the parent was tracked, wrote it
    keys = {
        "cycle_id": "c1",
        "new_batches": [],
        "old_batches": [],
        "parent_version": None,
        "strategy": "replay",
    }
    old = json.dumps(keys, indent=1) + "\n"
    (tmp_path / "cycle.json").write_text(old)
    cycle = Cycle.load(tmp_path / "cycle.json")
    assert cycle.parent_hash is None
    cycle.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == old
