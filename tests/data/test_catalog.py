from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from ratchet.data.catalog import known_hashes, list_batches, load_split, read_manifest
from ratchet.data.ingest import ingest_batch
from ratchet.errors import InputError

from .images import PARAMS, make_folder


@pytest.fixture
def workspace(tmp_path: Path) -> tuple[Path, str, str]:
    data = tmp_path / "data"
    first = ingest_batch(make_folder(tmp_path / "one", {"cat": [1, 2], "dog": [3, 4]}), data, PARAMS)
    second = ingest_batch(make_folder(tmp_path / "two", {"dog": [5, 6], "eel": [7, 8, 9, 10]}), data, PARAMS)
    assert first.batch_id and second.batch_id
    return data, first.batch_id, second.batch_id


def test_list_batches(workspace: tuple[Path, str, str]) -> None:
    data, b1, b2 = workspace
    (data / "batches" / ".incoming-b003-deadbeef").mkdir()  # leftover of a killed ingest
    batches = list_batches(data)
    assert [(b.batch_id, b.seq) for b in batches] == [(b1, 1), (b2, 2)]
    assert batches[0].classes == ("cat", "dog") and batches[1].classes == ("dog", "eel")
    assert (batches[1].num_train, batches[1].num_held_out) == (3, 3)
    assert batches[0].path == data / "batches" / b1
    assert read_manifest(batches[0].path)["batch_id"] == b1


def test_missing_batches_dir_is_empty(tmp_path: Path) -> None:
    assert list_batches(tmp_path / "nowhere") == []
    assert known_hashes(tmp_path / "nowhere") == {}


def test_load_split_concatenates_in_given_order(workspace: tuple[Path, str, str]) -> None:
    data, b1, b2 = workspace
    train = load_split(data, [b2, b1], "train")
    held = load_split(data, [b1, b2], "held_out")
    assert len(train) == 5 and len(held) == 5
    assert train.images.shape == (5, 8, 8, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype.kind == "U"
    assert train.labels.tolist() == ["dog", "eel", "eel", "cat", "dog"]
    assert held.labels.tolist() == ["cat", "dog", "dog", "eel", "eel"]
    # Every ingested picture comes back exactly once across the two splits.
    stored = np.concatenate([np.load(data / "batches" / b / "images.npy") for b in (b1, b2)])
    both = np.concatenate([train.images, held.images])
    assert sorted(x.tobytes() for x in both) == sorted(x.tobytes() for x in stored)


def test_load_split_edge_cases(workspace: tuple[Path, str, str]) -> None:
    data, b1, _ = workspace
    empty = load_split(data, [], "train")
    assert empty.images.shape == (0, 0, 0, 0) and len(empty) == 0
    with pytest.raises(InputError, match="unknown batch id 'b099-nope'"):
        load_split(data, ["b099-nope"], "train")
    with pytest.raises(InputError, match="unknown batch id '../one'"):
        load_split(data, ["../one"], "train")
    with pytest.raises(ValueError, match="split"):
        load_split(data, [b1], "test")  # type: ignore[arg-type]


def test_known_hashes(workspace: tuple[Path, str, str]) -> None:
    data, b1, b2 = workspace
    hashes = known_hashes(data)
    assert len(hashes) == 10
    assert sorted(set(hashes.values())) == [b1, b2]
    manifest = read_manifest(data / "batches" / b1)
    assert all(hashes[s["sha256"]] == b1 for s in manifest["samples"])


def test_corrupted_batch_is_reported(workspace: tuple[Path, str, str]) -> None:
    data, b1, _ = workspace
    np.save(data / "batches" / b1 / "labels.npy", np.zeros(3, dtype=np.int64))
    with pytest.raises(InputError, match=f"corrupted workspace: batch {b1} has 4 images and 3 labels"):
        load_split(data, [b1], "train")
    path = data / "batches" / b1 / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["samples"]
    path.write_text(json.dumps(manifest))
    with pytest.raises(InputError, match="lacks key"):
        list_batches(data)
