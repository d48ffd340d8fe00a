"""Data-parallel training (train.devices > 1): the train stage on two gloo processes on the CPU
learns what one process learns from the same data, seed and global batch, with every strategy's
state (replay memory, ewc's Fisher, lwf's teacher); a bad split or a failed rank is one line."""

from __future__ import annotations

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ratchet.config import Params, parse_params, render_params
from ratchet.data.ingest import ingest_batch
from ratchet.errors import InputError, RatchetError
from ratchet.evaluate import split_metrics
from ratchet.stages import prepare, train
from ratchet.stages.inputs import Cycle
from ratchet.stages.sets import SETS, PreparedSets, batch_ref
from ratchet.train import distributed
from ratchet.train.checkpoint import load_checkpoint

TOLERANCE_PT = 1.0  # final held-out accuracy, two processes against one


@dataclasses.dataclass(frozen=True)
class Digits:
    images: np.ndarray  # uint8 (N, 8, 8, 1)
    labels: np.ndarray  # class names


@pytest.fixture(scope="module")
def digits() -> tuple[Digits, Digits]:
    """scikit-learn's digits: 1,200 to train on, the other 597 held out."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images = np.clip(data.images * 16, 0, 255).astype(np.uint8)[..., None]
    labels = data.target.astype(str)
    order = np.random.default_rng(0).permutation(len(labels))
    return (
        Digits(images[order[:1200]], labels[order[:1200]]),
        Digits(images[order[1200:]], labels[order[1200:]]),
    )


def params(devices: int, batch_size: int = 32) -> Params:
    """Small and quick: one thread per process (two processes share a busy two-core machine)."""
    p = Params()
    return dataclasses.replace(
        p,
        model=dataclasses.replace(p.model, width=8),
        train=dataclasses.replace(
            p.train, devices=devices, device="cpu", threads=1, num_epochs=8, batch_size=batch_size
        ),
    )


def prepared(
    root: Path, data: Digits, strategy: str, parent: Path | None = None, data_dir: Path | None = None
) -> Path:
    """What the prepare stage leaves for train (cycle.json, sets.json naming the one batch `data`
    was ingested as, the parent's checkpoint), beside the data directory it names (`data_of`), or
    in `data_dir` (where the parent's batches are: its replay memory names their samples)."""
    out = root / "prepared"
    out.mkdir(parents=True)
    np.savez(root / "digits.npz", images=data.images, labels=data.labels)
    # nearly all of it to train on, as before the split: this test holds its own samples out
    split = dataclasses.replace(Params().data, held_out_fraction=0.05)
    data_dir = data_dir or data_of(out)
    batch = ingest_batch(root / "digits.npz", data_dir, split).batch_id
    assert batch is not None
    Cycle("c", (batch,), (), "1" if parent else None, strategy).save(out / prepare.CYCLE)
    ref = batch_ref(data_dir, batch)
    PreparedSets(train=(ref,), new=(ref,), old=()).save(out / SETS)
    if parent is not None:
        shutil.copytree(parent, out / prepare.PARENT)
    return out


def data_of(prep: Path) -> Path:
    return prep.parent / "data"


def accuracy_pt(candidate: Path, held_out: Digits) -> float:
    checkpoint = load_checkpoint(candidate / train.CHECKPOINT)
    return 100 * split_metrics(checkpoint, held_out.images, held_out.labels).accuracy


@pytest.mark.parametrize(("n", "size"), [(10, 3), (12, 4), (2, 3), (7, 2)])
def test_each_rank_takes_the_rows_distributed_sampler_gives_it(n: int, size: int) -> None:
    from torch.utils.data.distributed import DistributedSampler

    order = torch.randperm(n, generator=torch.Generator().manual_seed(n))
    shares = [distributed.shard(order, distributed.World(rank, size, rank)) for rank in range(size)]
    for rank, share in enumerate(shares):
        sampler = DistributedSampler(range(n), num_replicas=size, rank=rank, shuffle=False)
        assert share.tolist() == order[list(sampler)].tolist()
    assert {len(share) for share in shares} == {-(-n // size)}  # equal: the same steps on every rank


def test_two_processes_learn_what_one_learns_at_the_same_global_batch(
    digits: tuple[Digits, Digits], tmp_path: Path
) -> None:
    # given all ten digits, trained from scratch
    learn, held_out = digits
    prep = prepared(tmp_path, learn, "finetune")
    # when trained by one process, and by two with 16 samples each per step
    train.run(prep, tmp_path / "one", params(devices=1), data_of(prep))
    assert not torch.distributed.is_initialized()  # one process sets nothing up
    train.run(prep, tmp_path / "two", params(devices=2), data_of(prep))
    # then both learn the task, to within a point of each other
    one, two = accuracy_pt(tmp_path / "one", held_out), accuracy_pt(tmp_path / "two", held_out)
    assert one > 90
    assert abs(one - two) <= TOLERANCE_PT, (one, two)
    # and rank 0 alone wrote the candidate, a history line per epoch of every rank's samples
    assert sorted(p.name for p in (tmp_path / "two").iterdir()) == [train.CHECKPOINT, train.HISTORY]
    assert not list(tmp_path.glob(".*tmp"))


def test_replay_ewc_and_lwf_keep_their_state_consistent_across_processes(
    digits: tuple[Digits, Digits], tmp_path: Path
) -> None:
    # given a champion that learned digits 0-4 with replay and ewc (a memory and a Fisher)
    learn, held_out = digits
    first = np.isin(learn.labels, list("01234"))
    old = Digits(learn.images[first], learn.labels[first])
    new = Digits(learn.images[~first], learn.labels[~first])
    first_prep = prepared(tmp_path / "a", old, "replay+ewc")
    train.run(first_prep, tmp_path / "champion", params(devices=1), data_of(first_prep))
    champion = tmp_path / "champion" / train.CHECKPOINT
    # when digits 5-9 are learned from it with memory draws, distillation and the ewc penalty,
    # by one process and by two
    data = data_of(first_prep)
    prep = prepared(tmp_path / "b", new, "replay+lwf+ewc", parent=champion, data_dir=data)
    train.run(prep, tmp_path / "one", params(devices=1), data)
    train.run(prep, tmp_path / "two", params(devices=2), data)
    # then the two candidates know all ten digits about as well
    one, two = accuracy_pt(tmp_path / "one", held_out), accuracy_pt(tmp_path / "two", held_out)
    assert one > 80
    assert abs(one - two) <= TOLERANCE_PT, (one, two)
    # and carry the memory and a Fisher over all the samples drawn for it
    candidate = load_checkpoint(tmp_path / "two" / train.CHECKPOINT, samples=train.sample_lookup(data, None))
    reference = load_checkpoint(tmp_path / "one" / train.CHECKPOINT, samples=train.sample_lookup(data, None))
    assert candidate.memory is not None and reference.memory is not None
    assert candidate.memory.per_class() == reference.memory.per_class()
    assert (candidate.memory.images == reference.memory.images).all()
    for name, fisher in reference.states["ewc"]["fisher"].items():
        shared = candidate.states["ewc"]["fisher"][name]
        assert shared.shape == fisher.shape and shared.isfinite().all()
    total = sum(float(f.sum()) for f in candidate.states["ewc"]["fisher"].values())
    expected = sum(float(f.sum()) for f in reference.states["ewc"]["fisher"].values())
    # the mean over all drawn samples (one rank's half of the sum would be about half of it)
    assert total == pytest.approx(expected, rel=0.2)


def test_a_batch_that_does_not_split_over_the_devices_is_one_line(
    digits: tuple[Digits, Digits],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    prep = prepared(tmp_path, digits[0], "finetune")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(render_params(params(devices=3, batch_size=32)))
    # when the stage runs as dvc.yaml runs it
    code = train.main([str(prep), str(tmp_path / "out"), str(data_of(prep))])
    # then it refuses before starting a process, in one line
    assert code == 2
    err = capsys.readouterr().err
    assert err == (
        "ratchet train: error: train.batch_size 32 does not split over 3 devices: "
        "make it a multiple of the device count\n"
    )
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("devices", "device", "gpus", "count"),
    [
        (1, "auto", 4, 1),
        ("auto", "auto", 0, 1),
        ("auto", "auto", 1, 1),
        ("auto", "auto", 4, 4),
        ("auto", "cpu", 4, 1),
    ]
    + [(3, "cpu", 0, 3), (3, "auto", 0, 3), (2, "cuda", 4, 2)],
)
def test_the_device_count_comes_from_devices_and_the_machine(
    devices: int | str, device: str, gpus: int, count: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    p = params(devices=1).train
    assert train.device_count(dataclasses.replace(p, devices=devices, device=device)) == count


def test_more_devices_than_the_machine_has_gpus_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    p = dataclasses.replace(params(devices=1).train, devices=4, device="cuda")
    with pytest.raises(InputError, match=r"^train.devices is 4 but this machine has 2 CUDA devices$"):
        train.device_count(p)


@pytest.mark.parametrize(
    ("value", "why"), [(0, "must be a positive integer or auto"), ("all", "must be an integer or auto")]
)
def test_a_bad_device_count_is_one_line(value: object, why: str) -> None:
    with pytest.raises(InputError) as info:
        parse_params({"schema": 2, "train": {"devices": value}})
    assert str(info.value) == f"params: train.devices {why}, got {value!r}"
    assert parse_params({"schema": 2, "train": {"devices": "auto"}}).train.devices == "auto"


def test_a_failed_rank_fails_the_stage_in_one_line(digits: tuple[Digits, Digits], tmp_path: Path) -> None:
    # given prepared data whose cycle.json is gone
    prep = prepared(tmp_path, digits[1], "finetune")
    (prep / prepare.CYCLE).unlink()
    # when two ranks try to train on it, then the stage fails with the rank's own one line
    with pytest.raises(RatchetError) as info:
        train.run(prep, tmp_path / "out", params(devices=2), data_of(prep))
    assert re.match(r"training rank [01] of 2 failed: no cycle to reproduce: ", str(info.value)), info.value
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
