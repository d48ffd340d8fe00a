"""Stage prepare: which data the cycle trains and evaluates on, and its parent model, in one directory.

The data is named, not copied: `sets.json` lists the batches of the training set and of the new and
old held-out sets, each with the hash of its files under data/ (see `ratchet.stages.sets`). data/ is
versioned already; a copy here would be stored by DVC again each cycle, old held-out sets included.
The hashes make this output change whenever the data it names does, so DVC re-runs train and
evaluate then, and only then; those stages read the samples from data/ and check the hashes.

The parent comes from the path dvc.yaml names (a DVC-tracked copy of the parent version's
checkpoint, which the orchestrator puts there), never from the registry, and only when its content
hash is the one cycle.json records: git and DVC alone reproduce a cycle.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from ratchet.config import Params
from ratchet.data import catalog
from ratchet.errors import InputError
from ratchet.stages._common import fresh_dir, stage_main
from ratchet.stages.inputs import Cycle, content_hash
from ratchet.stages.sets import SETS, PreparedSets, batch_ref
from ratchet.train.strategies.base import trains_on_all_seen

# what the output directory holds
CYCLE = "cycle.json"  # a copy of the cycle it was prepared for
# SETS: the batches of the training set and the held-out sets, by id and content
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
    # a strategy may train on everything seen so far (joint); the others on the new batches
    train_batches = (
        cycle.old_batches + cycle.new_batches if trains_on_all_seen(cycle.strategy) else cycle.new_batches
    )
    # the training batches first: a refusal names the batch training would have read
    refs = {
        b: batch_ref(data_dir, b)
        for b in dict.fromkeys(train_batches + cycle.new_batches + cycle.old_batches)
    }
    for batch_id in refs:
        # the shape from the manifest: a batch of another size fails here, before any stage reads it
        shape = tuple(catalog.read_manifest(catalog.batches_dir(data_dir) / batch_id)["image_shape"])
        if shape != expected:
            raise InputError(
                f"batch {batch_id} holds images of shape {shape}, "
                f"but params.yaml data section says {expected}"
            )
    sets = PreparedSets(
        train=tuple(refs[b] for b in train_batches),
        new=tuple(refs[b] for b in cycle.new_batches),
        old=tuple(refs[b] for b in cycle.old_batches),
    )
    with fresh_dir(out) as tmp:
        sets.save(tmp / SETS)
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
