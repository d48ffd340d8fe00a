"""What a user waits for: `ratchet ingest` + `ratchet retrain` through many equal Fashion-MNIST batches.

    python -m benchmarks.cycle [--batches 12] [--per-batch 2000] [--epochs 2]

Each batch is a disjoint slice of Fashion-MNIST's training split with all ten classes, the same
size every time, so any growth of a cycle's cost comes from the history behind it, not from the
batch. Both commands run as a user runs them, each a fresh command (no Prefect API configured, so
the cycle runs its steps directly); the workspace has a warm process (`ratchet warm`), and the
retrains take turns: odd cycles in the command's own process (cold), even ones forked from the
warm process. Per cycle it records:

- the retrain command's wall time, split by where it went (`.ratchet/cycle-times.json`, written by
  the cycle): training compute (the training loop's own seconds), evaluation, data (the prepare stage),
  DVC (commands waited on), registry (plan, record and apply, less their DVC), and the rest (the
  process's start, imports and exit, the train stage's setup): "fixed" is everything but training
  and evaluation compute;
- the peak RSS of the process that ran the cycle (forked from the warm process: counted from its
  imports on);
- how much the DVC cache grew with the ingest and the cycle, against the new batch's stored size
  plus the candidate's weights.

Then `ratchet retrain` with nothing to do (median of three, warm and cold), cycles in turn as the Prefect
flow on a real `prefect server start` and without it (both cold), and the champion's `mlflow.pyfunc`
model predicting 100,000 images in a fresh process: its peak RSS above the loaded model's.
Writes benchmarks/results/cycle_<cpu|gpu>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import device_label, device_slug, du, write_results
from benchmarks.stream import make_workspace
from ratchet import warm
from ratchet.data.fashion import load_fashion
from ratchet.train.checkpoint import MEMORY_FILE

RATCHET = [sys.executable, "-m", "ratchet.cli"]  # the command, as a user runs it
# the parts of a cycle, in the order the plot stacks them
PARTS = ("training", "evaluation", "data", "dvc", "registry", "rest")

# a fresh process: load the champion as a user would, then predict N images in minibatches
PREDICT = """
import resource, sys, numpy as np, mlflow
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(sys.argv[2])
images = np.load(sys.argv[3])
loaded = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
out = model.predict(images)
print(loaded, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, len(out))
"""


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run a command; its wall seconds and stdout (stderr with it)."""
    start = time.perf_counter()
    done = subprocess.run(args, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({done.returncode}):\n{done.stdout}")
    return seconds, done.stdout


def parts(wall: float, times: dict[str, Any]) -> dict[str, float]:
    steps: dict[str, float] = times["steps"]
    dvc = float(times["commands"].get("dvc", 0.0))
    training = float(times["training_loop"])
    evaluation = steps.get("evaluate", 0.0)
    data = steps.get("prepare", 0.0)
    registry = sum(steps.get(s, 0.0) for s in ("plan", "find-registered", "record", "apply-decision")) - dvc
    split = {"training": training, "evaluation": evaluation, "data": data, "dvc": dvc, "registry": registry}
    return split | {"rest": wall - sum(split.values())}


Batch = tuple[np.ndarray, np.ndarray]  # uint8 images (N, 28, 28, 1), class names (N,)


def run_cycles(
    root: Path, incoming: Path, batches: list[Batch], first: int = 1, prefect_api: str | None = None
) -> list[dict[str, Any]]:
    """Ingest and retrain each batch; with `prefect_api`, each retrain runs as the Prefect flow on
    that server (what a configured Prefect API makes of it), else its steps run directly: in turn
    in the workspace's warm process (even cycles, where one is running) and in their own."""
    cache = root / ".dvc" / "cache"
    warm_running = warm.status(root) is not None
    rows = []
    for n, (images, labels) in enumerate(batches, first):
        how = "flow" if prefect_api else "warm" if warm_running and n % 2 == 0 else "cold"
        env = os.environ | ({"PREFECT_API_URL": prefect_api} if prefect_api else {})
        if how != "warm":
            env[warm.OFF] = "off"
        path = incoming / f"batch-{n:02d}.npz"
        np.savez(path, images=images, labels=labels)
        before = du(cache)
        ingest_s, _ = run([*RATCHET, "ingest", str(path), "-w", str(root)], root)
        stored = du(cache) - before  # the batch as DVC keeps it
        wall, out = run([*RATCHET, "retrain", "-w", str(root)], root, env)
        times = json.loads((root / ".ratchet" / "cycle-times.json").read_text())
        checkpoint = root / "artifacts" / "candidate" / "checkpoint"
        memory = du(checkpoint / MEMORY_FILE)  # the replay memory, stored with the weights
        weights = du(checkpoint) - memory
        grown = du(cache) - before
        split = parts(wall, times)
        action = next((line for line in out.splitlines() if line.startswith("version ")), "?")
        row = {
            "cycle": n,
            "path": how,
            "ingest_s": ingest_s,
            "retrain_s": wall,
            "fixed_s": wall - split["training"] - split["evaluation"],
            "parts_s": split,
            "steps_s": times["steps"],
            "peak_rss_mb": times["peak_rss_mb"],  # the process that ran the cycle, warm or not
            "dvc_growth_mb": grown / 2**20,
            "batch_stored_mb": stored / 2**20,
            "weights_mb": weights / 2**20,
            "memory_mb": memory / 2**20,
            "growth_ratio": grown / (stored + weights),
            "outcome": action,
        }
        rows.append(row)
        print(
            f"cycle {n:2d} ({row['path']}): retrain {wall:5.1f}s (fixed {row['fixed_s']:4.1f}s, training "
            f"{split['training']:4.1f}s, evaluation {split['evaluation']:4.1f}s), "
            f"peak {row['peak_rss_mb']:.0f} MB, DVC +{row['dvc_growth_mb']:.1f} MB "
            f"({row['growth_ratio']:.2f}x batch + weights): {action}",
            flush=True,
        )
    return rows


def compare_paths(root: Path, incoming: Path, batches: list[Batch], home: Path) -> list[dict[str, Any]]:
    """Cycles in turn as the Prefect flow on a real server (started here, once, as a team keeps one
    running) and directly."""
    from ratchet.services import prefect_server

    if not batches:
        return []
    home.mkdir()
    rows: list[dict[str, Any]] = []
    first = len(list(incoming.iterdir())) + 1
    with prefect_server(home) as server:
        for i, batch in enumerate(batches):
            api = server.api_url if i % 2 == 0 else None
            rows += run_cycles(root, incoming, [batch], first + i, api)
    return rows


def nothing_to_do(root: Path, runs: int = 3) -> float:
    return statistics.median(run([*RATCHET, "retrain", "-w", str(root)], root)[0] for _ in range(runs))


def predict_memory(root: Path, images: np.ndarray, work: Path) -> dict[str, float]:
    from ratchet.registry import open_registry
    from ratchet.workspace import open_workspace

    registry = open_registry(open_workspace(root))
    champion = registry.champion()
    assert champion is not None, "no champion to predict with"
    path = work / "predict.npy"
    np.save(path, images)
    uri = f"models:/{registry.name}/{champion.version}"
    wall, out = run([sys.executable, "-c", PREDICT, registry.tracking_uri, uri, str(path)], work)
    loaded, peak, count = (int(x) for x in out.strip().splitlines()[-1].split())
    return {
        "images": float(count),
        "seconds": wall,
        "loaded_mb": loaded / 1024,
        "peak_mb": peak / 1024,
        "above_model_mb": (peak - loaded) / 1024,
    }


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["cycles"]
    lines = [
        f"# A cycle at any history length ({doc['device']})",
        "",
        f"{len(rows)} equal batches of {doc['per_batch']} Fashion-MNIST images (all ten classes), "
        f"`ratchet ingest` + `ratchet retrain` each a fresh command, strategy {doc['strategy']}, "
        f"{doc['epochs']} epochs, no Prefect API configured. Odd cycles run in the command's own "
        "process (cold: it imports torch, MLflow and DVC), even ones in the workspace's warm process "
        f"(`ratchet warm`, started once in {doc['warm_start_s']:.1f} s). Machine: {doc['machine']}.",
        "",
        "| cycle | path | retrain s | fixed s | training s | evaluation s | data s | DVC s | registry s "
        "| rest s | peak RSS MB | DVC growth MB | of which replay memory MB | growth / (batch + weights) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        p = r["parts_s"]
        lines.append(
            f"| {r['cycle']} | {r['path']} | {r['retrain_s']:.1f} | {r['fixed_s']:.1f} | "
            + " | ".join(f"{p[k]:.1f}" for k in PARTS)
            + f" | {r['peak_rss_mb']:.0f} | {r['dvc_growth_mb']:.2f} | {r['memory_mb']:.3f} "
            f"| {r['growth_ratio']:.2f} |"
        )
    t, predict = doc["targets"], doc["predict"]
    cold, hot = ([r for r in rows if r["path"] == path] for path in ("cold", "warm"))

    def span(path: list[dict[str, Any]]) -> str:
        first, last = path[0], path[-1]
        return (
            f"cycle {last['cycle']} / cycle {first['cycle']}: "
            f"{last['retrain_s']:.1f} s / {first['retrain_s']:.1f} s"
        )

    checks = [
        (
            "fixed cost per warm cycle <= 5 s",
            f"{t['fixed_warm_s']:.1f} s in the warm process; {t['fixed_cold_s']:.1f} s cold (medians)",
            t["fixed_warm_s"] <= 5,
        ),
        (
            "`ratchet retrain` with nothing to do <= 3 s",
            f"{doc['nothing_to_do_s']:.1f} s cold, {doc['nothing_to_do_warm_s']:.1f} s in the warm process",
            doc["nothing_to_do_s"] <= 3,
        ),
        (
            "last cycle <= 1.3x the first, at equal batch size",
            f"warm {t['warm_last_over_first']:.2f}x ({span(hot)}); "
            f"cold {t['cold_last_over_first']:.2f}x ({span(cold)})",
            max(t["warm_last_over_first"], t["cold_last_over_first"]) <= 1.3,
        ),
        (
            "DVC growth per cycle <= 1.2x batch + weights",
            f"{t['growth_max']:.2f}x at most (cycles 2-{len(rows)})",
            t["growth_max"] <= 1.2,
        ),
        (
            f"pyfunc predict on {predict['images']:.0f} images: peak RSS <= 1 GB",
            f"{predict['peak_mb']:.0f} MB ({predict['above_model_mb']:.0f} MB above the loaded model)",
            predict["peak_mb"] <= 1024,
        ),
    ]
    lines += ["", "| target | measured | met |", "|---|---|---|"]
    lines += [f"| {name} | {measured} | {'yes' if met else 'no'} |" for name, measured, met in checks]
    if doc["compare"]:
        lines += [
            "",
            "Then cycles as the Prefect flow on a running `prefect server start` (a configured "
            "Prefect API) and in the command's own process without it, in turn:",
            "",
            "| cycle | path | retrain s | fixed s | training s | evaluation s |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['cycle']} | {r['path']} | {r['retrain_s']:.1f} | {r['fixed_s']:.1f} | "
            f"{r['parts_s']['training']:.1f} | {r['parts_s']['evaluation']:.1f} |"
            for r in doc["compare"]
        ]
    lines.append("")
    return "\n".join(lines)


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["cycles"]
    x = [r["cycle"] for r in rows]
    fig, (ax_time, ax_dvc) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax_time.set_xticks(x, [f"{r['cycle']}{r['path'][0]}" for r in rows])  # 1c: cold, 2w: warm
    bottom = np.zeros(len(rows))
    for part in PARTS:
        values = np.array([r["parts_s"][part] for r in rows])
        ax_time.bar(x, values, bottom=bottom, label=part)
        bottom += values
    ax_time.set_xlabel("cycle (c: in its own process, w: in the warm process)")
    ax_time.set_ylabel("seconds of `ratchet retrain`")
    ax_time.set_title("where a cycle's time goes")
    ax_time.legend(fontsize=8)
    ax_dvc.plot(x, [r["dvc_growth_mb"] for r in rows], marker="o", label="DVC cache growth")
    bound = [1.2 * (r["batch_stored_mb"] + r["weights_mb"]) for r in rows]
    ax_dvc.plot(x, bound, linestyle="--", label="1.2x (batch + weights)")
    ax_dvc.set_xlabel("cycle")
    ax_dvc.set_ylabel("MB")
    ax_dvc.set_title("what each cycle adds to the DVC cache")
    ax_dvc.legend(fontsize=8)
    fig.suptitle(f"ratchet cycles on {doc['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--per-batch", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--strategy", default="replay")
    # after the stream: this many more batches, their cycles in turn as the Prefect flow on a real
    # `prefect server start` and directly, for the cost of the flow
    parser.add_argument("--compare", type=int, default=4)
    parser.add_argument("--machine", default=os.environ.get("RATCHET_BENCH_MACHINE", "unnamed machine"))
    args = parser.parse_args(argv)

    import yaml

    train, test = load_fashion()
    rng = np.random.default_rng(0)
    count = args.batches + args.compare
    order = rng.permutation(len(train.labels))[: count * args.per_batch]
    batches = [(train.images[idx], train.labels[idx]) for idx in np.split(order, count)]
    with tempfile.TemporaryDirectory(prefix="ratchet-cycle-bench-") as tmp:
        work = Path(tmp)
        root = make_workspace(work / "ws", "cycle-bench")
        raw = yaml.safe_load((root / "params.yaml").read_text())
        raw["train"].update({"num_epochs": args.epochs, "strategy": args.strategy})
        (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        from ratchet.data import versioning

        versioning.commit(root, ["params.yaml"], "cycle benchmark params")
        incoming = work / "incoming"
        incoming.mkdir()
        started = time.perf_counter()
        run([*RATCHET, "warm", "-w", str(root)], root)
        warm_start = time.perf_counter() - started
        print(f"warm process started in {warm_start:.1f}s", flush=True)
        try:
            rows = run_cycles(root, incoming, batches[: args.batches])
            idle_warm = nothing_to_do(root)
        finally:
            run([*RATCHET, "warm", "--stop", "-w", str(root)], root)
        idle = nothing_to_do(root)
        print(f"retrain with nothing to do: {idle:.1f}s ({idle_warm:.1f}s in the warm process)", flush=True)
        compared = compare_paths(root, incoming, batches[args.batches :], work / "prefect")
        predict = predict_memory(root, np.tile(test.images, (10, 1, 1, 1)), work)
        print(f"predict {predict['images']:.0f} images: peak {predict['peak_mb']:.0f} MB", flush=True)
    cold, hot = ([r for r in rows if r["path"] == path] for path in ("cold", "warm"))
    doc = {
        "device": device_label(),
        "machine": args.machine,
        "batches": args.batches,
        "per_batch": args.per_batch,
        "epochs": args.epochs,
        "strategy": args.strategy,
        "warm_start_s": warm_start,
        "cycles": rows,
        "nothing_to_do_s": idle,
        "nothing_to_do_warm_s": idle_warm,
        "compare": compared,
        "predict": predict,
        "targets": {
            # the first cycle is cold in both senses: no cache, nothing scored yet
            "fixed_cold_s": statistics.median(r["fixed_s"] for r in cold[1:]),
            "fixed_warm_s": statistics.median(r["fixed_s"] for r in hot),
            "cold_last_over_first": cold[-1]["retrain_s"] / cold[0]["retrain_s"],
            "warm_last_over_first": hot[-1]["retrain_s"] / hot[0]["retrain_s"],
            "growth_max": max(r["growth_ratio"] for r in rows[1:]),
        },
    }
    write_results(f"cycle_{device_slug()}", doc, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
