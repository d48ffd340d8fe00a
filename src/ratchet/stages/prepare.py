"""Stage prepare: the cycle's training and held-out data, and its parent model, into one directory.

The parent comes from the path dvc.yaml names (a DVC-tracked copy of the parent version's
checkpoint, which the orchestrator puts there), never from the registry, and only when its content
hash is the one cycle.json records: git and DVC alone reproduce a cycle. Train and evaluate work
from this stage's output alone.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Literal

import numpy as np

from ratchet.config import Params
from ratchet.data import catalog
from ratchet.errors import InputError
from ratchet.stages._common import fresh_dir, save_arrays, stage_main
from ratchet.stages.inputs import Cycle, content_hash
from ratchet.train.strategies.base import trains_on_all_seen

# what the output directory holds
CYCLE = "cycle.json"  # a copy of the cycle it was prepared for
TRAIN, NEW, OLD = "train.npz", "new.npz", "old.npz"  # training samples; held-out new and old data
PARENT = "parent"  # the parent's checkpoint directory, when the cycle has one
PRETRAINED = "pretrained.pt"  # model.pretrained's weights, when a bootstrap starts from them


def check_parent(cycle: Cycle, parent_dir: Path) -> None:
    """Refuse a parent that is not the one cycle.json names: training from another would record a
    candidate under a lineage it does not have."""
    if cycle.parent_version is None:
        return  # a bootstrap reads nothing from the parent path
    where = f"parent version {cycle.parent_version}"
    if cycle.parent_hash is None:
        raise InputError(
            f"{where}: cycle.json records no parent_hash (planned by an earlier ratchet), so nothing "
            "can check the parent; plan the cycle again with `ratchet retrain`"
        )
    if not (parent_dir / "spec.json").is_file():
        raise InputError(
            f"{where}: no checkpoint at {parent_dir}; restore it with `dvc checkout` (or `dvc pull`)"
        )
    found = content_hash(parent_dir)
    if found != cycle.parent_hash:
        raise InputError(
            f"{where}: {parent_dir} holds content {found[:12]}, not the {cycle.parent_hash[:12]} "
            "cycle.json names; not training from it (restore it with `dvc checkout`)"
        )


def run(cycle_path: Path, data_dir: Path, parent_dir: Path, out: Path, params: Params) -> Path:
    cycle = Cycle.load(cycle_path)
    if note := cycle.code_note():
        print(note, file=sys.stderr, flush=True)
    check_parent(cycle, parent_dir)  # before anything is written
    expected = (params.data.image_size, params.data.image_size, params.data.channels)
    with fresh_dir(out) as tmp:
        # a strategy may train on everything seen so far (joint); the others on the new batches
        train_batches = (
            cycle.old_batches + cycle.new_batches if trains_on_all_seen(cycle.strategy) else cycle.new_batches
        )
        parts: list[tuple[str, tuple[str, ...], Literal["train", "held_out"]]] = [
            (TRAIN, train_batches, "train"),
            (NEW, cycle.new_batches, "held_out"),
            (OLD, cycle.old_batches, "held_out"),
        ]
        for name, batches, split in parts:
            # batch by batch, so each sample keeps its batch id: evaluate scores each batch apart
            images = [np.zeros((0, *expected), dtype=np.uint8)]
            labels, ids = [np.zeros((0,), dtype=np.str_)], [np.zeros((0,), dtype=np.str_)]
            for batch_id in batches:
                samples = catalog.load_split(data_dir, [batch_id], split)
                if samples.images.shape[1:] != expected:
                    raise InputError(
                        f"batch {batch_id} holds images of shape {samples.images.shape[1:]}, "
                        f"but params.yaml data section says {expected}"
                    )
                images.append(samples.images)
                labels.append(samples.labels)
                ids.append(np.full(len(samples), batch_id))  # dtype from the id: np.str_ alone is 1 char
            save_arrays(tmp / name, np.concatenate(images), np.concatenate(labels), np.concatenate(ids))
        if cycle.parent_version is not None:
            shutil.copytree(parent_dir, tmp / PARENT)
        elif params.model.pretrained:
            # copied in, so the weights a bootstrap starts from are part of what DVC hashes
            source = Path(params.model.pretrained)
            if not source.is_file():
                raise InputError(f"model.pretrained: no such file {source}")
            shutil.copyfile(source, tmp / PRETRAINED)
        cycle.save(tmp / CYCLE)
    return out


def main(argv: list[str] | None = None) -> int:
    return stage_main(
        "prepare",
        ["cycle", "data", "parent", "out"],
        lambda p, params: run(p[0], p[1], p[2], p[3], params),
        argv,
    )


if __name__ == "__main__":
    sys.exit(main())
