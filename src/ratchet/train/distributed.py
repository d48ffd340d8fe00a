"""Data-parallel training over several processes, one per device: who this process is among them,
its share of each epoch's samples, and sums over all of them. Pure PyTorch (torch.distributed).

torchrun (or the train stage's own launcher) names the world in the environment: WORLD_SIZE, RANK,
LOCAL_RANK. A process alone in it gets no `World`, and `fit` then takes none of the paths here:
nothing is initialised, and torch.distributed is imported only by the functions that use it.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from ratchet.errors import InputError

if TYPE_CHECKING:
    from torch.nn.parallel import DistributedDataParallel


@dataclass(frozen=True)
class World:
    rank: int  # 0..size-1 over every node; rank 0 alone writes what the run leaves behind
    size: int  # processes in all
    local_rank: int  # on this node: which CUDA device this process drives

    @property
    def lead(self) -> bool:
        return self.rank == 0


def from_env() -> World | None:
    """This process's place in a world torchrun (or the train stage's launcher) set up; None alone."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1 or "RANK" not in os.environ:
        return None
    return World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))


def per_rank_batch(batch_size: int, size: int) -> int:
    """Each rank's share of train.batch_size: the same global batch as one device takes, so the
    same steps and learning rates apply; refused in one line when it does not split evenly."""
    if batch_size % size:
        raise InputError(
            f"train.batch_size {batch_size} does not split over {size} devices: "
            "make it a multiple of the device count"
        )
    return batch_size // size


def join(world: World, device: torch.device) -> torch.device:
    """Join the process group: gloo between CPU processes, nccl between CUDA devices (this process
    drives the one at its LOCAL_RANK). Returns the device to train on."""
    import torch.distributed as dist

    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise InputError(
                f"local rank {world.local_rank} has no CUDA device ({torch.cuda.device_count()} on this node)"
            )
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if dist.get_world_size() != world.size or dist.get_rank() != world.rank:
        raise RuntimeError(f"the process group is not the world the environment names ({world})")
    return device


def leave() -> None:
    import torch.distributed as dist

    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, device: torch.device, find_unused: bool) -> DistributedDataParallel:
    """DDP: gradients are averaged over the ranks during backward, so every rank takes the same step
    from the same weights (rank 0's, broadcast here). `find_unused`: some parameters sit out a step
    (frozen blocks), which DDP must be told or it waits for their gradients forever."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    # a 1-channel conv's weight gradient comes back with other strides along its size-1 dimension
    # than the weight's: the same memory order, but DDP compares the strides and warns on every run
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    return DistributedDataParallel(model, device_ids=ids, find_unused_parameters=find_unused)


def shard(order: torch.Tensor, world: World) -> torch.Tensor:
    """This rank's rows of an epoch's order, as torch's DistributedSampler splits them: every rank
    holds the same order (same seed), pads it by repeating its first rows to a multiple of the world
    size, and takes every size-th row from its rank on. Every rank gets ceil(n / size) rows, so all
    take the same number of steps (a rank with fewer would leave the others waiting in all-reduce);
    at most size - 1 samples are seen twice an epoch."""
    n = len(order)
    total = -(-n // world.size) * world.size
    padded = order.repeat(-(-total // n))[:total]  # n < size repeats the order more than once
    return padded[world.rank : total : world.size]


def all_sum(t: torch.Tensor) -> torch.Tensor:
    """`t` summed over every rank, in place (and returned)."""
    import torch.distributed as dist

    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t
