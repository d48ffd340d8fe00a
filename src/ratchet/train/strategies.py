"""The pieces continual-learning strategies add to the loop: EWC, LwF and transfer's freezing plan."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ratchet.train.checkpoint import EwcState
from ratchet.train.model import Classifier, preprocess


def _pad_to(t: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """Zero-pad a tensor whose first dimension grew (a head with new classes): new rows are unconstrained."""
    if t.shape == shape:
        return t
    out = torch.zeros(shape, dtype=t.dtype, device=t.device)
    out[: t.shape[0]] = t
    return out


class EwcPenalty:
    """(lambda/2) * sum_i F_i (theta_i - theta*_i)^2 over the parameters the state covers."""

    def __init__(self, state: EwcState, model: nn.Module, strength: float) -> None:
        params = dict(model.named_parameters())
        self.strength = strength
        self.terms = [
            (
                params[name],
                _pad_to(state["fisher"][name], params[name].shape).to(params[name].device),
                _pad_to(state["anchor"][name], params[name].shape).to(params[name].device),
            )
            for name in state["fisher"]
            if name in params
        ]

    def __call__(self) -> torch.Tensor:
        total = sum((f * (p - a).pow(2)).sum() for p, f, a in self.terms)
        return 0.5 * self.strength * torch.as_tensor(total)


def estimate_fisher(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """Diagonal empirical Fisher: mean over samples of the squared per-sample gradient of the loss.

    Per-sample (not per-batch) gradients: squaring a batch gradient would underestimate it by the
    batch size and mix samples. Run in eval mode so batch norm uses its running statistics.
    """
    was_training = model.training
    model.eval()
    fisher = {n: torch.zeros_like(p) for n, p in model.named_parameters() if p.requires_grad}
    for x, y in zip(images, labels, strict=True):
        model.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(preprocess(x[None])).float(), y[None])
        loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None and n in fisher:
                fisher[n] += p.grad.detach().pow(2)
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return {n: f / max(1, len(labels)) for n, f in fisher.items()}


def online_ewc_state(
    previous: EwcState | None, fisher: dict[str, torch.Tensor], model: nn.Module, gamma: float
) -> EwcState:
    """Online EWC: decay the earlier Fisher, add this cycle's, anchor at the weights just trained."""
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    if previous is not None:
        fisher = {
            n: f + gamma * _pad_to(previous["fisher"][n].to(f.device), f.shape)
            if n in previous["fisher"]
            else f
            for n, f in fisher.items()
        }
    return {"fisher": fisher, "anchor": anchor}


def distillation_loss(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """LwF: KL(teacher || student) on the teacher's classes, softened by `temperature` (Hinton et al.)."""
    k = teacher_logits.shape[1]
    t = temperature
    return F.kl_div(
        F.log_softmax(student_logits[:, :k].float() / t, dim=1),
        F.log_softmax(teacher_logits.float() / t, dim=1),
        log_target=True,
        reduction="batchmean",
    ) * (t * t)


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
