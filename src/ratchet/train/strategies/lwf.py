"""lwf: learning without forgetting (Li & Hoiem): distil the champion's outputs on every minibatch."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ratchet.train.checkpoint import StrategyState
from ratchet.train.memory import ReplayMemory
from ratchet.train.strategies.base import Run, Step, Strategy


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(teacher || student) on the teacher's classes, softened by `temperature` (Hinton et al.)."""
    k = teacher_logits.shape[1]
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits[:, :k].float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


class Lwf(Strategy):
    name = "lwf"

    def setup(self, run: Run) -> None:
        # the champion itself is the teacher: the loop trains a copy, so it is never modified
        self.teacher = run.champion.model.to(run.device).eval() if run.champion is not None else None

    def extra_loss(self, step: Step) -> torch.Tensor | None:
        if self.teacher is None:
            return None
        with torch.no_grad():
            teacher_logits = self.teacher(step.inputs)
        return self.params.lwf_alpha * distillation_loss(
            step.logits, teacher_logits, self.params.lwf_temperature
        )

    def finish(self, run: Run, generator: torch.Generator, memory: ReplayMemory) -> StrategyState | None:
        if self.teacher is not None:
            self.teacher.to("cpu")  # the caller's champion stays on the CPU
        return None


UNIT = Lwf
