"""Where training samples live and how minibatches reach the device; the device and the seeds."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

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


def pin_threads(threads: int) -> None:
    """train.threads: the thread count decides how sums are split, so it decides the last bits of
    the weights on a CPU; 0 leaves torch's default (one per core)."""
    if threads > 0:
        torch.set_num_threads(threads)


def seed_everything(seed: int, deterministic: bool, compiled: bool = False) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    # repeatable runs are what `dvc repro` checks; the fast cudnn autotuner is not repeatable
    torch.backends.cudnn.benchmark = not deterministic
    if compiled:  # torch.compile's kernels have a switch of their own, which this also sets
        torch.use_deterministic_algorithms(deterministic, warn_only=True)
    else:
        # the same switch for eager kernels, without importing the compiler's config to set its
        # own (over a second of every training process, for a compiler it does not use)
        torch._C._set_deterministic_algorithms(deterministic, warn_only=True)
