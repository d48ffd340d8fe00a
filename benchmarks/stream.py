"""The product on Fashion-MNIST streams: the real cycle, its gate and registry, scored on the test split.

    python -m benchmarks.stream [--fraction 0.25] [--orders 3] [--only NAME ...]

Every stream runs in a fresh workspace through the code behind `ratchet ingest` and `ratchet
retrain` (ingest -> DVC -> Prefect flow -> gate -> MLflow registry), with the template's default
params except the data shape (28x28 grayscale) and the training budget below. After each cycle the
champion is loaded with `mlflow.pyfunc` and scored on Fashion-MNIST's own test split, which no
cycle ever sees. Streams:

- class-incremental, in several class orders: five batches of two new classes each;
- domain-incremental: five slices of all ten classes under a growing rotation + contrast shift;
- each of them poisoned: extra batches whose labels are scrambled, among classes the champion
  knows ("scrambled old") and among the classes of the next batch ("scrambled new");
- each of them partly poisoned: an extra batch of known classes with 30% of its labels flipped;
- class-incremental with `finetune` (it forgets; the gate must say so) and gated `joint`.

Poisoned batches are drawn from training images the clean batches do not use. The reference is a
joint model trained without a gate on the clean batches' training split with the same params.
Writes benchmarks/results/stream_<cpu|gpu>_f<fraction>.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import device_label, device_slug, write_results
from ratchet.data.fashion import CLASSES, Split, load_fashion, shift

# the issue-tracker's trial setup: everything else is the template's default
TRAIN_OVERRIDES = {"num_epochs": 4, "batch_size": 128, "replay_memory_per_class": 500}
DATA_OVERRIDES = {"image_size": 28, "channels": 1}
FLIP_SHARE = 0.3


@dataclass(frozen=True)
class Batch:
    name: str
    kind: str  # clean | scrambled old | scrambled new | 30% flipped
    images: np.ndarray  # uint8 (N, 28, 28, 1)
    labels: np.ndarray  # class names
    level: int = 0  # domain shift of its images (0: none)


@dataclass(frozen=True)
class Stream:
    name: str
    family: str  # class-incremental | domain-incremental
    variant: str  # clean | poisoned | partly poisoned | finetune | joint (gated)
    strategy: str
    batches: tuple[Batch, ...]
    reference: str  # the clean stream whose data the joint reference trains on


# ---- streams ---------------------------------------------------------------------------------------


def scrambled(rng: np.random.Generator, labels: np.ndarray) -> np.ndarray:
    return rng.permutation(labels)


def flipped(rng: np.random.Generator, labels: np.ndarray, share: float) -> np.ndarray:
    """`share` of the labels changed to another class of the batch: each flip is wrong for sure."""
    out = labels.copy()
    classes = np.unique(labels)
    for i in np.flatnonzero(rng.random(len(labels)) < share):
        out[i] = rng.choice(classes[classes != labels[i]])
    return out


def class_streams(train: Split, fraction: float, order_seed: int) -> list[Stream]:
    rng = np.random.default_rng(100 + order_seed)
    order = list(CLASSES) if order_seed == 0 else [str(c) for c in rng.permutation(CLASSES)]
    per_class = {c: rng.permutation(np.flatnonzero(train.labels == c)) for c in CLASSES}
    used = int(fraction * min(len(v) for v in per_class.values()))
    clean_idx = {c: idx[:used] for c, idx in per_class.items()}
    spare = {c: idx[used:] for c, idx in per_class.items()}

    def take(classes: list[str], pool: dict[str, np.ndarray], n_per_class: int) -> np.ndarray:
        return rng.permutation(np.concatenate([pool[c][:n_per_class] for c in classes]))

    steps = [order[k : k + 2] for k in range(0, 10, 2)]
    clean = []
    for classes in steps:
        idx = take(classes, clean_idx, used)
        clean.append(Batch("+".join(classes), "clean", train.images[idx], train.labels[idx]))
    name = f"class-incremental, order {order_seed}"
    known4 = [c for s in steps[:2] for c in s]
    old_idx = take(known4, spare, used // 2)  # as many images as a clean batch, over four classes
    new_idx = take(steps[3], spare, used)
    known6 = [c for s in steps[:3] for c in s]
    flip_idx = take(known6, {c: v[used:] for c, v in spare.items()}, used // 3)
    scrambled_old = Batch(
        f"{'+'.join(known4)} scrambled",
        "scrambled old",
        train.images[old_idx],
        scrambled(rng, train.labels[old_idx]),
    )
    scrambled_new = Batch(
        f"{'+'.join(steps[3])} scrambled",
        "scrambled new",
        train.images[new_idx],
        scrambled(rng, train.labels[new_idx]),
    )
    partly = Batch(
        f"{'+'.join(known6)} 30% flipped",
        "30% flipped",
        train.images[flip_idx],
        flipped(rng, train.labels[flip_idx], FLIP_SHARE),
    )
    c = tuple(clean)
    streams = [
        Stream(name, "class-incremental", "clean", "replay", c, name),
        Stream(
            f"{name}, poisoned",
            "class-incremental",
            "poisoned",
            "replay",
            (c[0], c[1], scrambled_old, c[2], scrambled_new, c[3], c[4]),
            name,
        ),
        Stream(
            f"{name}, partly poisoned",
            "class-incremental",
            "partly poisoned",
            "replay",
            c[:3] + (partly,) + c[3:],
            name,
        ),
    ]
    if order_seed == 0:
        streams += [
            Stream(f"{name}, finetune", "class-incremental", "finetune", "finetune", c, name),
            Stream(f"{name}, joint (gated)", "class-incremental", "joint (gated)", "joint", c, name),
        ]
    return streams


def domain_streams(train: Split, fraction: float) -> list[Stream]:
    rng = np.random.default_rng(200)
    perm = rng.permutation(len(train.labels))
    size = int(fraction * len(perm) / 5)
    parts = [perm[k * size : (k + 1) * size] for k in range(5)]
    spare = perm[5 * size :]

    def batch(name: str, kind: str, idx: np.ndarray, level: int, labels: np.ndarray | None = None) -> Batch:
        images = shift(train.images[idx], level)
        return Batch(name, kind, images, train.labels[idx] if labels is None else labels, level)

    clean = tuple(
        batch(f"domain {k} (rotate {20 * k} deg, contrast {1 - 0.15 * k:.2f})", "clean", idx, k)
        for k, idx in enumerate(parts)
    )
    s_idx, f_idx = spare[:size], spare[size : 2 * size]
    scrambled_old = batch(
        "domain 1 scrambled", "scrambled old", s_idx, 1, scrambled(rng, train.labels[s_idx])
    )
    partly = batch(
        "domain 2, 30% flipped", "30% flipped", f_idx, 2, flipped(rng, train.labels[f_idx], FLIP_SHARE)
    )
    name = "domain-incremental"
    return [
        Stream(name, name, "clean", "replay", clean, name),
        Stream(
            f"{name}, poisoned", name, "poisoned", "replay", clean[:2] + (scrambled_old,) + clean[2:], name
        ),
        Stream(
            f"{name}, partly poisoned",
            name,
            "partly poisoned",
            "replay",
            clean[:3] + (partly,) + clean[3:],
            name,
        ),
    ]


# ---- scoring on the test split -------------------------------------------------------------------


class TestSplit:
    """Fashion-MNIST's test images, shifted like each domain: what a champion is scored on."""

    def __init__(self, test: Split) -> None:
        self.test = test
        self._shifted: dict[int, np.ndarray] = {}

    def images(self, level: int) -> np.ndarray:
        if level not in self._shifted:
            self._shifted[level] = shift(self.test.images, level)
        return self._shifted[level]

    def score(self, predict: Any, classes: set[str], levels: list[int]) -> float:
        """Mean over the domain levels of the accuracy on test images of `classes`."""
        mask = np.isin(self.test.labels, sorted(classes))
        accs = []
        for level in levels:
            images = self.images(level)[mask]
            predicted = np.concatenate(
                [
                    np.asarray(predict(images[i : i + 2000])["label"], dtype=str)
                    for i in range(0, len(images), 2000)
                ]
            )
            accs.append(float(np.mean(predicted == self.test.labels[mask])))
        return float(np.mean(accs))


def seen_so_far(stream: Stream, upto: int) -> tuple[set[str], list[int]]:
    """The classes and domain levels of the clean batches up to `upto`: what a champion should know."""
    clean = [b for b in stream.batches[: upto + 1] if b.kind == "clean"]
    return {str(c) for b in clean for c in np.unique(b.labels)}, sorted({b.level for b in clean})


# ---- running a stream through the product ----------------------------------------------------------


def make_workspace(root: Path, name: str) -> Path:
    import yaml

    from ratchet.workspace import init_workspace

    ws, _ = init_workspace(root, model_name=name)
    raw = yaml.safe_load(ws.params_path.read_text())
    raw["data"].update(DATA_OVERRIDES)
    raw["train"].update(TRAIN_OVERRIDES)
    ws.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    from ratchet.data import versioning

    versioning.commit(ws.root, ["params.yaml"], "benchmark params")
    return ws.root


def run_stream(stream: Stream, test: TestSplit, workdir: Path) -> dict[str, Any]:
    import mlflow

    from ratchet import app
    from ratchet.cycle import ledger
    from ratchet.registry import open_registry
    from ratchet.workspace import open_workspace

    slug = stream.name.replace(", ", "-").replace(" ", "-").replace("(", "").replace(")", "")
    root = make_workspace(workdir / slug, slug)
    ws = open_workspace(root)
    incoming = workdir / f"{slug}-incoming"
    incoming.mkdir()
    stream_model = open_registry(ws).name
    cycles = []
    for i, batch in enumerate(stream.batches):
        t0 = time.perf_counter()
        path = incoming / f"{i}.npz"
        np.savez(path, images=batch.images, labels=batch.labels)
        report = app.ingest(root, path).report
        outcome = app.retrain(root, strategy=stream.strategy)
        assert outcome is not None, f"{stream.name}: no cycle for {batch.name}"
        champion = open_registry(ws).champion()  # None while the first model has not passed the floors
        classes, levels = seen_so_far(stream, i)

        def score(version: str, classes: set[str] = classes, levels: list[int] = levels) -> float:
            model = mlflow.pyfunc.load_model(f"models:/{stream_model}/{version}")
            return test.score(model.predict, classes, levels)

        candidate = score(outcome.version)
        all_levels = levels if stream.family.startswith("domain") else [0]
        row: dict[str, Any] = {
            "batch": batch.name,
            "kind": batch.kind,
            "batch_id": report.batch_id,
            "version": outcome.version,
            "action": outcome.action,
            "failed": [r.split(": ")[1] for r in outcome.reasons if r.startswith("FAIL")],
            "reasons": list(outcome.reasons),
            "champion": champion.version if champion else None,
            # the candidate too, rejected or not: a rejection was right if the candidate is worse here
            "candidate_test_seen": candidate,
            "test_seen": None if champion is None else score(champion.version),
            "test_all": None if champion is None else score(champion.version, set(CLASSES), all_levels),
            "seconds": time.perf_counter() - t0,
        }
        cycles.append(row)
        print(
            f"  {batch.name:<44} {row['action']:<9} v{row['version']:<3} "
            f"champion v{row['champion'] or '-':<3} "
            f"test {fmt(row['test_seen'])} (candidate {fmt(row['candidate_test_seen'])})  "
            f"{', '.join(row['failed']) or '-'}  ({row['seconds']:.0f}s)",
            flush=True,
        )
    states = ledger(ws, open_registry(ws))
    out: dict[str, Any] = {
        "family": stream.family,
        "variant": stream.variant,
        "strategy": stream.strategy,
        "reference": stream.reference,
        "cycles": cycles,
        "held": [s.batch_id for s in states if s.state == "held"],
        "final_all": cycles[-1]["test_all"],
        "clean_batch_ids": [
            c["batch_id"] for c, b in zip(cycles, stream.batches, strict=True) if b.kind == "clean"
        ],
        "workspace": str(root),
    }
    if stream.family.startswith("domain") and cycles[-1]["champion"] is not None:
        final_model = mlflow.pyfunc.load_model(f"models:/{open_registry(ws).name}@champion")
        out["final_old_domains"] = test.score(final_model.predict, set(CLASSES), [0, 1, 2, 3])
    return out


def joint_reference(result: dict[str, Any], test: TestSplit) -> dict[str, float]:
    """A joint model trained without a gate on the clean batches' training split, same params."""
    from ratchet.data import catalog
    from ratchet.evaluate import predict
    from ratchet.stages.train import initial_spec
    from ratchet.train.loop import fit
    from ratchet.workspace import open_workspace

    ws = open_workspace(Path(result["workspace"]))
    params = ws.params()
    samples = catalog.load_split(ws.data_dir, result["clean_batch_ids"], "train")
    train = replace(params.train, strategy="joint")
    ck = fit(None, initial_spec(params), samples.images, samples.labels, train).checkpoint

    def predict_labels(images: np.ndarray) -> dict[str, np.ndarray]:
        return {"label": np.asarray(ck.spec.classes)[predict(ck, images)]}

    domain = result["family"].startswith("domain")
    ref = {"final_all": test.score(predict_labels, set(CLASSES), [0, 1, 2, 3, 4] if domain else [0])}
    if domain:
        ref["final_old_domains"] = test.score(predict_labels, set(CLASSES), [0, 1, 2, 3])
    return ref


# ---- targets, report, plot ------------------------------------------------------------------------


def fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def targets(doc: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    streams, joint = doc["streams"], doc["joint"]

    def add(stream: str, check: str, value: str, target: str, met: bool) -> None:
        rows.append({"stream": stream, "check": check, "value": value, "target": target, "met": met})

    for name, s in streams.items():
        clean_rejected = [
            c["batch"] for c in s["cycles"] if c["kind"] == "clean" and c["action"] != "promoted"
        ]
        if s["variant"] in ("clean", "poisoned", "partly poisoned", "joint (gated)"):
            add(name, "clean cycles rejected", str(len(clean_rejected)), "0", not clean_rejected)
        ref = joint.get(s["reference"])
        if s["variant"] == "clean" and ref:
            ratio = (s["final_all"] or 0.0) / ref["final_all"]  # no champion at all scores 0
            if s["family"].startswith("class"):
                add(name, "final champion / joint", f"{ratio:.3f}x", ">= 0.93x", ratio >= 0.93)
            else:
                gap = 100 * (s.get("final_old_domains", 0.0) - ref["final_old_domains"])
                add(name, "old domains - joint", f"{gap:+.1f} pt", ">= -2.0 pt", gap >= -2.0)
        if s["variant"] == "finetune":
            forgot = [c for c in s["cycles"][1:] if c["action"] == "rejected"]
            by_forgetting = [c for c in forgot if "forgetting" in c["failed"]]
            add(
                name,
                "finetune candidates rejected for forgetting",
                f"{len(by_forgetting)}/{len(s['cycles']) - 1}",
                "all",
                len(by_forgetting) == len(s["cycles"]) - 1,
            )
        if s["variant"] in ("poisoned", "partly poisoned"):
            clean = streams.get(s["reference"])
            for c in s["cycles"]:
                if c["kind"] in ("scrambled old", "scrambled new"):
                    held = c["batch_id"] in s["held"]
                    add(
                        name,
                        f"{c['kind']} batch rejected and held",
                        f"{c['action']}, {', '.join(c['failed'])}",
                        "held",
                        held,
                    )
                elif c["kind"] != "clean":
                    why = ", ".join(c["failed"]) or "all checks passed"
                    add(name, f"{c['kind']} batch", f"{c['action']} ({why})", "reported", True)
            if clean:
                gap = 100 * ((s["final_all"] or 0.0) - (clean["final_all"] or 0.0))
                poisoned = s["variant"] == "poisoned"
                target = ">= -1.0 pt" if poisoned else "reported"
                add(
                    name,
                    "final champion - clean stream's",
                    f"{gap:+.1f} pt",
                    target,
                    gap >= -1.0 or not poisoned,
                )
    return rows


def markdown(doc: dict[str, Any]) -> str:
    lines = [
        f"# ratchet on Fashion-MNIST streams ({doc['device']})",
        "",
        f"The real cycle (ingest, DVC, Prefect flow, gate, MLflow registry) with default params except "
        f"data {doc['data_overrides']} and train {doc['train_overrides']}; fraction of Fashion-MNIST per "
        f"clean stream: {doc['fraction']}. Each champion is scored with mlflow.pyfunc on the dataset's "
        f"test split (classes and domains seen so far; final: all ten classes). "
        f"{doc['minutes']:.0f} minutes.",
        "",
        "## Targets",
        "",
        "| stream | check | value | target | met |",
        "|---|---|---|---|---|",
    ]
    for t in doc["targets"]:
        lines.append(
            f"| {t['stream']} | {t['check']} | {t['value']} | {t['target']} | {'yes' if t['met'] else 'no'} |"
        )
    lines += ["", "## Joint references (no gate, same data and params)", ""]
    lines += ["| data | final accuracy | old domains |", "|---|---:|---:|"]
    for name, ref in doc["joint"].items():
        old = ref.get("final_old_domains")
        lines.append(f"| {name} | {ref['final_all']:.3f} | {'-' if old is None else f'{old:.3f}'} |")
    for name, s in doc["streams"].items():
        lines += [
            "",
            f"## {name} ({s['strategy']})",
            "",
            "| batch | kind | version | decision | candidate on test | champion | champion on test "
            "| failed checks |",
            "|---|---|---:|---|---:|---:|---:|---|",
        ]
        for c in s["cycles"]:
            lines.append(
                f"| {c['batch']} | {c['kind']} | {c['version']} | {c['action']} | "
                f"{fmt(c['candidate_test_seen'])} | {c['champion'] or '-'} | {fmt(c['test_seen'])} | "
                f"{', '.join(c['failed']) or '-'} |"
            )
        rejected = [c for c in s["cycles"] if c["action"] == "rejected"]
        for c in rejected[:3]:
            failed = [r for r in c["reasons"] if r.startswith("FAIL")]
            lines += ["", f"- {c['batch']} (version {c['version']}): " + "; ".join(failed).replace("|", "/")]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    """One panel per clean stream with its variants: the champion on the test split over the cycles."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    references = list(dict.fromkeys(s["reference"] for s in doc["streams"].values()))
    fig, axes = plt.subplots(1, len(references), figsize=(4.6 * len(references), 4.2), squeeze=False)
    for ax, reference in zip(axes[0], references, strict=True):
        for s in doc["streams"].values():
            if s["reference"] != reference:
                continue
            xs = np.arange(1, len(s["cycles"]) + 1)
            ys = np.array([np.nan if c["test_seen"] is None else c["test_seen"] for c in s["cycles"]])
            ax.plot(xs, ys, marker="o", ms=4, label=f"{s['variant']} ({s['strategy']})")
            bad = [i for i, c in enumerate(s["cycles"]) if c["action"] == "rejected"]
            ax.plot(xs[bad], ys[bad], "x", color="black", markersize=9)
        ref = doc["joint"].get(reference)
        if ref:
            ax.axhline(ref["final_all"], color="gray", ls=":", lw=1.2, label="joint, no gate (final)")
        ax.set_title(reference, fontsize=10)
        ax.set_xlabel("cycle (x: rejected, batch held)")
        ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="lower left")
    axes[0][0].set_ylabel("champion on the test split (classes/domains seen)")
    fig.suptitle(
        f"ratchet on Fashion-MNIST streams ({doc['device']}, fraction {doc['fraction']})", fontsize=11
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--fraction", type=float, default=0.25, help="share of Fashion-MNIST per clean stream"
    )
    parser.add_argument("--orders", type=int, default=3, help="class orders of the class-incremental streams")
    parser.add_argument(
        "--only", action="append", default=[], help="a stream name to run (repeatable; default: all)"
    )
    parser.add_argument("--data-dir", type=Path, default=None, help="directory of the IDX .gz files")
    parser.add_argument(
        "--from-json", type=Path, default=None, help="only redraw the markdown and plot of an earlier result"
    )
    parser.add_argument(
        "--keep", type=Path, default=None, help="keep the workspaces here (default: a temp dir)"
    )
    args = parser.parse_args(argv)
    if args.from_json is not None:
        write_results(args.from_json.stem, json.loads(args.from_json.read_text()), markdown, plot)
        return 0
    # a benchmark prints one line per cycle; the flow's INFO lines would bury them
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DVC_NO_ANALYTICS", "1")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import logging

    logging.getLogger("mlflow").setLevel(logging.WARNING)

    t0 = time.perf_counter()
    train, test_split = load_fashion(*([] if args.data_dir is None else [args.data_dir]))
    streams = [s for o in range(args.orders) for s in class_streams(train, args.fraction, o)]
    streams += domain_streams(train, args.fraction)
    if args.only:
        unknown = set(args.only) - {s.name for s in streams}
        if unknown:
            known = ", ".join(s.name for s in streams)
            raise SystemExit(f"unknown stream(s): {', '.join(sorted(unknown))} (known: {known})")
        streams = [s for s in streams if s.name in args.only]
    test = TestSplit(test_split)
    doc: dict[str, Any] = {
        "device": device_label(),
        "fraction": args.fraction,
        "data_overrides": DATA_OVERRIDES,
        "train_overrides": TRAIN_OVERRIDES,
        "streams": {},
        "joint": {},
    }
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="ratchet-stream-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for stream in streams:
        print(f"{stream.name} ({stream.strategy}, {len(stream.batches)} batches)", flush=True)
        result = run_stream(stream, test, workdir)
        doc["streams"][stream.name] = result
        if stream.variant == "clean":
            doc["joint"][stream.name] = joint_reference(result, test)
            print(f"  joint reference: {doc['joint'][stream.name]}", flush=True)
    doc["targets"] = targets(doc)
    doc["minutes"] = (time.perf_counter() - t0) / 60
    write_results(f"stream_{device_slug()}_f{args.fraction:g}", doc, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
