"""The training loop and the strategies built on it. Pure PyTorch: logging reaches it via `on_epoch`."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ratchet.config import TrainParams
from ratchet.train.checkpoint import Checkpoint
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import ModelSpec, build_model, grow_head, label_indices, preprocess


@dataclass(frozen=True)
class EpochStats:
    epoch: int  # 1-based
    loss: float
    accuracy: float  # on the training samples seen this epoch (new and replayed)
    seconds: float


@dataclass(frozen=True)
class FitResult:
    checkpoint: Checkpoint
    history: tuple[EpochStats, ...]
    images_processed: int
    seconds: float
    device: str


EpochCallback = Callable[[EpochStats], None]


def select_device(choice: str) -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("train.device is cuda but no CUDA device is available")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def seed_everything(seed: int, deterministic: bool) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    # repeatable runs are what `dvc repro` checks; the fast cudnn autotuner is not repeatable
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=True)


def fit(
    start: Checkpoint | None,
    initial_spec: ModelSpec,
    images: np.ndarray,
    labels: np.ndarray,
    params: TrainParams,
    strategy: str,
    on_epoch: EpochCallback | None = None,
) -> FitResult:
    """Train a candidate on one cycle's new training samples.

    `start` is the champion (weights, class map and replay memory) or None to bootstrap from
    `initial_spec`. Classes the champion never saw grow its head. `strategy`:
      finetune: the new samples only;
      replay:   each minibatch mixes new samples with the champion's replay memory.
    The returned checkpoint carries the updated memory (the champion's memory is never modified).
    Seeds and torch's determinism flags are set process-wide: a cycle owns its process.
    """
    if strategy not in ("finetune", "replay"):
        raise ValueError(f"unknown strategy {strategy!r}")
    if len(labels) == 0:
        raise ValueError("no training samples")
    seed_everything(params.seed, params.deterministic)
    device = select_device(params.device)

    batch_classes = tuple(sorted({str(x) for x in labels}))
    if start is None:
        spec = initial_spec.with_classes(batch_classes)
        model = build_model(spec)
        memory = ReplayMemory.empty(spec.image_size, spec.in_channels)
    else:
        # a copy: the champion passed in stays intact for comparison
        model, spec, memory = copy.deepcopy(start.model), start.spec, start.memory
        spec = grow_head(model, spec, batch_classes)
    model = model.to(device)

    replay = strategy == "replay" and len(memory) > 0 and params.replay_fraction > 0
    new_x = torch.from_numpy(np.ascontiguousarray(images)).to(device)
    new_y = torch.from_numpy(label_indices(labels, spec.classes)).to(device)
    if replay:
        mem_x = torch.from_numpy(np.ascontiguousarray(memory.images)).to(device)
        mem_y = torch.from_numpy(label_indices(memory.labels, spec.classes)).to(device)
        # at least one of each per step, and never more than batch_size in all
        mem_per_step = min(max(1, round(params.batch_size * params.replay_fraction)), params.batch_size - 1)
    else:
        mem_per_step = 0
    new_per_step = max(1, params.batch_size - mem_per_step)

    steps_per_epoch = math.ceil(len(new_y) / new_per_step)
    total_steps = steps_per_epoch * params.num_epochs
    use_cuda = device.type == "cuda"
    lr = params.lr if start is None else params.finetune_lr
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=lr, weight_decay=params.weight_decay, fused=use_cuda or None
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.15
    )
    # shuffles come from a CPU generator so CPU and GPU runs see the same sample order
    gen = torch.Generator().manual_seed(params.seed)

    history: list[EpochStats] = []
    processed = 0
    t_start = time.perf_counter()
    model.train()
    for epoch in range(1, params.num_epochs + 1):
        t_epoch = time.perf_counter()
        order = torch.randperm(len(new_y), generator=gen).to(device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for step in range(steps_per_epoch):
            idx = order[step * new_per_step : (step + 1) * new_per_step]
            xb, yb = new_x[idx], new_y[idx]
            if replay:
                pick = torch.randint(len(mem_y), (mem_per_step,), generator=gen).to(device)
                xb = torch.cat([xb, mem_x[pick]])
                yb = torch.cat([yb, mem_y[pick]])
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_cuda):
                logits = model(preprocess(xb))
                loss = F.cross_entropy(logits.float(), yb)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            # accumulate on the device: one host sync per epoch, not per step
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
        processed += seen
        stats = EpochStats(
            epoch=epoch,
            loss=float(loss_sum) / seen,
            accuracy=float(correct) / seen,
            seconds=time.perf_counter() - t_epoch,
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)

    model.eval()
    # the memory is continual-learning state kept whatever this cycle's strategy, so a later
    # replay cycle can protect classes first learned under finetune
    new_memory = memory.updated(images, labels, params.replay_memory_per_class, params.seed)
    return FitResult(
        checkpoint=Checkpoint(model=model.to("cpu"), spec=spec, memory=new_memory),
        history=tuple(history),
        images_processed=processed,
        seconds=time.perf_counter() - t_start,
        device=str(device),
    )
