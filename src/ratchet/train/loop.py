"""The training loop and the strategies built on it. Pure PyTorch: logging reaches it via `on_epoch`."""

from __future__ import annotations

import copy
import math
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ratchet.config import TrainParams, parse_strategy
from ratchet.train.checkpoint import Checkpoint
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import (
    Classifier,
    ModelSpec,
    build_model,
    grow_head,
    label_indices,
    load_backbone,
    preprocess,
)
from ratchet.train.strategies import (
    EwcPenalty,
    TransferPlan,
    distillation_loss,
    estimate_fisher,
    online_ewc_state,
)


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
Batch = tuple[torch.Tensor, torch.Tensor]  # (uint8 images, class indices), on the device


class TrainingSet:
    """Training samples where they are cheapest to read. Labels (class indices) always live on the
    device; images too up to `budget_mb`, and then a minibatch is one gather there.

    Larger image sets stay in host memory and are streamed: `workers` threads gather the next
    minibatches ahead of the training step (torch's indexing releases the GIL) into pinned memory,
    and each is copied without blocking, so the copy overlaps compute. Threads, not DataLoader
    worker processes: forked workers of a process that runs Prefect and MLflow died on exit. Both
    paths serve the same indices in the same order, so results do not depend on the path.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, device: torch.device, budget_mb: int, workers: int
    ) -> None:
        x = torch.from_numpy(np.ascontiguousarray(images))
        self.device = device
        self.workers = workers
        self.resident = x.numel() * x.element_size() <= budget_mb * 2**20
        self.x = x.to(device) if self.resident else x
        self.y = torch.from_numpy(labels).to(device)

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def batches(self, order: torch.Tensor, size: int) -> Iterator[Batch]:
        """(images, labels) minibatches of `size` rows in `order` (int64 on the CPU), on the device."""
        on_device = order.to(self.device)  # one copy per epoch, not one per step
        starts = range(0, len(order), size)
        labels = (self.y[on_device[start : start + size]] for start in starts)
        if self.resident:
            yield from zip((self.x[on_device[start : start + size]] for start in starts), labels, strict=True)
        else:
            yield from zip(
                self._streamed([order[start : start + size] for start in starts]), labels, strict=True
            )

    def _streamed(self, chunks: list[torch.Tensor]) -> Iterator[torch.Tensor]:
        pin = self.device.type == "cuda"

        def gather(rows: torch.Tensor) -> torch.Tensor:
            batch = self.x[rows]
            return batch.pin_memory() if pin else batch

        if self.workers == 0:
            for rows in chunks:
                yield gather(rows).to(self.device, non_blocking=True)
            return
        with ThreadPoolExecutor(max_workers=self.workers) as pool:
            ahead: deque[Future[torch.Tensor]] = deque()
            for rows in chunks:
                ahead.append(pool.submit(gather, rows))
                if len(ahead) > 2 * self.workers:  # a bounded window: host memory stays small
                    yield ahead.popleft().result().to(self.device, non_blocking=True)
            while ahead:
                yield ahead.popleft().result().to(self.device, non_blocking=True)

    def take(self, idx: torch.Tensor) -> Batch:
        """Samples `idx` (int64 on the CPU) on the device, outside the training loop."""
        return self.x[idx.to(self.x.device)].to(self.device), self.y[idx.to(self.device)]


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


def replay_log_prior(
    new_y: torch.Tensor, mem_y: torch.Tensor, new_per_step: int, mem_per_step: int, num_classes: int
) -> torch.Tensor:
    """log of each class's expected share of a replay minibatch (new samples + memory draws)."""
    share = torch.bincount(new_y, minlength=num_classes).float() / len(new_y) * new_per_step
    share += torch.bincount(mem_y, minlength=num_classes).float() / len(mem_y) * mem_per_step
    return torch.log(share / share.sum() + 1e-8)


def _initial_model(
    start: Checkpoint | None, initial_spec: ModelSpec, batch_classes: tuple[str, ...], joint: bool
) -> tuple[Classifier, ModelSpec]:
    if start is None:
        spec = initial_spec.with_classes(batch_classes)
        return build_model(spec), spec
    if joint:
        # from scratch, but the champion's class order is kept: indices never move
        spec = start.spec.with_classes(
            start.spec.classes + tuple(c for c in batch_classes if c not in start.spec.classes)
        )
        return build_model(spec), spec
    # a copy: the champion passed in stays intact (it is the LwF teacher and the comparison)
    model = copy.deepcopy(start.model)
    spec = grow_head(model, start.spec, batch_classes)
    return model, spec


def fit(
    start: Checkpoint | None,
    initial_spec: ModelSpec,
    images: np.ndarray,
    labels: np.ndarray,
    params: TrainParams,
    strategy: str,
    on_epoch: EpochCallback | None = None,
    pretrained: str | None = None,
) -> FitResult:
    """Train a candidate on one cycle's training samples.

    `start` is the champion (weights, class map, replay memory, EWC state) or None to bootstrap
    from `initial_spec` (and `pretrained` weights, if given). New classes grow the head; old class
    indices never move. `strategy` is one name or several joined by "+":
      finetune: the new samples only (the naive baseline);
      replay:   each minibatch mixes in the bounded, class-balanced memory of earlier samples;
      ewc:      online elastic weight consolidation towards the champion's weights;
      lwf:      distil the champion's outputs on every minibatch (learning without forgetting);
      transfer: head first, then unfreeze blocks last-first with lower rates for earlier layers;
      joint:    from scratch on every sample given (the caller passes all training data seen).
    The returned checkpoint carries the updated state; the champion's is never modified.
    Seeds and torch's determinism flags are set process-wide: a cycle owns its process.
    """
    parts = parse_strategy(strategy)
    if len(labels) == 0:
        raise ValueError("no training samples")
    seed_everything(params.seed, params.deterministic)
    device = select_device(params.device)
    use_cuda = device.type == "cuda"

    batch_classes = tuple(sorted({str(x) for x in labels}))
    model, spec = _initial_model(start, initial_spec, batch_classes, "joint" in parts)
    if start is None and pretrained:
        load_backbone(model, pretrained)
    memory = start.memory if start is not None else ReplayMemory.empty(spec.image_size, spec.in_channels)
    model = model.to(device)
    if use_cuda:
        model = model.to(memory_format=torch.channels_last)

    champion = start if start is not None and "joint" not in parts else None
    continuing = champion is not None
    teacher = champion.model.to(device).eval() if champion is not None and "lwf" in parts else None
    ewc = (
        EwcPenalty(champion.ewc, model, params.ewc_lambda)
        if champion is not None and champion.ewc is not None and "ewc" in parts
        else None
    )
    transfer = (
        TransferPlan(model, params.transfer_head_epochs, params.transfer_lr_decay)
        if "transfer" in parts and (continuing or pretrained)
        else None
    )

    replay = "replay" in parts and len(memory) > 0 and params.replay_fraction > 0
    new = TrainingSet(
        images, label_indices(labels, spec.classes), device, params.max_resident_mb, params.loader_workers
    )
    if replay:
        mem = TrainingSet(
            memory.images,
            label_indices(memory.labels, spec.classes),
            device,
            params.max_resident_mb,
            params.loader_workers,
        )
        # at least one of each per step, and never more than batch_size in all
        mem_per_step = min(max(1, round(params.batch_size * params.replay_fraction)), params.batch_size - 1)
    else:
        mem_per_step = 0
    new_per_step = max(1, params.batch_size - mem_per_step)
    log_prior = (
        replay_log_prior(new.y, mem.y, new_per_step, mem_per_step, spec.num_classes)
        if replay and params.replay_balance
        else None
    )

    steps_per_epoch = math.ceil(len(new) / new_per_step)
    total_steps = steps_per_epoch * params.num_epochs
    lr = params.finetune_lr if continuing else params.lr
    if transfer is not None:
        groups = [{"params": g} for g in transfer.param_groups(model)]
        max_lr: float | list[float] = [lr * scale for scale in transfer.lr_scales()]
    else:
        groups = [{"params": list(model.parameters())}]
        max_lr = lr
    optimizer = torch.optim.AdamW(groups, lr=lr, weight_decay=params.weight_decay, fused=use_cuda or None)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, total_steps=total_steps, pct_start=0.15
    )
    forward = torch.compile(model) if params.compile else model
    # shuffles come from a CPU generator so CPU and GPU runs see the same sample order
    gen = torch.Generator().manual_seed(params.seed)

    history: list[EpochStats] = []
    processed = 0
    t_start = time.perf_counter()
    for epoch in range(1, params.num_epochs + 1):
        t_epoch = time.perf_counter()
        model.train()
        if transfer is not None:
            transfer.apply(epoch)
        new_batches = new.batches(torch.randperm(len(new), generator=gen), new_per_step)
        if replay:
            picks = torch.randint(len(mem), (steps_per_epoch * mem_per_step,), generator=gen)
            mem_batches: Iterator[Batch | None] = mem.batches(picks, mem_per_step)
        else:
            mem_batches = iter([None] * steps_per_epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.long)
        seen = 0
        for (xb, yb), replayed in zip(new_batches, mem_batches, strict=True):
            if replayed is not None:
                xb, yb = torch.cat([xb, replayed[0]]), torch.cat([yb, replayed[1]])
            inputs = preprocess(xb)
            if use_cuda:
                inputs = inputs.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_cuda):
                logits = forward(inputs)
                # logit adjustment: train against the class prior the sampling imposes, so that at
                # test time (raw logits) new classes are not favoured just for being plentiful
                loss = F.cross_entropy(
                    logits.float() + log_prior if log_prior is not None else logits.float(), yb
                )
                if teacher is not None:
                    with torch.no_grad():
                        teacher_logits = teacher(inputs)
                    loss = loss + params.lwf_alpha * distillation_loss(
                        logits, teacher_logits, params.lwf_temperature
                    )
            if ewc is not None:
                loss = loss + ewc()
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

    model.requires_grad_(True)
    model.eval()
    ewc_state = start.ewc if start is not None else None
    if "ewc" in parts:
        n = min(len(new), params.ewc_fisher_samples)
        fisher = estimate_fisher(model, *new.take(torch.randperm(len(new), generator=gen)[:n]))
        ewc_state = online_ewc_state(ewc_state, fisher, model, params.ewc_gamma)
    # the memory is continual-learning state kept whatever this cycle's strategy, so a later
    # replay cycle can protect classes first learned under another strategy
    new_memory = memory.updated(images, labels, params.replay_memory_per_class, params.seed)
    model = model.to(memory_format=torch.contiguous_format).to("cpu")
    if champion is not None:
        champion.model.to("cpu")  # the teacher went to the device; the caller's champion stays on the CPU
    return FitResult(
        checkpoint=Checkpoint(model=model, spec=spec, memory=new_memory, ewc=ewc_state),
        history=tuple(history),
        images_processed=processed,
        seconds=time.perf_counter() - t_start,
        device=str(device),
    )
