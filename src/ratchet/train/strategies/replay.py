"""replay: each minibatch mixes in samples drawn from the bounded, class-balanced replay memory.

With `replay_balance`, the loss is logit-adjusted against the class prior the sampling imposes, so
that at test time (raw logits) new classes are not favoured just for being plentiful.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ratchet.train.strategies.base import Run, Step, Strategy


def replay_log_prior(
    new_y: torch.Tensor, mem_y: torch.Tensor, new_per_step: int, mem_per_step: int, num_classes: int
) -> torch.Tensor:
    """log of each class's expected share of a replay minibatch (new samples + memory draws)."""
    share = torch.bincount(new_y, minlength=num_classes).float() / len(new_y) * new_per_step
    share += torch.bincount(mem_y, minlength=num_classes).float() / len(mem_y) * mem_per_step
    return torch.log(share / share.sum() + 1e-8)


class Replay(Strategy):
    name = "replay"

    def memory_share(self) -> float:
        return self.params.replay_fraction

    def setup(self, run: Run) -> None:
        self.log_prior = (
            replay_log_prior(run.new.y, run.drawn.y, run.new_per_step, run.mem_per_step, run.spec.num_classes)
            if run.drawn is not None and self.params.replay_balance
            else None
        )

    def data_loss(self, step: Step) -> torch.Tensor | None:
        if self.log_prior is None:
            return None
        return F.cross_entropy(step.logits.float() + self.log_prior, step.labels)


UNIT = Replay
