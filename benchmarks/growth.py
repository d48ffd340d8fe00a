"""What each cycle costs as the stream grows: evaluation time and DVC storage per cycle.

    python -m benchmarks.growth [--cycles 12] [--batch 2500] [--epochs 1] [--out DIR]

Equal batches of Fashion-MNIST (all ten classes each, drawn without overlap) go through the real
cycle steps (ingest, plan, prepare, train, evaluate, record with DVC, apply), without Prefect, in a
fresh workspace with 28x28 grayscale params and a 500-per-class replay memory. After each cycle it
prints the seconds of each stage, the bytes of the new batch and of the candidate's weights, and how
much the DVC cache and the DVC remote grew. Training time stays flat by construction (equal
batches); evaluation and storage are what the numbers are for.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.common import du
from ratchet.data.fashion import load_fashion


def main() -> int:
    import yaml

    from ratchet import app, cycle
    from ratchet.data import catalog, versioning
    from ratchet.stages import train
    from ratchet.train.checkpoint import WEIGHTS_FILE
    from ratchet.workspace import init_workspace

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=12)
    parser.add_argument("--batch", type=int, default=2500, help="images per batch")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="where to write the per-cycle rows (JSON)")
    args = parser.parse_args()

    fashion, _ = load_fashion()
    order = np.random.default_rng(0).permutation(len(fashion.labels))
    root = Path(tempfile.mkdtemp(prefix="ratchet-growth-")) / "ws"
    ws, _ = init_workspace(root, model_name="growth")
    raw = yaml.safe_load(ws.params_path.read_text())
    raw["data"].update({"image_size": 28, "channels": 1})
    raw["train"].update({"num_epochs": args.epochs, "batch_size": 128, "replay_memory_per_class": 500})
    # costs, not quality, are measured: a gate that lets short trainings through keeps a champion,
    # so each cycle has old data to evaluate on
    raw["gate"].update(
        {
            "min_accuracy": 0.0,
            "min_class_accuracy": 0.0,
            "min_new_class_lift": 0.0,
            "hard_drop_pt": 100.0,
            "max_old_drop_pt": 100.0,
            "max_class_drop_pt": 100.0,
            "max_new_drop_pt": 100.0,
            "max_label_gap_pt": 100.0,
        }
    )
    ws.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    versioning.commit(ws.root, ["params.yaml"], "benchmark params")
    incoming = root.parent / "incoming"
    incoming.mkdir()
    rows = []
    cache, remote = root / ".dvc" / "cache", ws.dvc_remote
    before = (du(cache), du(remote))
    print(f"workspace {root}")
    print(
        f"{'cycle':>5} {'prepare':>8} {'train':>7} {'evaluate':>9} {'batch B':>9} {'weights B':>10} "
        f"{'cache +B':>10} {'remote +B':>10} {'ratio':>6}  action"
    )
    for i in range(args.cycles):
        idx = order[i * args.batch : (i + 1) * args.batch]
        path = incoming / f"{i}.npz"
        np.savez(path, images=fashion.images[idx], labels=fashion.labels[idx])
        batch_id = app.ingest(root, path).report.batch_id
        assert batch_id is not None
        planned = cycle.plan(ws)
        assert planned is not None
        seconds = {}
        for name, step in (
            ("prepare", cycle.run_prepare),
            ("train", cycle.run_train),
            ("evaluate", cycle.run_evaluate),
        ):
            t0 = time.perf_counter()
            step(ws)
            seconds[name] = time.perf_counter() - t0
        version = cycle.record(ws, planned)
        outcome = cycle.apply(ws, planned, version, dry_run=False, resumed=False)
        after = (du(cache), du(remote))
        batch_bytes = du(catalog.batches_dir(ws.data_dir) / batch_id)
        weights = (ws.stage_paths().candidate / train.CHECKPOINT / WEIGHTS_FILE).stat().st_size
        growth = (after[0] - before[0], after[1] - before[1])
        before = after
        row = {
            "cycle": i + 1,
            **seconds,
            "batch_bytes": batch_bytes,
            "weights_bytes": weights,
            "cache_growth": growth[0],
            "remote_growth": growth[1],
            "action": outcome.action,
        }
        rows.append(row)
        print(
            f"{i + 1:>5} {seconds['prepare']:>8.2f} {seconds['train']:>7.2f} {seconds['evaluate']:>9.2f} "
            f"{batch_bytes:>9} {weights:>10} {growth[0]:>10} {growth[1]:>10} "
            f"{growth[0] / (batch_bytes + weights):>6.2f}  {outcome.action}",
            flush=True,
        )
    if args.out:
        args.out.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
