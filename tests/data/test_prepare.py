"""The prepare stage names the batches a cycle trains and evaluates on; the samples stay in data/."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from ratchet.config import Params
from ratchet.data.catalog import load_split
from ratchet.data.ingest import ingest_batch
from ratchet.errors import InputError
from ratchet.stages import prepare
from ratchet.stages.inputs import Cycle, content_hash
from ratchet.stages.sets import SETS, PreparedSets, SetStore

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


def test_prepared_sets_name_each_batch_by_content_and_hold_no_samples(
    tmp_path: Path, two_batches: tuple[Path, str, str]
) -> None:
    # given a cycle learning b2 on top of a parent that learned b1
    data, b1, b2 = two_batches
    Cycle("c1", new_batches=(b2,), old_batches=(b1,), parent_version=None, strategy="joint").save(
        tmp_path / "cycle.json"
    )
    out = prepare.run(tmp_path / "cycle.json", data, tmp_path / "parent", tmp_path / "prepared", params())
    # then old and new held-out sets name their batches, and joint trains on both, in order
    sets = PreparedSets.load(out / SETS)
    assert [r.batch_id for r in sets.old] == [b1] and [r.batch_id for r in sets.new] == [b2]
    assert [r.batch_id for r in sets.train] == [b1, b2]
    # and the output holds no samples: data/ has them, versioned already
    assert sorted(p.name for p in out.iterdir()) == [prepare.CYCLE, SETS]
    # and the samples read through the sets are the ones data/ holds
    store = SetStore(data, tmp_path / "cache")
    for ref in sets.train:
        for split in ("train", "held_out"):
            got = store.samples(ref, split)
            want = load_split(data, [ref.batch_id], split)
            assert got.labels.tolist() == want.labels.tolist()
            assert np.array_equal(got.images, want.images)
    assert len(store.decoded) == 4
    # and read again, from the cache, they are the same without decoding data/
    again = SetStore(data, tmp_path / "cache")
    assert np.array_equal(
        again.samples(sets.old[0], "held_out").images, store.samples(sets.old[0], "held_out").images
    )
    assert again.decoded == []


def test_a_batch_changed_since_prepare_is_refused(tmp_path: Path, two_batches: tuple[Path, str, str]) -> None:
    data, b1, _ = two_batches
    Cycle("c1", new_batches=(b1,), old_batches=(), parent_version=None, strategy="replay").save(
        tmp_path / "cycle.json"
    )
    out = prepare.run(tmp_path / "cycle.json", data, tmp_path / "parent", tmp_path / "prepared", params())
    (ref,) = PreparedSets.load(out / SETS).new
    labels = data / "batches" / b1 / "labels.npy"
    np.save(labels, np.load(labels)[::-1].copy())
    with pytest.raises(InputError, match=f"batch {b1} .* not the .* prepare stage recorded"):
        SetStore(data, None).samples(ref, "held_out")


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
