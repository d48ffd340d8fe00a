"""The training loop, flat: one cycle's candidate from its parent (or from scratch). Pure PyTorch.

What differs between strategies lives in their units (`ratchet.train.strategies`); logging reaches
the loop through `on_epoch`.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from ratchet.config import TrainParams
from ratchet.train.checkpoint import Checkpoint
from ratchet.train.feed import Batch, TrainingSet, pin_threads, seed_everything, select_device
from ratchet.train.memory import Origins, ReplayMemory
from ratchet.train.model import (
    Classifier,
    ModelSpec,
    build_model,
    grow_head,
    label_indices,
    load_backbone,
    preprocess,
)
from ratchet.train.strategies.base import Origin, Run, Step, Strategy, load

if TYPE_CHECKING:  # imported when a run has a world (see `fit`): a lone process initialises nothing
    from ratchet.train.distributed import World


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
    images_processed: int  # by every rank together
    seconds: float
    device: str


EpochCallback = Callable[[EpochStats], None]


def fit(
    start: Checkpoint | None,
    initial_spec: ModelSpec,
    images: np.ndarray,
    labels: np.ndarray,
    params: TrainParams,
    on_epoch: EpochCallback | None = None,
    pretrained: str | None = None,
    world: World | None = None,
    origins: Origins | None = None,
) -> FitResult:
    """Train a candidate with `params.strategy` on one cycle's training samples.

    `start` is the parent (weights, class map, replay memory, strategy state) or None to bootstrap
    from `initial_spec` (and `pretrained` weights, if given). New classes grow the head; old class
    indices never move. The returned checkpoint carries the updated state; the parent's is never
    modified. Seeds and torch's determinism flags are set process-wide: a cycle owns its process.

    With a `world` of several processes (data-parallel: `ratchet.train.distributed`), every rank
    calls this with the same arguments: each trains on its share of every epoch's samples with a
    `batch_size / world.size` minibatch, gradients are averaged over the ranks, and every rank
    returns the same weights (rank 0's result is the one to keep).

    `origins`: where each training sample came from, which the replay memory keeps with the samples
    it stores, so the checkpoint saves them as references rather than pixels.
    """
    units = load(params.strategy, params)
    if len(labels) == 0:
        raise ValueError("no training samples")
    size, per_rank = 1, params.batch_size
    seed_everything(params.seed, params.deterministic, params.compile)
    pin_threads(params.threads)
    device = select_device(params.device)
    if world is not None:
        from ratchet.train import distributed

        size, per_rank = world.size, distributed.per_rank_batch(params.batch_size, world.size)
        device = distributed.join(world, device)
    use_cuda = device.type == "cuda"

    # where the weights come from, decided once
    origin: Origin = (
        "champion"
        if start is not None and not any(u.fresh_start for u in units)
        else "pretrained"
        if start is None and pretrained
        else "scratch"
    )
    model, spec = _initial_model(origin, start, initial_spec, labels, pretrained)
    memory = start.memory if start is not None else ReplayMemory.empty(spec.image_size, spec.in_channels)
    if memory is None:
        raise ValueError("the parent was loaded without its replay memory (load it with a sample lookup)")
    model = model.to(device)
    if use_cuda:
        model = model.to(memory_format=torch.channels_last)

    budget, workers = params.max_resident_mb, params.loader_workers
    new = TrainingSet(images, label_indices(labels, spec.classes), device, budget, workers)
    share = max(u.memory_share() for u in units)
    drawn = (
        TrainingSet(memory.images, label_indices(memory.labels, spec.classes), device, budget, workers)
        if share > 0 and len(memory) > 0
        else None
    )
    # per rank; at least one of each per step, and never more than the rank's batch in all
    mem_per_step = min(max(1, round(per_rank * share)), per_rank - 1) if drawn is not None else 0
    new_per_step = max(1, per_rank - mem_per_step)
    run = Run(
        params=params,
        origin=origin,
        model=model,
        spec=spec,
        champion=start if origin == "champion" else None,
        device=device,
        new=new,
        memory=memory,
        drawn=drawn,
        new_per_step=new_per_step,
        mem_per_step=mem_per_step,
        world=world,
    )
    for unit in units:
        unit.setup(run)

    # every rank holds ceil(n / size) of an epoch's samples (`distributed.shard`): the same step count
    steps_per_epoch = math.ceil(math.ceil(len(new) / size) / new_per_step)
    # smaller steps when continuing from the champion keep what it knew
    lr = params.finetune_lr if origin == "champion" else params.lr
    optimizer, schedule = _optimizer(run, units, lr, steps_per_epoch * params.num_epochs)
    trained: torch.nn.Module = model
    if world is not None:
        trained = distributed.wrap(model, device, find_unused=any(u.freezes for u in units))
    forward = torch.compile(trained) if params.compile else trained
    # shuffles come from a CPU generator so CPU and GPU runs see the same sample order
    gen = torch.Generator().manual_seed(params.seed)

    history: list[EpochStats] = []
    processed = 0
    t_start = time.perf_counter()
    for epoch in range(1, params.num_epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        for unit in units:
            unit.start_epoch(epoch)
        # every rank draws the same order and memory picks (same generator, same seed) and keeps
        # its share, so the generator stays in step across ranks for what follows (ewc's samples)
        order = torch.randperm(len(new), generator=gen)
        if world is not None:
            order = distributed.shard(order, world)
        new_batches = new.batches(order, new_per_step)
        picks: torch.Tensor | None = None
        mem_batches: Iterator[Batch | None] = itertools.repeat(None)
        if drawn is not None:
            picks = torch.randint(len(drawn), (steps_per_epoch * mem_per_step * size,), generator=gen)
            if world is not None:  # each step's draws for the whole world, a slice per rank
                picks = picks.view(steps_per_epoch, size, mem_per_step)[:, world.rank].reshape(-1)
            mem_batches = drawn.batches(picks, mem_per_step)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for i, ((xb, yb), mem_batch) in enumerate(zip(new_batches, mem_batches, strict=False)):
            n_new = len(yb)
            if mem_batch is not None:
                xb, yb = torch.cat([xb, mem_batch[0]]), torch.cat([yb, mem_batch[1]])
            inputs = preprocess(xb)
            if use_cuda:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_cuda):
                logits = forward(inputs)
                rows = picks[i * mem_per_step : (i + 1) * mem_per_step] if picks is not None else None
                step = Step(inputs=inputs, logits=logits, labels=yb, n_new=n_new, mem_rows=rows)
                owned = [loss for u in units if (loss := u.data_loss(step)) is not None]
                loss = owned[0] if owned else F.cross_entropy(logits.float(), yb)
                for unit in units:
                    extra = unit.extra_loss(step)
                    if extra is not None:
                        loss = loss + extra
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            # accumulate on the device: one host sync per epoch, not per step
            loss_sum += loss.detach() * len(yb)
            correct += (logits.argmax(1) == yb).sum()
            seen += len(yb)
        if world is not None:  # the epoch's figures over every rank's samples
            distributed.all_sum(loss_sum)
            distributed.all_sum(correct)
            seen = int(distributed.all_sum(torch.tensor(seen, device=device)))
        processed += seen
        stats = EpochStats(
            epoch, float(loss_sum) / seen, float(correct) / seen, time.perf_counter() - t_epoch
        )
        history.append(stats)
        if on_epoch is not None:
            on_epoch(stats)

    model.requires_grad_(True)
    model.eval()
    # the memory is continual-learning state kept whatever this cycle's strategy, so a later
    # replay cycle can protect classes first learned under another strategy
    new_memory = memory.updated(images, labels, params.replay_memory_per_class, params.seed, origins)
    states = dict(start.states) if start is not None else {}
    for unit in units:
        state = unit.finish(run, gen, new_memory)
        if state is not None:
            states[unit.name] = state
    model = model.to(memory_format=torch.contiguous_format).to("cpu")
    return FitResult(
        checkpoint=Checkpoint(model=model, spec=spec, memory=new_memory, states=states),
        history=tuple(history),
        images_processed=processed,
        seconds=time.perf_counter() - t_start,
        device=str(device),
    )


def _initial_model(
    origin: Origin,
    start: Checkpoint | None,
    initial_spec: ModelSpec,
    labels: np.ndarray,
    pretrained: str | None,
) -> tuple[Classifier, ModelSpec]:
    """The candidate before training, on the CPU, with a head for every class it will know."""
    batch_classes = tuple(sorted({str(x) for x in labels}))
    if origin == "champion":
        assert start is not None
        model = copy.deepcopy(start.model)  # the parent stays intact: it is the comparison (and a teacher)
        return model, grow_head(model, start.spec, batch_classes)
    # a fresh model keeps the parent's class order: indices never move
    known = start.spec.classes if start is not None else ()
    base = start.spec if start is not None else initial_spec
    spec = base.with_classes(known + tuple(c for c in batch_classes if c not in known))
    model = build_model(spec)
    if origin == "pretrained":
        assert pretrained is not None
        load_backbone(model, pretrained)
    return model, spec


def _optimizer(
    run: Run, units: list[Strategy], lr: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.OneCycleLR]:
    """AdamW under a one-cycle schedule; a unit may split the parameters into groups with their own
    rate scales (transfer: lower rates further from the head)."""
    model, params = run.model, run.params
    shaped = next((g for u in units if (g := u.param_groups(model)) is not None), None)
    groups = [{"params": group} for group, _ in shaped] if shaped else [{"params": list(model.parameters())}]
    max_lr: float | list[float] = [lr * scale for _, scale in shaped] if shaped else lr
    fused = run.device.type == "cuda" or None
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=params.weight_decay, fused=fused)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.15
    )
    return optimizer, schedule
