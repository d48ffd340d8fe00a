"""What a strategy is: hooks the flat training loop in `ratchet.train.loop.fit` calls, each a no-op here.

A unit sees the run (`Run`) once before the first step, may ask for memory samples in every
minibatch, may own the data loss or add a term to it per minibatch (`Step`), may reshape the
optimizer's parameter groups, and returns the state it keeps for the next cycle (saved with the
checkpoint as `<name>.pt`).
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Literal

import torch
from torch import nn

from ratchet.config import TrainParams
from ratchet.train import strategies
from ratchet.train.checkpoint import Checkpoint, StrategyState
from ratchet.train.feed import TrainingSet
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import Classifier, ModelSpec

if TYPE_CHECKING:  # torch.distributed comes in only for a run with several processes
    from ratchet.train.distributed import World

# where a candidate's weights come from, decided once per fit:
#   scratch: random init; champion: a copy of the parent (head grown); pretrained: a local state_dict
Origin = Literal["scratch", "champion", "pretrained"]


@dataclass(frozen=True)
class Run:
    params: TrainParams
    origin: Origin
    model: Classifier  # the candidate, on the device
    spec: ModelSpec  # the candidate's classes (the champion's first, in its order)
    champion: Checkpoint | None  # the parent, when the candidate continues from it
    device: torch.device
    new: TrainingSet  # this cycle's training samples
    memory: ReplayMemory  # the memory as the parent left it
    drawn: TrainingSet | None  # the memory's samples, when units draw from it every minibatch
    new_per_step: int  # per rank, with several processes
    mem_per_step: int
    world: World | None = None  # the processes training together (data-parallel); None: this one alone


@dataclass(frozen=True)
class Step:
    inputs: torch.Tensor  # preprocessed minibatch: this cycle's samples first, then memory draws
    logits: torch.Tensor  # the candidate's outputs on `inputs`
    labels: torch.Tensor  # class indices
    n_new: int  # rows [:n_new] are new samples, rows [n_new:] memory draws
    mem_rows: torch.Tensor | None  # the drawn rows' indices into `Run.memory` (CPU int64)


class Strategy:
    name: ClassVar[str]
    fresh_start: ClassVar[bool] = False  # random weights even when a champion exists
    trains_on_all_seen: ClassVar[bool] = False  # train data: every batch seen, not just the new ones
    freezes: ClassVar[bool] = False  # some parameters get no gradient in some steps (DDP must know)

    def __init__(self, params: TrainParams) -> None:
        self.params = params

    def memory_share(self) -> float:
        """Share of each minibatch to draw from the replay memory (0: none)."""
        return 0.0

    def setup(self, run: Run) -> None:
        """Called once, with the model on the device, before the optimizer is built."""

    def param_groups(self, model: Classifier) -> list[tuple[list[nn.Parameter], float]] | None:
        """Optimizer parameter groups with their learning-rate scales; None: one group at scale 1."""
        return None

    def start_epoch(self, epoch: int) -> None:
        """Called with the 1-based epoch after the model is set to train mode."""

    def data_loss(self, step: Step) -> torch.Tensor | None:
        """The minibatch's data loss, for a unit that owns it; None: plain cross-entropy on all rows."""
        return None

    def extra_loss(self, step: Step) -> torch.Tensor | None:
        """A term added to the data loss, or None."""
        return None

    def finish(self, run: Run, generator: torch.Generator, memory: ReplayMemory) -> StrategyState | None:
        """After the last epoch (model in eval mode, on the device; `memory` as the candidate keeps it):
        the state to keep for the next cycle, or None to carry the parent's unchanged."""
        return None


def pad_to(t: torch.Tensor, shape: torch.Size, fill: float = 0.0) -> torch.Tensor:
    """Pad a tensor whose first dimension grew (a head with new classes) with `fill`."""
    if t.shape == shape:
        return t
    out = torch.full(shape, fill, dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    return out


def unit_classes(name: str) -> list[type[Strategy]]:
    """The unit classes of a strategy (or combination); imports their modules (and torch)."""
    return [
        importlib.import_module(f"ratchet.train.strategies.{part}").UNIT for part in strategies.parse(name)
    ]


def load(name: str, params: TrainParams) -> list[Strategy]:
    """The units of a strategy (or combination), ready for one `fit`."""
    return [unit(params) for unit in unit_classes(name)]


def trains_on_all_seen(name: str) -> bool:
    """Whether its training data is every batch seen so far, not just the new ones (joint)."""
    return any(unit.trains_on_all_seen for unit in unit_classes(name))
