"""ewc: online elastic weight consolidation towards the champion's weights (Kirkpatrick et al.,
Schwarz et al.). State kept between cycles: the decayed Fisher information and the anchor weights."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ratchet.train.checkpoint import StrategyState
from ratchet.train.memory import ReplayMemory
from ratchet.train.model import Classifier, preprocess
from ratchet.train.strategies.base import Run, Step, Strategy, pad_to


class EwcPenalty:
    """(lambda/2) * sum_i F_i (theta_i - theta*_i)^2 over the parameters the state covers."""

    def __init__(self, state: StrategyState, model: nn.Module, strength: float) -> None:
        params = dict(model.named_parameters())
        self.strength = strength
        self.terms = [
            (
                params[name],
                pad_to(state["fisher"][name], params[name].shape).to(params[name].device),
                pad_to(state["anchor"][name], params[name].shape).to(params[name].device),
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
    return {n: f / max(1, len(labels)) for n, f in fisher_sums(model, images, labels).items()}


def fisher_sums(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    """The squared per-sample gradients of `estimate_fisher`, summed, not yet averaged."""
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
    return fisher


def shared_fisher(run: Run, picks: torch.Tensor) -> dict[str, torch.Tensor]:
    """`estimate_fisher` over `picks` with several processes: each rank takes every size-th sample,
    the sums are added over the ranks, so every rank holds the Fisher of all `picks`."""
    from ratchet.train import distributed

    assert run.world is not None
    mine = picks[run.world.rank :: run.world.size]
    sums = fisher_sums(run.model, *run.new.take(mine))
    # in the model's parameter order, the same on every rank: the collectives pair up
    return {n: distributed.all_sum(f) / max(1, len(picks)) for n, f in sums.items()}


def online_ewc_state(
    previous: StrategyState | None, fisher: dict[str, torch.Tensor], model: nn.Module, gamma: float
) -> StrategyState:
    """Online EWC: decay the earlier Fisher, add this cycle's, anchor at the weights just trained."""
    anchor = {n: p.detach().clone() for n, p in model.named_parameters()}
    if previous is not None:
        fisher = {
            n: f + gamma * pad_to(previous["fisher"][n].to(f.device), f.shape)
            if n in previous["fisher"]
            else f
            for n, f in fisher.items()
        }
    return {"fisher": fisher, "anchor": anchor}


class Ewc(Strategy):
    name = "ewc"

    def setup(self, run: Run) -> None:
        self.previous = run.champion.states.get(self.name) if run.champion is not None else None
        self.penalty = (
            EwcPenalty(self.previous, run.model, self.params.ewc_lambda)
            if self.previous is not None
            else None
        )

    def extra_loss(self, step: Step) -> torch.Tensor | None:
        return self.penalty() if self.penalty is not None else None

    def finish(self, run: Run, generator: torch.Generator, memory: ReplayMemory) -> StrategyState:
        n = min(len(run.new), self.params.ewc_fisher_samples)
        picks = torch.randperm(len(run.new), generator=generator)[:n]  # the same on every rank
        fisher = (
            estimate_fisher(run.model, *run.new.take(picks))
            if run.world is None
            else shared_fisher(run, picks)
        )
        return online_ewc_state(self.previous, fisher, run.model, self.params.ewc_gamma)


UNIT = Ewc
