"""Each strategy demonstrably changes training: EWC's penalty, LwF's teacher, transfer's freezing, joint."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

from ratchet.errors import InputError
from ratchet.evaluate import split_metrics
from ratchet.train.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ratchet.train.loop import fit
from ratchet.train.model import ModelSpec, ResNet18, build_model, grow_head, load_backbone, preprocess
from ratchet.train.strategies.ewc import EwcPenalty
from ratchet.train.strategies.lwf import distillation_loss
from ratchet.train.strategies.replay import replay_log_prior
from ratchet.train.strategies.transfer import TransferPlan

from .toy import PARAMS, SPEC, make, params, same_state, state


@pytest.fixture(scope="module")
def ewc_champion() -> Checkpoint:
    return fit(None, SPEC, *make("AB", 40, seed=1), params(strategy="ewc")).checkpoint


@pytest.fixture(scope="module")
def new_cd() -> tuple[np.ndarray, np.ndarray]:
    return make("CD", 40, seed=2)


def test_ewc_estimates_fisher_and_anchors_after_each_cycle(ewc_champion: Checkpoint) -> None:
    ewc = ewc_champion.states["ewc"]
    assert ewc is not None
    names = {n for n, _ in ewc_champion.model.named_parameters()}
    assert set(ewc["fisher"]) == names == set(ewc["anchor"])
    assert sum(float(f.sum()) for f in ewc["fisher"].values()) > 0
    for n, p in ewc_champion.model.named_parameters():
        assert torch.equal(ewc["anchor"][n], p.detach())


def test_ewc_penalty_is_zero_at_the_anchor_and_grows_away_from_it(ewc_champion: Checkpoint) -> None:
    assert ewc_champion.states["ewc"] is not None
    model = copy.deepcopy(ewc_champion.model)
    penalty = EwcPenalty(ewc_champion.states["ewc"], model, strength=100.0)
    assert float(penalty().detach()) == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    assert float(penalty().detach()) > 0.0


def test_ewc_keeps_the_next_cycle_closer_to_the_champion(
    ewc_champion: Checkpoint, new_cd: tuple[np.ndarray, np.ndarray]
) -> None:
    def drift(ck: Checkpoint) -> float:
        before = dict(ewc_champion.model.named_parameters())
        return sum(
            float((p.detach() - before[n].detach()).pow(2).sum())
            for n, p in ck.model.named_parameters()
            if not n.startswith("head")
        )

    plain = fit(ewc_champion, SPEC, *new_cd, params(strategy="finetune")).checkpoint
    held = fit(ewc_champion, SPEC, *new_cd, params(ewc_lambda=1e4, strategy="ewc")).checkpoint
    assert drift(held) < 0.5 * drift(plain)
    # online: the new state adds this cycle's Fisher to the decayed old one, over the grown head
    assert held.states["ewc"]["fisher"]["head.weight"].shape[0] == 4


def test_ewc_state_round_trips_through_a_checkpoint(ewc_champion: Checkpoint, tmp_path: Path) -> None:
    save_checkpoint(tmp_path, ewc_champion)
    back = load_checkpoint(tmp_path)
    assert back.states.keys() == {"ewc"}
    for part in ("fisher", "anchor"):
        assert same_state(back.states["ewc"][part], ewc_champion.states["ewc"][part])


def test_distillation_is_zero_for_the_teachers_own_outputs() -> None:
    logits = torch.randn(8, 3)
    assert float(distillation_loss(logits, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    grown = torch.cat([logits, torch.randn(8, 2)], dim=1)  # new classes are ignored
    assert float(distillation_loss(grown, logits, 2.0)) == pytest.approx(0.0, abs=1e-6)
    assert float(distillation_loss(torch.randn(8, 3), logits, 2.0)) > 0


def test_lwf_distils_the_champion_outputs_on_the_new_data(new_cd: tuple[np.ndarray, np.ndarray]) -> None:
    champion = fit(None, SPEC, *make("AB", 40, seed=1), params(strategy="finetune")).checkpoint
    longer = params(num_epochs=8, lwf_alpha=5.0)
    ft = fit(champion, SPEC, *new_cd, dataclasses.replace(longer, strategy="finetune"))
    lwf = fit(champion, SPEC, *new_cd, dataclasses.replace(longer, strategy="lwf"))
    # the distillation term uses the champion: the losses differ from plain fine-tuning
    assert [s.loss for s in lwf.history] != [s.loss for s in ft.history]

    # and what it optimises holds: the candidate's old-class outputs stay near the champion's
    def gap(candidate: Checkpoint) -> float:
        x = preprocess(torch.from_numpy(new_cd[0]))
        with torch.no_grad():
            return float(distillation_loss(candidate.model.eval()(x), champion.model.eval()(x), 2.0))

    assert gap(lwf.checkpoint) < 0.5 * gap(ft.checkpoint)


def test_replay_and_lwf_combine(new_cd: tuple[np.ndarray, np.ndarray]) -> None:
    champion = fit(None, SPEC, *make("AB", 40, seed=1), params(strategy="replay")).checkpoint
    both = fit(champion, SPEC, *new_cd, params(strategy="replay+lwf"))
    replay = fit(champion, SPEC, *new_cd, params(strategy="replay"))
    assert both.images_processed == replay.images_processed  # the replayed samples are there
    assert [s.loss for s in both.history] != [s.loss for s in replay.history]  # and so is the teacher


def test_transfer_trains_the_head_first_then_unfreezes_the_last_block(
    new_cd: tuple[np.ndarray, np.ndarray],
) -> None:
    champion = fit(None, SPEC, *make("AB", 40, seed=1), params(strategy="finetune")).checkpoint
    before = state(champion.model)
    head_only = fit(
        champion, SPEC, *new_cd, params(num_epochs=2, transfer_head_epochs=2, strategy="transfer")
    ).checkpoint
    after = state(head_only.model)
    feature_keys = [k for k in before if not k.startswith("head")]
    assert all(torch.equal(before[k], after[k]) for k in feature_keys)  # weights and BN statistics
    assert not torch.equal(before["head.weight"], after["head.weight"][:2])

    one_more = fit(
        champion, SPEC, *new_cd, params(num_epochs=3, transfer_head_epochs=2, strategy="transfer")
    ).checkpoint
    after = state(one_more.model)
    first = [k for k in feature_keys if k.startswith("backbone.0.")]
    last = [k for k in feature_keys if k.startswith("backbone.1.")]
    assert all(torch.equal(before[k], after[k]) for k in first)
    assert any(not torch.equal(before[k], after[k]) for k in last)


def test_transfer_uses_lower_rates_further_from_the_head() -> None:
    model = build_model(SPEC.with_classes(("A", "B")))
    plan = TransferPlan(model, head_epochs=1, decay=0.5)
    assert plan.lr_scales() == [1.0, 0.5, 0.25]
    groups = plan.param_groups(model)
    assert sum(len(g) for g in groups) == len(list(model.parameters()))
    assert plan.apply(1) == 0 and plan.apply(2) == 1 and plan.apply(9) == 2


def test_joint_retrains_from_scratch_on_everything_and_keeps_class_indices() -> None:
    champion = fit(None, SPEC, *make("AB", 40, seed=1), params(strategy="replay")).checkpoint
    images, labels = make("ABCD", 40, seed=3)  # what prepare hands joint: all training data seen
    joint = fit(champion, SPEC, images, labels, params(strategy="joint"))
    assert joint.checkpoint.spec.classes[:2] == champion.spec.classes
    assert joint.images_processed == len(labels) * PARAMS.num_epochs
    assert split_metrics(joint.checkpoint, *make("ABCD", 20, seed=300)).accuracy > 0.9


def test_resnet18_builds_for_small_grayscale_images_and_grows() -> None:
    spec = ModelSpec("resnet18", in_channels=1, image_size=28, width=0, dropout=0.0, classes=("a", "b"))
    model = build_model(spec)
    assert isinstance(model, ResNet18)
    out = model.eval()(torch.zeros(2, 1, 28, 28))
    assert out.shape == (2, 2)
    grown = grow_head(model, spec, ("c",))
    assert model(torch.zeros(1, 1, 28, 28)).shape == (1, 3) and grown.classes == ("a", "b", "c")
    assert len(model.blocks()) == 5


def test_a_local_torchvision_resnet18_file_loads_into_the_backbone(tmp_path: Path) -> None:
    from torchvision.models import resnet18

    reference = resnet18(weights=None, num_classes=1000)
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    spec = ModelSpec("resnet18", in_channels=3, image_size=64, width=0, dropout=0.0, classes=("a", "b"))
    model = build_model(spec)
    skipped = load_backbone(model, str(path))
    assert skipped == []  # fc.* is dropped on purpose; everything else fits
    assert torch.equal(model.net.layer4[1].conv2.weight, reference.layer4[1].conv2.weight)


def test_replay_log_prior_is_the_minibatch_class_mix() -> None:
    new_y = torch.tensor([2, 2, 2, 2])  # the batch brings only class 2
    mem_y = torch.tensor([0, 1, 0, 1])  # the memory holds 0 and 1 equally
    prior = replay_log_prior(new_y, mem_y, new_per_step=6, mem_per_step=2, num_classes=3).exp()
    assert torch.allclose(prior, torch.tensor([1 / 8, 1 / 8, 6 / 8]), atol=1e-6)


def test_balanced_replay_changes_training_and_keeps_old_classes(
    new_cd: tuple[np.ndarray, np.ndarray],
) -> None:
    champion = fit(None, SPEC, *make("AB", 40, seed=1), params(strategy="replay")).checkpoint
    plain = fit(champion, SPEC, *new_cd, params(replay_balance=False, replay_fraction=0.2, strategy="replay"))
    balanced = fit(
        champion, SPEC, *new_cd, params(replay_balance=True, replay_fraction=0.2, strategy="replay")
    )
    assert [s.loss for s in plain.history] != [s.loss for s in balanced.history]
    old = make("AB", 30, seed=200)
    assert split_metrics(balanced.checkpoint, *old).accuracy >= split_metrics(plain.checkpoint, *old).accuracy


# ---- derpp -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def derpp_champion() -> Checkpoint:
    return fit(None, SPEC, *make("AB", 40, seed=1), params(strategy="derpp")).checkpoint


def _memory_outputs(ck: Checkpoint, images: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return ck.model.eval()(preprocess(torch.from_numpy(images))).float()


def test_derpp_records_the_outputs_of_every_memory_sample(derpp_champion: Checkpoint) -> None:
    stored = derpp_champion.states["derpp"]["stored"]
    assert stored["digests"].shape == (len(derpp_champion.memory), 16)
    # recorded by the model that just learned them: its own outputs on the memory
    recorded = stored["logits"]
    assert torch.allclose(recorded, _memory_outputs(derpp_champion, derpp_champion.memory.images), atol=1e-5)


def test_derpp_logit_term_pulls_outputs_towards_the_recorded_ones(
    derpp_champion: Checkpoint, new_cd: tuple[np.ndarray, np.ndarray]
) -> None:
    without = fit(derpp_champion, SPEC, *new_cd, params(strategy="derpp", derpp_alpha=0.0)).checkpoint
    with_term = fit(derpp_champion, SPEC, *new_cd, params(strategy="derpp", derpp_alpha=1.0)).checkpoint
    old = derpp_champion.memory.images
    recorded = derpp_champion.states["derpp"]["stored"]["logits"]

    def drift(ck: Checkpoint) -> float:
        return float((_memory_outputs(ck, old)[:, :2] - recorded).pow(2).mean())

    assert not same_state(state(without.model), state(with_term.model))
    assert drift(with_term) < 0.5 * drift(without)
    # samples kept from the parent's memory keep the outputs recorded then; new ones get the candidate's
    kept = with_term.states["derpp"]["stored"]
    old_digests = {bytes(d.tolist()) for d in derpp_champion.states["derpp"]["stored"]["digests"]}
    rows = [i for i, d in enumerate(kept["digests"]) if bytes(d.tolist()) in old_digests]
    assert rows and torch.isnan(kept["logits"][rows, 2:]).all()
    assert not torch.isnan(kept["logits"][[i for i in range(len(kept["logits"])) if i not in rows]]).any()


def test_derpp_does_not_combine_with_replay() -> None:
    with pytest.raises(InputError, match="does not combine with replay"):
        fit(None, SPEC, *make("AB", 5, seed=8), params(strategy="replay+derpp"))
