"""A checkpoint directory round-trips weights, spec and memory, and saves byte-identically."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from ratchet.errors import InputError
from ratchet.train.checkpoint import (
    MEMORY_FILE,
    SPEC_FILE,
    WEIGHTS_FILE,
    Checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from ratchet.train.memory import NOWHERE, Origins, ReplayMemory
from ratchet.train.model import ModelSpec, SmallCNN, build_model, grow_head

SPEC = ModelSpec(arch="small_cnn", in_channels=1, image_size=8, width=8, dropout=0.0, classes=("b", "a"))


def model_with_state(spec: ModelSpec = SPEC) -> SmallCNN:
    """A model whose weights AND batch-norm statistics differ from a fresh build."""
    torch.manual_seed(1)
    model = build_model(spec)
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(16, 1, 8, 8) * 2 + 0.5)  # moves running_mean/var, num_batches_tracked
        model.head.bias.add_(0.3)
    return model.eval()


def memory() -> ReplayMemory:
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)
    labels = np.array(["a", "b", "a", "b", "a", "bb"])
    return ReplayMemory(images=images, labels=labels, seen={"a": 300, "b": 20, "bb": 1})


def images(n: int = 20) -> torch.Tensor:
    rng = np.random.default_rng(1)
    return torch.from_numpy(rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32))


def test_round_trip_gives_identical_predictions_spec_and_memory(tmp_path: Path) -> None:
    # given a model with non-default weights and batch-norm statistics, a spec and a memory
    model, mem = model_with_state(), memory()
    # when saved and loaded back
    save_checkpoint(tmp_path / "ck", Checkpoint(model, SPEC, mem))
    ck = load_checkpoint(tmp_path / "ck")
    # then everything comes back identical
    assert ck.spec == SPEC
    assert np.array_equal(ck.memory.images, mem.images) and ck.memory.images.dtype == np.uint8
    assert ck.memory.labels.tolist() == mem.labels.tolist()
    assert ck.memory.seen == {"a": 300, "b": 20, "bb": 1}
    for k, v in model.state_dict().items():
        assert torch.equal(ck.model.state_dict()[k], v), k
    x = images()
    with torch.no_grad():
        assert torch.equal(ck.model.eval()(x), model(x))


def test_a_grown_head_round_trips(tmp_path: Path) -> None:
    model = model_with_state()
    spec = grow_head(model, SPEC, ("c",))
    save_checkpoint(tmp_path, Checkpoint(model, spec, memory()))
    ck = load_checkpoint(tmp_path)
    assert ck.spec.classes == ("b", "a", "c")
    assert ck.model.head.out_features == 3
    assert torch.equal(ck.model.head.weight, model.head.weight)


def test_saving_the_same_model_twice_gives_byte_identical_files(tmp_path: Path) -> None:
    # given one model saved into two different directories (different temp file names)
    model, mem = model_with_state(), memory()
    save_checkpoint(tmp_path / "one", Checkpoint(model, SPEC, mem))
    save_checkpoint(tmp_path / "two" / "nested", Checkpoint(model, SPEC, mem))

    # then every file hashes the same (dvc.lock compares hashes of the candidate directory)
    def digest(d: Path, name: str) -> str:
        return hashlib.sha256((d / name).read_bytes()).hexdigest()

    for name in (WEIGHTS_FILE, SPEC_FILE, MEMORY_FILE):
        assert digest(tmp_path / "one", name) == digest(tmp_path / "two" / "nested", name), name


def test_saving_a_loaded_checkpoint_reproduces_the_weights_bytes(tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "a", Checkpoint(model_with_state(), SPEC, memory()))
    ck = load_checkpoint(tmp_path / "a")
    save_checkpoint(tmp_path / "b", Checkpoint(ck.model, ck.spec, ck.memory))
    assert (tmp_path / "a" / WEIGHTS_FILE).read_bytes() == (tmp_path / "b" / WEIGHTS_FILE).read_bytes()


def test_weights_file_is_a_plain_state_dict_loadable_weights_only(tmp_path: Path) -> None:
    model = model_with_state()
    save_checkpoint(tmp_path, Checkpoint(model, SPEC, memory()))
    state = torch.load(tmp_path / WEIGHTS_FILE, map_location="cpu", weights_only=True)
    assert isinstance(state, dict)
    assert set(state) == set(model.state_dict())
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in state.values())


def test_saving_leaves_no_temp_files_and_overwrites(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, Checkpoint(model_with_state(), SPEC, memory()))
    save_checkpoint(
        tmp_path, Checkpoint(model_with_state(), SPEC.with_classes(("b", "a")), ReplayMemory.empty(8, 1))
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([WEIGHTS_FILE, SPEC_FILE, MEMORY_FILE])
    assert len(load_checkpoint(tmp_path).memory) == 0


def test_a_checkpoint_without_memory_loads_an_empty_memory(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, Checkpoint(model_with_state(), SPEC, memory()))
    (tmp_path / MEMORY_FILE).unlink()
    ck = load_checkpoint(tmp_path)
    assert len(ck.memory) == 0
    assert ck.memory.images.shape == (0, SPEC.image_size, SPEC.image_size, SPEC.in_channels)


def test_weights_that_do_not_match_the_spec_fail_to_load(tmp_path: Path) -> None:
    # given a spec.json that claims one more class than the weights have
    save_checkpoint(tmp_path, Checkpoint(model_with_state(), SPEC, memory()))
    (tmp_path / SPEC_FILE).write_text((tmp_path / SPEC_FILE).read_text().replace('"a"', '"a",\n  "z"'))
    with pytest.raises(RuntimeError, match="size mismatch"):
        load_checkpoint(tmp_path)


def test_a_memory_of_known_batches_saves_references_and_reads_them_back(tmp_path: Path) -> None:
    # given a memory whose first four samples came from rows of a batch, the rest from nowhere known
    rng = np.random.default_rng(2)
    batch = rng.integers(0, 256, (50, 8, 8, 1), dtype=np.uint8)
    rows = np.array([7, 3, 41, 0], dtype=np.int32)
    extra = rng.integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    origins = Origins(
        (("b001", "c0ffee"),),
        np.array([0, 0, 0, 0, NOWHERE, NOWHERE], dtype=np.int32),
        np.concatenate([rows, np.zeros(2, np.int32)]),
    )
    labels = np.array(["a", "a", "b", "b", "a", "bb"])
    mem = ReplayMemory(np.concatenate([batch[rows], extra]), labels, {"a": 9}, origins)
    save_checkpoint(tmp_path, Checkpoint(model_with_state(), SPEC, mem))
    # then only the two samples of no known batch are stored as pixels
    with np.load(tmp_path / MEMORY_FILE) as npz:
        assert np.array_equal(npz["images"], extra)
    # and a lookup of the batch gives the whole memory back, in order
    asked: list[tuple[str, str]] = []

    def lookup(batch_id: str, content: str) -> np.ndarray:
        asked.append((batch_id, content))
        return batch

    ck = load_checkpoint(tmp_path, samples=lookup)
    assert ck.memory is not None and asked == [("b001", "c0ffee")]
    assert np.array_equal(ck.memory.images, mem.images) and ck.memory.labels.tolist() == labels.tolist()
    assert ck.memory.seen == {"a": 9} and ck.memory.known_origins().row.tolist() == origins.row.tolist()
    # without a lookup the checkpoint loads without its memory (evaluation and serving)
    assert load_checkpoint(tmp_path).memory is None
    # and a batch shorter than the rows it names is refused in one line
    with pytest.raises(InputError, match="names row 41 of batch b001"):
        load_checkpoint(tmp_path, samples=lambda batch_id, content: batch[:10])


def test_a_memory_stored_as_pixels_loads_without_a_lookup(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, Checkpoint(model_with_state(), SPEC, memory()))
    ck = load_checkpoint(tmp_path)
    assert ck.memory is not None and np.array_equal(ck.memory.images, memory().images)
