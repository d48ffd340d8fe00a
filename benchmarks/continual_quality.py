"""Continual-learning quality on Fashion-MNIST, every strategy against `joint`, in one run.

    python -m benchmarks.continual_quality [--fraction 0.2] [--strategies replay,joint,...]
    python -m benchmarks.continual_quality --strategies replay --memory-per-class 500 \
        --rows-from benchmarks/results/continual_quality_cpu.json   # a memory-size variant

Streams: class-incremental (5 steps of 2 new classes) and domain-incremental (5 slices of all
classes under a growing rotation + contrast shift). Every candidate is accepted (no gate): this
measures the strategies themselves. Per strategy: final accuracy on all / old / new held-out data,
average forgetting, images processed and seconds, each also as a ratio to joint's.
Writes benchmarks/results/continual_quality_<cpu|gpu>[_f<fraction>][_m<memory>].{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import FASHION_SPEC, FASHION_TRAIN, device_label, device_slug, write_results
from ratchet.config import TrainParams
from ratchet.data.fashion import StreamStep, class_incremental, domain_incremental, load_fashion
from ratchet.evaluate import split_metrics
from ratchet.train import strategies
from ratchet.train.checkpoint import Checkpoint
from ratchet.train.loop import fit
from ratchet.train.strategies.base import load, trains_on_all_seen

# every registered strategy, and the one pair worth measuring
STRATEGIES = (*strategies.NAMES, "replay+lwf")


def run_stream(steps: list[StreamStep], strategy: str, train: TrainParams) -> dict[str, Any]:
    params = dataclasses.replace(train, strategy=strategy)
    state: Checkpoint | None = None
    acc = np.full((len(steps), len(steps)), np.nan)  # acc[i, j]: on step j's held-out after step i
    processed, seconds = 0, 0.0
    everything = trains_on_all_seen(strategy)
    for i, step in enumerate(steps):
        if everything:
            images = np.concatenate([s.train.images for s in steps[: i + 1]])
            labels = np.concatenate([s.train.labels for s in steps[: i + 1]])
        else:
            images, labels = step.train.images, step.train.labels
        t0 = time.perf_counter()
        result = fit(state, FASHION_SPEC, images, labels, params)
        seconds += time.perf_counter() - t0
        processed += result.images_processed
        state = result.checkpoint
        for j in range(i + 1):
            acc[i, j] = split_metrics(state, steps[j].held_out.images, steps[j].held_out.labels).accuracy
        print(f"  {strategy:<11} step {i + 1}: " + " ".join(f"{a:.3f}" for a in acc[i, : i + 1]), flush=True)
    assert state is not None
    last = len(steps) - 1

    def on(js: range) -> float:
        imgs = np.concatenate([steps[j].held_out.images for j in js])
        labs = np.concatenate([steps[j].held_out.labels for j in js])
        return split_metrics(state, imgs, labs).accuracy

    forgetting = [float(np.nanmax(acc[j:last, j]) - acc[last, j]) for j in range(last)]
    return {
        "final_all": on(range(len(steps))),
        "final_old": on(range(last)),
        "final_new": on(range(last, len(steps))),
        "avg_forgetting": float(np.mean(forgetting)),
        "images_processed": processed,
        "seconds": seconds,
        "accuracy_matrix": [[None if np.isnan(a) else round(float(a), 4) for a in row] for row in acc],
    }


def with_ratios(rows: dict[str, dict[str, Any]]) -> None:
    joint = rows.get("joint")
    if joint is None:
        return
    for row in rows.values():
        row["ratio_to_joint"] = {
            key: (row[key] / joint[key] if joint[key] else None)
            for key in ("final_all", "final_old", "final_new", "images_processed", "seconds")
        }


def target_rows(doc: dict[str, Any]) -> list[str]:
    """Table rows for the quality targets of the default strategy (replay) against joint."""
    rows = []
    for stream, results in doc["streams"].items():
        replay, joint = results.get("replay"), results.get("joint")
        if replay is None or joint is None:
            continue
        if stream == "class-incremental":
            ratio = replay["final_all"] / joint["final_all"]
            rows.append(_row(stream, "final accuracy / joint's", f"{ratio:.3f}x", ">= 0.95x", ratio >= 0.95))
        else:
            gap = 100 * (replay["final_old"] - joint["final_old"])
            rows.append(_row(stream, "old domains - joint's", f"{gap:+.1f} pt", ">= -1.0 pt", gap >= -1))
        images = replay["images_processed"] / joint["images_processed"]
        rows.append(_row(stream, "images processed / joint's", f"{images:.3f}x", "<= 0.5x", images <= 0.5))
    return rows


def _row(stream: str, check: str, value: str, target: str, met: bool) -> str:
    return f"| {stream} | {check} | {value} | {target} | {'yes' if met else 'no'} |"


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# Continual quality on Fashion-MNIST ({doc['device']})",
        "",
        f"fraction of the data used: {doc['fraction']}; epochs per step: {doc['params']['num_epochs']}; "
        f"replay memory {doc['params']['replay_memory_per_class']}/class, "
        f"replay fraction {doc['params']['replay_fraction']}",
        "",
    ]
    if "rows_from" in doc:
        reused = ", ".join(doc["rows_from"]["strategies"])
        lines += [f"rows of {reused} reused from {doc['rows_from']['file']} (they never read the memory)", ""]
    for stream, rows in doc["streams"].items():
        lines += [
            f"## {stream}",
            "",
            "| strategy | all | old | new | forgetting | images | s "
            "| all / joint | old / joint | images / joint |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for name, r in rows.items():
            ratio = r.get("ratio_to_joint", {})
            lines.append(
                f"| {name} | {r['final_all']:.3f} | {r['final_old']:.3f} | {r['final_new']:.3f} | "
                f"{r['avg_forgetting']:.3f} | {r['images_processed']} | {r['seconds']:.1f} | "
                f"{ratio.get('final_all', float('nan')):.3f} | {ratio.get('final_old', float('nan')):.3f} | "
                f"{ratio.get('images_processed', float('nan')):.2f} |"
            )
        lines.append("")
    targets = target_rows(doc)
    if targets:
        lines += [
            "## Targets: the default strategy (replay) against joint",
            "",
            "| stream | check | replay | target | met |",
            "|---|---|---:|---|---|",
            *targets,
            "",
        ]
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(doc["streams"])
    fig, axes = plt.subplots(2, n, figsize=(6 * n, 8), squeeze=False)
    for col, (stream, rows) in enumerate(doc["streams"].items()):
        ax = axes[0][col]
        names = list(rows)
        x = np.arange(len(names))
        for k, (key, label) in enumerate((("final_all", "all"), ("final_old", "old"), ("final_new", "new"))):
            ax.bar(x + (k - 1) * 0.27, [rows[n][key] for n in names], 0.27, label=label)
        ax.set_xticks(x, names, rotation=25, fontsize=8)
        ax.set_ylim(0, 1)
        ax.set_title(f"{stream}: after the last step")
        ax.grid(axis="y", alpha=0.3)
        # below: how each strategy holds up over the stream (mean accuracy on the steps seen so far)
        ax = axes[1][col]
        for name, r in rows.items():
            matrix = np.array([[np.nan if a is None else a for a in row] for row in r["accuracy_matrix"]])
            ax.plot(np.arange(1, len(matrix) + 1), np.nanmean(matrix, axis=1), marker="o", label=name)
        ax.set_xticks(np.arange(1, len(next(iter(rows.values()))["accuracy_matrix"]) + 1))
        ax.set_xlabel("step")
        ax.set_ylim(0, 1)
        ax.set_title(f"{stream}: mean accuracy on the steps seen so far")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("final held-out accuracy")
    axes[1][0].set_ylabel("held-out accuracy")
    axes[0][0].legend()
    fig.suptitle(f"ratchet strategies on Fashion-MNIST ({doc['device']}, fraction {doc['fraction']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _reads_memory(strategy: str) -> bool:
    return any(unit.memory_share() > 0 for unit in load(strategy, FASHION_TRAIN))


def reusable_rows(path: Path, doc: dict[str, Any], skip: set[str]) -> dict[str, dict[str, dict[str, Any]]]:
    """Rows of an earlier run that this run's params would reproduce exactly: strategies that never
    read the replay memory, from a run on the same device and data whose params differ at most in
    the memory size. Lets a memory-size variant be compared with joint without rerunning joint."""
    earlier = json.loads(path.read_text())
    mine = {k: v for k, v in doc["params"].items() if k != "replay_memory_per_class"}
    theirs = {k: v for k, v in earlier["params"].items() if k != "replay_memory_per_class"}
    if (earlier["device"], earlier["fraction"], theirs) != (doc["device"], doc["fraction"], mine):
        raise SystemExit(f"{path}: another device, fraction or params; its rows would not be reproduced")
    return {
        stream: {n: r for n, r in rows.items() if n not in skip and not _reads_memory(n)}
        for stream, rows in earlier["streams"].items()
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fraction", type=float, default=1.0, help="share of Fashion-MNIST to use (CPU: 0.1)"
    )
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--memory-per-class", type=int, default=FASHION_TRAIN.replay_memory_per_class)
    parser.add_argument(
        "--rows-from",
        type=Path,
        default=None,
        help="an earlier result: reuse its rows that do not use replay",
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="directory of the IDX .gz files")
    args = parser.parse_args(argv)
    train, test = load_fashion(*([] if args.data_dir is None else [args.data_dir]))
    params = dataclasses.replace(FASHION_TRAIN, replay_memory_per_class=args.memory_per_class)
    streams = {
        "class-incremental": class_incremental(train, test, fraction=args.fraction),
        "domain-incremental": domain_incremental(train, test, fraction=args.fraction),
    }
    doc: dict[str, Any] = {
        "device": device_label(),
        "fraction": args.fraction,
        "params": dataclasses.asdict(params),
        "streams": {},
    }
    names = args.strategies.split(",")
    reused = reusable_rows(args.rows_from, doc, set(names)) if args.rows_from else {}
    if args.rows_from:
        doc["rows_from"] = {
            "file": args.rows_from.name,
            "strategies": sorted({n for r in reused.values() for n in r}),
        }
    for stream, steps in streams.items():
        print(f"{stream}: " + ", ".join(s.name for s in steps), flush=True)
        rows = {name: run_stream(steps, name, params) for name in names}
        rows.update(reused.get(stream, {}))
        with_ratios(rows)
        doc["streams"][stream] = rows
    # a subsampled run or a memory-size variant never overwrites the full default run
    part = "" if args.fraction >= 1.0 else f"_f{args.fraction:g}"
    if args.memory_per_class != FASHION_TRAIN.replay_memory_per_class:
        part += f"_m{args.memory_per_class}"
    # not with_suffix: "f0.2" has a dot of its own
    write_results(f"continual_quality_{device_slug()}{part}", doc, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
