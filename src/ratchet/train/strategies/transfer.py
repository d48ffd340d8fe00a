"""transfer: from a champion or pretrained weights, train the head first, then unfreeze feature
blocks one per epoch from the last, each with a lower learning rate (discriminative rates)."""

from __future__ import annotations

from torch import nn

from ratchet.train.model import Classifier
from ratchet.train.strategies.base import Run, Strategy


class TransferPlan:
    """Head first, then unfreeze feature blocks one per epoch from the last, each with a lower lr.

    Block at distance d from the head trains at lr * decay**d (discriminative learning rates).
    Frozen blocks stay in eval mode so their batch-norm statistics do not drift either.
    """

    def __init__(self, model: Classifier, head_epochs: int, decay: float) -> None:
        self.blocks = model.blocks()[::-1]  # nearest the head first
        self.head_epochs = head_epochs
        self.decay = decay

    def lr_scales(self) -> list[float]:
        """One per optimizer param group: head, then blocks nearest the head first."""
        return [1.0] + [self.decay ** (d + 1) for d in range(len(self.blocks))]

    def param_groups(self, model: Classifier) -> list[list[nn.Parameter]]:
        grouped = {id(p) for b in self.blocks for p in b.parameters()}
        head = [p for p in model.parameters() if id(p) not in grouped]
        return [head] + [list(b.parameters()) for b in self.blocks]

    def apply(self, epoch: int) -> int:
        """Freeze/unfreeze for a 1-based epoch; returns how many blocks train."""
        trainable = max(0, epoch - self.head_epochs)
        for i, block in enumerate(self.blocks):
            on = i < trainable
            block.requires_grad_(on)
            block.train(on)
        return min(trainable, len(self.blocks))


class Transfer(Strategy):
    name = "transfer"
    freezes = True  # frozen blocks

    def setup(self, run: Run) -> None:
        # from scratch there is nothing to transfer: every layer trains from the start
        self.plan = (
            TransferPlan(run.model, self.params.transfer_head_epochs, self.params.transfer_lr_decay)
            if run.origin != "scratch"
            else None
        )

    def param_groups(self, model: Classifier) -> list[tuple[list[nn.Parameter], float]] | None:
        if self.plan is None:
            return None
        return list(zip(self.plan.param_groups(model), self.plan.lr_scales(), strict=True))

    def start_epoch(self, epoch: int) -> None:
        if self.plan is not None:
            self.plan.apply(epoch)


UNIT = Transfer
