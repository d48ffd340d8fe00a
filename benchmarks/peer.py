"""ratchet's training core against Avalanche, the same class-incremental Fashion-MNIST stream, one run.

    make bench-peer PEER_ARGS="--fraction 0.1 --repeats 3"
    .venv-peer/bin/python -m benchmarks.peer [--fraction 0.1] [--repeats 3] [--bic-stage2-epochs 200]

Avalanche (PyPI `avalanche-lib`, the `peer` extra of pyproject.toml) is never a dependency of
ratchet: `make bench-peer` builds `.venv-peer` from requirements.lock plus that extra.

Both tools train the same stream (`class_incremental`: five experiences of two new classes, the
same samples), the same model (ratchet's SmallCNN, `FASHION_SPEC`; Avalanche's has its ten outputs
from the start, ratchet grows its head) and the same knobs (`FASHION_TRAIN`: AdamW with its weight
decay, a fresh optimizer state and one-cycle schedule per experience, peak learning rate, epochs,
batch size; replay: 200 stored samples per class, 80 new + 48 memory samples per minibatch) from
the same seed. Strategies, ratchet's / Avalanche's:

- naive: `finetune` / `Naive`;
- replay: `replay` (class-balanced memory, logit-adjusted loss) / `Naive` + `ReplayPlugin` with a
  class-balanced buffer of the same size;
- joint: one training on every sample of the stream / `JointTraining`;
- Avalanche's remedies for the class imbalance of replay, next to ratchet's replay: BiC (replay,
  distillation and a bias layer fitted on held-back samples) and ER-ACE (asymmetric
  cross-entropy), with the same memory and minibatch split.

Accuracy: after the last experience, on the whole Fashion-MNIST test split (every class seen),
computed by one function for both tools (argmax of the logits; BiC's bias correction applied).
Speed: training images per second, new and replayed samples through a training step, over the
wall time of the whole strategy run without evaluation. Avalanche runs each of naive, replay and
joint twice: as a user runs it (NCHW float tensors in a TensorDataset) and fed ratchet's input
memory layout (the same tensors restrided to channels-last, as ratchet's preprocessing of NHWC
images leaves them). On a CPU the layout of single-channel input alone picks other convolution
kernels, so only the second speed ratio compares the training loops. BiC and ER-ACE run in
ratchet's layout. Within a repeat the tools alternate strategy by strategy (their order rotating
with the repeat) so machine noise hits both; the seed is the repeat's index. Ratios are ratchet
over Avalanche, the median of the per-repeat ratios.
Writes benchmarks/results/peer_<cpu|gpu>[_f<fraction>].{json,md,png}.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from avalanche.benchmarks.scenarios import class_incremental_benchmark  # type: ignore[import-not-found]
from avalanche.benchmarks.scenarios.dataset_scenario import DatasetExperience  # type: ignore[import-not-found]
from avalanche.training import ER_ACE, JointTraining, Naive  # type: ignore[import-not-found]
from avalanche.training.plugins import (  # type: ignore[import-not-found]
    BiCPlugin,
    ReplayPlugin,
    SupervisedPlugin,
)
from avalanche.training.plugins import bic as bic_module  # type: ignore[import-not-found]
from avalanche.training.storage_policy import ClassBalancedBuffer  # type: ignore[import-not-found]
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.common import FASHION_SPEC, FASHION_TRAIN, device_label, device_slug, write_results
from ratchet.config import TrainParams
from ratchet.data.fashion import CLASSES, Split, StreamStep, class_incremental, load_fashion
from ratchet.train.loop import fit
from ratchet.train.model import build_model, preprocess

STRATEGIES = ("naive", "replay", "joint")
REMEDIES = ("bic", "er_ace")  # Avalanche's, each compared with ratchet's replay
RATCHET_NAMES = {"naive": "finetune", "replay": "replay", "joint": "joint"}
LAYOUTS = ("user", "same")  # Avalanche fed NCHW tensors; fed ratchet's channels-last input
KEYS = ("accuracy", "images", "seconds", "images_per_s")
Logits = Callable[[torch.Tensor], torch.Tensor]


@dataclasses.dataclass(frozen=True)
class Outcome:
    accuracy: float
    images: int  # training samples through a training step, new and replayed
    seconds: float  # training wall time, evaluation excluded

    def row(self) -> dict[str, float]:
        return {
            "accuracy": self.accuracy,
            "images": self.images,
            "seconds": self.seconds,
            "images_per_s": self.images / self.seconds,
        }


def accuracy(logits_of: Logits, classes: tuple[str, ...], test: Split, batch: int = 1000) -> float:
    """Share of `test` whose argmax output names its class: the one evaluation for both tools."""
    truth = np.array([CLASSES.index(str(c)) for c in test.labels])
    to_class = torch.tensor([CLASSES.index(c) for c in classes])
    hits = 0
    with torch.no_grad():
        for start in range(0, len(truth), batch):
            x = preprocess(torch.from_numpy(test.images[start : start + batch]))
            predicted = to_class[logits_of(x).argmax(1)].numpy()
            hits += int((predicted == truth[start : start + batch]).sum())
    return hits / len(truth)


# --- ratchet ---------------------------------------------------------------------------------


def run_ratchet(steps: list[StreamStep], strategy: str, params: TrainParams, test: Split) -> Outcome:
    params = dataclasses.replace(params, strategy=RATCHET_NAMES[strategy])
    if strategy == "joint":  # one training on the whole stream, as Avalanche's JointTraining does
        everything = (
            np.concatenate([s.train.images for s in steps]),
            np.concatenate([s.train.labels for s in steps]),
        )
        data = [everything]
    else:
        data = [(s.train.images, s.train.labels) for s in steps]
    state, images, seconds = None, 0, 0.0
    for x, y in data:
        t0 = time.perf_counter()
        result = fit(state, FASHION_SPEC, x, y, params)
        seconds += time.perf_counter() - t0
        images += result.images_processed
        state = result.checkpoint
    assert state is not None
    model = state.model.eval()
    return Outcome(accuracy(model, state.spec.classes, test), images, seconds)


# --- Avalanche -------------------------------------------------------------------------------


class RatchetLayout(nn.Module):
    """The model fed its input as ratchet's `preprocess` leaves it: channels-last strides. A copy,
    not `.contiguous(memory_format=...)`: with one channel both layouts count as contiguous, so
    that (and any permute-contiguous-permute) would keep NCHW's strides."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.model(x.clone(memory_format=torch.channels_last))
        return out


class OneCyclePerExperience(SupervisedPlugin):  # type: ignore[misc]
    """ratchet's schedule: every experience starts a fresh AdamW state under its own one-cycle
    schedule over all its steps. Built at the first epoch, once every plugin has set the loader."""

    def __init__(self, lr: float) -> None:
        super().__init__()
        self.lr = lr
        self.schedule: torch.optim.lr_scheduler.OneCycleLR | None = None

    def before_training_epoch(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        if strategy.clock.train_exp_epochs == 0:
            strategy.optimizer.state.clear()
            total = len(strategy.dataloader) * strategy.train_epochs
            self.schedule = torch.optim.lr_scheduler.OneCycleLR(
                strategy.optimizer, max_lr=self.lr, total_steps=total, pct_start=0.15
            )

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        assert self.schedule is not None
        self.schedule.step()


def check_layouts() -> None:
    """What each Avalanche run is fed against what ratchet's loop feeds its model: fails loudly
    should a torch version change how one-channel layouts are told apart."""
    images = torch.zeros((2, 28, 28, 1), dtype=torch.uint8)
    ours = preprocess(images).stride()
    user = preprocess(images).clone(memory_format=torch.contiguous_format)
    same = RatchetLayout(nn.Identity())(user).stride()
    if same != ours or user.stride() == ours:
        raise SystemExit(f"layouts: ratchet {ours}, Avalanche user {user.stride()}, same {same}")


def bic_val_percentage(per_class: int, memory: int) -> float:
    """BiC holds back `val_percentage * memory` training samples, spread over the classes seen, to
    fit its bias layer on. Avalanche's 0.1 holds back 100 of each class of the first experience:
    under 2% of Fashion-MNIST's 6000, but most of a class in a small fraction of the data. At most
    10% of a class held back, so the default holds for the full data set."""
    return min(0.1, 0.2 * per_class / memory)


def make_bic_run() -> None:
    """Two fixes BiC of avalanche-lib 0.6.0 needs to run at all with these versions.

    It holds back samples by assigning `experience.dataset`, which the experiences of
    `class_incremental_benchmark` keep read-only: the property gets a setter. And it builds its
    stage-2 schedule with `MultiStepLR(..., verbose=False)`, an argument torch 2.14 no longer
    takes: its module gets a MultiStepLR that drops it.
    """
    if DatasetExperience.dataset.fset is None:

        def replace(experience: Any, dataset: Any) -> None:
            experience._dataset = dataset

        DatasetExperience.dataset = DatasetExperience.dataset.setter(replace)

    def multi_step_lr(*args: Any, verbose: Any = None, **kwargs: Any) -> Any:
        return torch.optim.lr_scheduler.MultiStepLR(*args, **kwargs)

    bic_module.MultiStepLR = multi_step_lr


class Counter(SupervisedPlugin):  # type: ignore[misc]
    """Training samples through a training step, the memory's own minibatch (ER-ACE) included."""

    def __init__(self) -> None:
        super().__init__()
        self.images = 0

    def after_training_iteration(self, strategy: Any, *args: Any, **kwargs: Any) -> None:
        self.images += len(strategy.mb_y)
        if getattr(strategy, "replay_loader", None) is not None:
            self.images += len(strategy.mb_buffer_y)


def avalanche_stream(steps: list[StreamStep]) -> Any:
    """The same experiences as ratchet's steps: its samples, float NCHW tensors in [-1, 1]. A new
    one for every run: BiC moves samples out of the experiences it trains on."""
    images = np.concatenate([s.train.images for s in steps])
    labels = np.concatenate([s.train.labels for s in steps])
    # a user's tensors are NCHW-contiguous; ratchet's layout is restored per minibatch by RatchetLayout
    x = preprocess(torch.from_numpy(images)).clone(memory_format=torch.contiguous_format)
    y = torch.tensor([CLASSES.index(str(c)) for c in labels])
    dataset = TensorDataset(x, y)
    dataset.targets = y.tolist()  # type: ignore[attr-defined]
    order = [CLASSES.index(str(c)) for s in steps for c in dict.fromkeys(s.train.labels.tolist())]
    per_exp = len(order) // len(steps)
    return class_incremental_benchmark(
        {"train": dataset}, class_order=order, num_classes_per_exp=[per_exp] * len(steps)
    )


def run_avalanche(
    steps: list[StreamStep], strategy: str, layout: str, params: TrainParams, test: Split, bic_epochs: int
) -> Outcome:
    benchmark = avalanche_stream(steps)
    seed = params.seed
    torch.manual_seed(seed)
    np.random.seed(seed)
    net: nn.Module = build_model(FASHION_SPEC.with_classes(CLASSES))
    model = RatchetLayout(net) if layout == "same" else net
    optimizer = torch.optim.AdamW(model.parameters(), lr=params.lr, weight_decay=params.weight_decay)
    counter = Counter()
    plugins: list[Any] = [OneCyclePerExperience(params.lr), counter]
    mem = params.replay_memory_per_class * len(CLASSES)
    mem_per_step = round(params.batch_size * params.replay_fraction)  # ratchet's split of a minibatch
    new_per_step = params.batch_size - mem_per_step

    def buffer() -> Any:  # a fixed share per class, as ratchet's memory keeps
        return ClassBalancedBuffer(max_size=mem, adaptive_size=False, total_num_classes=len(CLASSES))

    common: dict[str, Any] = {
        "model": model,
        "optimizer": optimizer,
        "criterion": nn.CrossEntropyLoss(),
        "train_epochs": params.num_epochs,
        "eval_mb_size": 1000,
        "device": "cpu",
        "evaluator": None,  # no metrics or loggers in the timed loop (ratchet computes none either)
    }
    bic: Any = None
    if strategy == "naive":
        learner = Naive(train_mb_size=params.batch_size, plugins=plugins, **common)
    elif strategy == "joint":
        learner = JointTraining(train_mb_size=params.batch_size, plugins=plugins, **common)
    elif strategy == "replay":
        replay = ReplayPlugin(mem, new_per_step, mem_per_step, storage_policy=buffer())
        learner = Naive(train_mb_size=new_per_step, plugins=[replay, *plugins], **common)
    elif strategy == "bic":
        make_bic_run()
        per_class = len(steps[0].train.labels) // len(set(steps[0].train.labels.tolist()))
        bic = BiCPlugin(
            mem,
            new_per_step,
            mem_per_step,
            storage_policy=buffer(),
            val_percentage=bic_val_percentage(per_class, mem),
            stage_2_epochs=bic_epochs,
        )
        learner = Naive(train_mb_size=new_per_step, plugins=[bic, *plugins], **common)
    elif strategy == "er_ace":
        learner = ER_ACE(mem_size=mem, batch_size_mem=mem_per_step, train_mb_size=new_per_step, **common)
        learner.plugins.extend(plugins)
        learner.storage_policy = buffer()
    else:
        raise ValueError(strategy)
    t0 = time.perf_counter()
    if strategy == "joint":
        learner.train(benchmark.train_stream)
    else:
        for experience in benchmark.train_stream:
            learner.train(experience)
    seconds = time.perf_counter() - t0
    model.eval()
    logits_of: Logits = model if bic is None else (lambda x: bic.bias_forward(model(x)))
    return Outcome(accuracy(logits_of, CLASSES, test), counter.images, seconds)


# --- the run ---------------------------------------------------------------------------------


def contenders(strategies: list[str], remedies: list[str]) -> list[tuple[str, str, str]]:
    """(row, tool, strategy) of every training run in one repeat, grouped by row."""
    runs = []
    for name in strategies:
        runs += [(name, "ratchet", name), *((name, f"avalanche-{lay}", name) for lay in LAYOUTS)]
    for name in remedies:
        runs += [(f"replay vs {name}", "ratchet", "replay"), (f"replay vs {name}", "avalanche-same", name)]
    return runs


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per row: medians per tool, and ratchet's per-repeat ratios' medians against each Avalanche."""
    rows: dict[str, Any] = {}
    for row in dict.fromkeys(r["row"] for r in runs):
        mine = [r for r in runs if r["row"] == row]
        tools: dict[str, Any] = {}
        for tool in dict.fromkeys(r["tool"] for r in mine):
            of = [r for r in mine if r["tool"] == tool]
            tools[tool] = {
                "strategy": of[0]["strategy"],
                **{k: statistics.median(r[k] for r in of) for k in KEYS},
            }
        ratios: dict[str, Any] = {}
        for tool in tools:
            if tool == "ratchet":
                continue
            pairs = [
                (a, b)
                for a in mine
                if a["tool"] == "ratchet"
                for b in mine
                if b["tool"] == tool and b["repeat"] == a["repeat"]
            ]
            ratios[tool] = {
                key: statistics.median(a[key] / b[key] for a, b in pairs)
                for key in ("accuracy", "images_per_s", "seconds")
            }
        rows[row] = {"tools": tools, "ratchet_over": ratios}
    return rows


def markdown(doc: dict[str, Any]) -> str:
    p, s = doc["params"], doc["sizes"]
    lines = [
        f"# ratchet against Avalanche {doc['avalanche']} on Fashion-MNIST ({doc['device']})",
        "",
        f"class-incremental, 5 experiences of 2 classes; fraction of the data {doc['fraction']} "
        f"({s['train_per_experience']} training images per experience, {s['test']} test images, "
        f"every class); {p['num_epochs']} epochs, batch {p['batch_size']}, AdamW lr {p['lr']} one-cycle; "
        f"replay memory {p['replay_memory_per_class']}/class, {s['mem_per_step']} of {p['batch_size']} "
        f"samples per minibatch from it; {doc['repeats']} repeats (seeds 0..{doc['repeats'] - 1}), "
        f"medians; BiC stage-2 epochs {doc['bic_stage2_epochs']}; torch {doc['torch']}; "
        f"{doc['minutes']:.0f} minutes",
        "",
        "Accuracy: on the test split after the last experience. Ratios: ratchet / Avalanche. "
        "`user`: Avalanche fed NCHW tensors as a user holds them; `same`: fed ratchet's channels-last "
        "input layout, so only that speed ratio compares the loops.",
        "",
        "| row | ratchet acc | Avalanche acc (user / same) | acc ratio (user / same) | ratchet img/s "
        "| Avalanche img/s (user / same) | speed ratio vs user | speed ratio vs same layout |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]

    def pair(row: dict[str, Any], key: str, fmt: str, ratios: bool) -> str:
        src = row["ratchet_over"] if ratios else row["tools"]
        values = [src.get(f"avalanche-{lay}", {}).get(key) for lay in LAYOUTS]
        return " / ".join("-" if v is None else format(v, fmt) for v in values)

    for name, row in doc["rows"].items():
        ours = row["tools"]["ratchet"]
        over = row["ratchet_over"]
        other = next(t["strategy"] for k, t in row["tools"].items() if k != "ratchet")
        label = name if name in STRATEGIES else f"ratchet replay vs Avalanche {other}"
        speed_user = over.get("avalanche-user", {}).get("images_per_s")
        lines.append(
            f"| {label} | {ours['accuracy']:.3f} | {pair(row, 'accuracy', '.3f', False)} | "
            f"{pair(row, 'accuracy', '.3f', True)} | {ours['images_per_s']:.0f} | "
            f"{pair(row, 'images_per_s', '.0f', False)} | "
            f"{'-' if speed_user is None else format(speed_user, '.2f') + 'x'} | "
            f"{over['avalanche-same']['images_per_s']:.2f}x |"
        )
    lines += ["", "## Targets", "", "| check | value | target | met |", "|---|---:|---|---|"]
    for check, value, target in targets(doc):
        lines.append(f"| {check} | {value:.3f}x | >= {target:.1f}x | {'yes' if value >= target else 'no'} |")
    lines += [
        "",
        "BiC and ER-ACE do other work per step than ratchet's replay (distillation through the previous "
        "model, a bias layer fitted afterwards, a separate forward pass of the memory minibatch): their "
        "speed ratios are for the whole method, not the loop.",
        "",
    ]
    return "\n".join(lines)


def targets(doc: dict[str, Any]) -> list[tuple[str, float, float]]:
    out = []
    for name, row in doc["rows"].items():
        over = row["ratchet_over"]["avalanche-same"]
        if name == "replay" or name.startswith("replay vs"):
            other = next(t["strategy"] for k, t in row["tools"].items() if k != "ratchet")
            out.append((f"replay accuracy / Avalanche {other}", over["accuracy"], 1.0))
        if name in STRATEGIES:
            out.append((f"{name} images/s / Avalanche {name}, same layout", over["images_per_s"], 1.0))
    return out


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    names = list(rows)
    tools = ("ratchet", "avalanche-user", "avalanche-same")
    colours = {"ratchet": "tab:blue", "avalanche-user": "tab:orange", "avalanche-same": "tab:green"}
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.8))
    x = np.arange(len(names))
    for k, tool in enumerate(tools):
        for ax, key in zip(axes, ("accuracy", "images_per_s"), strict=True):
            values = [rows[n]["tools"].get(tool, {}).get(key, np.nan) for n in names]
            ax.bar(x + (k - 1) * 0.27, values, 0.27, color=colours[tool], label=tool)
    labels = [n if n in STRATEGIES else n.replace("replay vs ", "replay vs\n") for n in names]
    for ax, title in zip(axes, ("final test accuracy", "training images/s"), strict=True):
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylim(0, 1)
    axes[0].legend(fontsize=8)
    fig.suptitle(
        f"ratchet vs Avalanche {doc['avalanche']}, class-incremental Fashion-MNIST "
        f"({doc['device']}, fraction {doc['fraction']}, {doc['repeats']} repeats)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    import avalanche  # type: ignore[import-not-found]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fraction", type=float, default=0.1, help="share of Fashion-MNIST's training data")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--strategies", default=",".join(STRATEGIES))
    parser.add_argument("--remedies", default=",".join(REMEDIES), help="Avalanche's rows next to replay")
    parser.add_argument("--bic-stage2-epochs", type=int, default=200, help="Avalanche's default: 200")
    parser.add_argument("--data-dir", type=Path, default=None, help="directory of the IDX .gz files")
    args = parser.parse_args(argv)
    params = FASHION_TRAIN
    check_layouts()
    # one-time imports off the clock: setting torch's determinism flags (ratchet's fit does, every
    # time) imports torch's compiler stack the first time, tens of seconds on a busy machine
    torch.use_deterministic_algorithms(params.deterministic, warn_only=True)
    train, test = load_fashion(*([] if args.data_dir is None else [args.data_dir]))
    steps = class_incremental(train, test, fraction=args.fraction)
    plan = contenders(
        [s for s in args.strategies.split(",") if s], [r for r in args.remedies.split(",") if r]
    )
    runs: list[dict[str, Any]] = []
    ours: dict[tuple[int, str], Outcome] = {}
    t_start = time.perf_counter()
    for repeat in range(args.repeats):
        seeded = dataclasses.replace(params, seed=repeat)
        for row in dict.fromkeys(r for r, _, _ in plan):
            group = [c for c in plan if c[0] == row]
            shift = repeat % len(group)
            for _, tool, strategy in group[shift:] + group[:shift]:
                if tool == "ratchet":
                    # a remedy row's ratchet replay is the replay row's run: same seed, data and knobs
                    key = (repeat, strategy)
                    if key not in ours:
                        ours[key] = run_ratchet(steps, strategy, seeded, test)
                    outcome = ours[key]
                else:
                    layout = tool.removeprefix("avalanche-")
                    outcome = run_avalanche(steps, strategy, layout, seeded, test, args.bic_stage2_epochs)
                run = {"repeat": repeat, "row": row, "tool": tool, "strategy": strategy}
                runs.append({**run, **outcome.row()})
                print(
                    f"repeat {repeat} {row:<16} {tool:<15} acc {outcome.accuracy:.3f} "
                    f"{outcome.images / outcome.seconds:7.0f} img/s ({outcome.seconds:.0f} s)",
                    flush=True,
                )
        # after every repeat: a run cut short still leaves the repeats it finished
        mem_per_step = round(params.batch_size * params.replay_fraction)
        doc: dict[str, Any] = {
            "device": device_label(),
            "avalanche": avalanche.__version__,
            "torch": torch.__version__,
            "fraction": args.fraction,
            "repeats": repeat + 1,
            "bic_stage2_epochs": args.bic_stage2_epochs,
            "sizes": {
                "train_per_experience": [len(s.train.labels) for s in steps],
                "test": len(test.labels),
                "mem_per_step": mem_per_step,
            },
            "params": dataclasses.asdict(params),
            "minutes": (time.perf_counter() - t_start) / 60,
            "rows": summarise(runs),
            "runs": runs,
        }
        part = "" if args.fraction >= 1.0 else f"_f{args.fraction:g}"
        write_results(f"peer_{device_slug()}{part}", doc, markdown, plot)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
