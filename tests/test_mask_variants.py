"""Opt-in mask variants beyond the released recipe: a target active fraction by dual ascent, the
sentence-structure terms, and hard-concrete gates. Each against a literal formula, in value and
gradient; gradient caching equal to the whole batch; the multiplier restored by a resume."""
from __future__ import annotations

import copy
import math

import pytest
import torch

import smartclip
from smartclip.loss import ModularContrastiveLoss, sentence_structure_terms, sparsity_penalty
from smartclip.model import hard_concrete_gate, straight_through_mask
from smartclip.tokenizer import split_sentences
from smartclip.train import ConfigError, ContrastiveStep, LossConfig, build_loss, load_config
from conftest import assert_same_gradients, assert_same_loss, step_gradients
from test_train_utils import tiny_config, train_until

CAPTIONS = ["A large red circle at the top left. A small cat at the bottom right.",
            "A blue square at the top right.",
            "A cross at the bottom left. A digit one at the top left. A rocket at the top right.",
            "a green triangle and a coffee cup"]


# ------------------------------------------------------------------ target fraction (dual ascent)
def _inputs(n=8, d=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) for _ in range(3))


def test_dual_ascent_moves_the_multiplier_toward_the_target_and_weights_the_released_term():
    loss = ModularContrastiveLoss(sparsity_weight=2.0, sparsity_target=0.25, dual_lr=10.0)
    loss.dual_step(0.5)
    assert float(loss.multiplier) == pytest.approx(2.0 + 10.0 * 0.25)
    for _ in range(5):
        loss.dual_step(0.0)  # below target: the multiplier falls, never below zero
    assert float(loss.multiplier) == 0.0
    loss.multiplier.fill_(7.5)
    z, t, logits = _inputs()
    logits.requires_grad_(True)
    terms = loss(z, t, straight_through_mask(torch.sigmoid(logits)))
    fixed = ModularContrastiveLoss(sparsity_weight=7.5)(z, t, straight_through_mask(torch.sigmoid(logits)))
    assert terms["sparsity_multiplier"] == 7.5
    torch.testing.assert_close(terms["loss"], fixed["loss"])
    g1, = torch.autograd.grad(terms["loss"], logits)
    g2, = torch.autograd.grad(fixed["loss"], logits)
    torch.testing.assert_close(g1, g2)
    # off by default: the multiplier is not used and never moves
    released = ModularContrastiveLoss()
    released.dual_step(0.9)
    assert released.current_sparsity_weight() == 2.0 and "sparsity_multiplier" not in released(z, t, torch.ones_like(z))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from data_fixtures import make_csv_dataset
    return make_csv_dataset(tmp_path_factory.mktemp("variant_data"), 16)


def test_target_fraction_run_resumes_with_its_multiplier(tmp_path, dataset):
    """The multiplier is part of the trainer state: an interrupted run resumed ends identical."""
    from smartclip.checkpoint import read_weights
    from smartclip.train import read_metrics, train
    common = ["train.steps=4", "eval.specs=[]", "checkpoint.every_steps=2", "checkpoint.keep_last=5",
              "loss.sparsity_target=0.2", "loss.dual_lr=50"]
    full = train(tiny_config(tmp_path / "full", dataset, *common))
    records = read_metrics(full.run_dir / "metrics.jsonl", "train")
    multipliers = [r["sparsity_multiplier"] for r in records]
    assert multipliers[0] == 2.0 and len(set(multipliers)) == 4  # it moved every step
    train_until(tiny_config(tmp_path / "part", dataset, *common), 2)
    resumed = train(tiny_config(tmp_path / "part", dataset, *common, "resume=latest"))
    part = read_metrics(resumed.run_dir / "metrics.jsonl", "train")
    assert [r["sparsity_multiplier"] for r in part] == multipliers
    # exact: a resume repeats the uninterrupted run's operations in the same order, so every
    # rounding is the same (tests/test_train_resume.py); a tolerance would hide a lost multiplier
    a, b = read_weights(full.checkpoint)[0], read_weights(resumed.checkpoint)[0]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_variant_settings_are_checked():
    for override, message in [("loss.sparsity_target=1.5", "sparsity_target: a fraction"),
                              ("loss.gate_temperature=[1.0]", "gate_temperature: \\[start, end\\]"),
                              ("loss.union_weight=-1", "union_weight: must be")]:
        with pytest.raises(ConfigError, match=message):
            load_config(None, ["data.train=x.csv", override])
    with pytest.raises(ConfigError, match="mask variants need objective=smartclip"):
        load_config(None, ["data.train=x.csv", "objective=clip", "loss.scale=null", "loss.union_weight=1"])


# ------------------------------------------------------------------ sentence structure
def test_split_sentences_cuts_after_each_period_and_keeps_short_captions_whole():
    tok = smartclip.get_tokenizer(context_length=64)
    tokens = tok(CAPTIONS)
    sentences, owner = split_sentences(tokens, tokens.argmax(-1))
    assert owner.tolist() == [0, 0, 1, 2, 2, 2, 3]
    expected = ["A large red circle at the top left.", "A small cat at the bottom right.", CAPTIONS[1],
                "A cross at the bottom left.", "A digit one at the top left.", "A rocket at the top right.", CAPTIONS[3]]
    assert torch.equal(sentences, tok(expected))


def _literal_structure(p, q, owner):
    """The two terms written caption by caption."""
    union, exclusive = p.new_zeros(()), p.new_zeros(())
    for c in range(p.shape[0]):
        mine = q[owner == c]
        if len(mine) < 2:
            continue
        soft_or = 1 - torch.prod(1 - mine, dim=0)
        union = union + ((p[c] - soft_or) ** 2).mean()
        pairs = [(mine[i] * mine[j]).mean() for i in range(len(mine)) for j in range(i + 1, len(mine))]
        exclusive = exclusive + torch.stack(pairs).mean()
    return union / p.shape[0], exclusive / p.shape[0]


def test_structure_terms_match_the_literal_formula_in_value_and_gradient():
    g = torch.Generator().manual_seed(1)
    owner = torch.tensor([0, 0, 1, 2, 2, 2, 3])
    p = torch.rand(4, 10, generator=g, dtype=torch.float64).requires_grad_(True)
    q = torch.rand(7, 10, generator=g, dtype=torch.float64).requires_grad_(True)
    ours = sentence_structure_terms(p, q, owner)
    union, exclusive = _literal_structure(p, q, owner)
    torch.testing.assert_close(ours["union"], union, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(ours["exclusive"], exclusive, rtol=1e-12, atol=1e-12)
    for mine, theirs in ((ours["union"] + 3 * ours["exclusive"], union + 3 * exclusive),):
        a = torch.autograd.grad(mine, (p, q), retain_graph=True)
        b = torch.autograd.grad(theirs, (p, q))
        for x, y in zip(a, b):
            torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-12)
    # captions 1 and 3 have one sentence: no gradient reaches them
    assert torch.autograd.grad(ours["union"], p)[0][[1, 3]].abs().sum() == 0
    # micro-batches: the terms of the parts, each over the whole batch's caption count, add up
    first = sentence_structure_terms(p[:2], q[:3], owner[:3], num_captions=4)
    second = sentence_structure_terms(p[2:], q[3:], owner[3:] - 2, num_captions=4)
    torch.testing.assert_close(first["union"] + second["union"], ours["union"])
    torch.testing.assert_close(first["exclusive"] + second["exclusive"], ours["exclusive"])


B = 4


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro")
    images = torch.stack([smartclip.image_transform(model)(im) for im in __import__("conftest").real_images(B, 48)])
    return model, images, smartclip.get_tokenizer(model)(CAPTIONS)


def _step(model, images, tokens, micro_batch, loss_cfg, gate=None):
    """One step's parameter gradients and terms, in float64 (no optimizer: the claim is about
    the gradients, and Adam would blow up rounding noise in gradients near zero)."""
    model = copy.deepcopy(model).to(torch.float64).train()
    if gate:
        model.mask_gate = gate
    model.logit_scale.requires_grad_(False)
    step = ContrastiveStep(model, build_loss("smartclip", loss_cfg), micro_batch=micro_batch)
    torch.manual_seed(123)  # the gates' noise
    out = step(images.to(torch.float64), tokens, torch.arange(B))
    return step_gradients(model), out.terms


@pytest.mark.parametrize("gate, loss_cfg", [
    (None, LossConfig(union_weight=5.0, exclusive_weight=5.0)),
    ("hard_concrete", LossConfig(sparsity_target=0.3))])
def test_gradient_caching_matches_the_whole_batch_for_the_variants(batch, gate, loss_cfg):
    model, images, tokens = batch
    whole, whole_terms = _step(model, images, tokens, None, loss_cfg, gate=gate)
    cached, cached_terms = _step(model, images, tokens, 1, loss_cfg, gate=gate)
    assert whole.keys() == cached.keys() and any(k.startswith("mask_net.") for k in whole)
    assert_same_gradients(cached, whole)
    assert whole_terms.keys() == cached_terms.keys()
    for key in ("loss", "sparsity", "union", "exclusive"):
        if key in whole_terms:
            assert_same_loss(cached_terms[key], whole_terms[key])
    if gate is None:
        assert whole_terms["union"] > 0 and whole_terms["exclusive"] > 0
        # the structure terms reach the mask network only, never the text tower
        released, _ = _step(model, images, tokens, None, LossConfig())
        moved = [k for k in whole if not torch.allclose(whole[k], released[k], rtol=0, atol=0)]
        assert moved and all(k.startswith("mask_net.") for k in moved)
    else:  # without restoring the noise, the recomputation would differ
        assert "gate_temperature" not in whole_terms  # set by the training loop, not the step


# ------------------------------------------------------------------ hard-concrete gates
def test_hard_concrete_gates_and_their_expected_l0():
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(2000, 8, generator=g, dtype=torch.float64)).requires_grad_(True)
    gate, l0 = hard_concrete_gate(logits, 2 / 3, sample=False)
    torch.testing.assert_close(gate, (torch.sigmoid(logits) * 1.2 - 0.1).clamp(0, 1))
    # the deterministic gate is open exactly where sigmoid(logits) >= 0.5 would be
    assert torch.equal(gate > 0.5, torch.sigmoid(logits) > 0.5)
    # expected L0 and its gradient, literally
    expected = torch.sigmoid(logits - (2 / 3) * math.log(0.1 / 1.1))
    torch.testing.assert_close(l0, expected)
    (grad,) = torch.autograd.grad(l0.sum(), logits)
    torch.testing.assert_close(grad, expected * (1 - expected))
    # sampled gates: exact zeros and ones occur, and the open fraction matches the expected L0
    torch.manual_seed(0)
    sampled = torch.stack([hard_concrete_gate(logits.detach(), 2 / 3, sample=True)[0] for _ in range(20)])
    assert (sampled == 0).any() and (sampled == 1).any() and ((sampled >= 0) & (sampled <= 1)).all()
    open_fraction = (sampled > 0).double().mean(0)  # 20 draws of 16,000 gates
    assert abs(open_fraction.mean() - l0.detach().mean()) < 0.01


def test_hard_concrete_model_samples_in_training_and_thresholds_at_inference(batch):
    model, _, tokens = batch
    model = copy.deepcopy(model)
    model.mask_gate = "hard_concrete"
    model.train()
    torch.manual_seed(0)
    out = model(tokens=tokens)
    assert {"mask", "mask_l0", "mask_probs"} <= out.keys() and 0 <= out["mask"].min() and out["mask"].max() <= 1
    torch.manual_seed(1)
    assert not torch.equal(model(tokens=tokens)["mask"], out["mask"])  # noise
    model.eval()
    a, b = model(tokens=tokens)["mask"], model(tokens=tokens)["mask"]
    assert torch.equal(a, b)
    assert torch.equal(model.text_mask(tokens, soft=False), straight_through_mask(out["mask_probs"]).detach())
    # the option is recorded in checkpoints
    assert model.options["mask_gate"] == "hard_concrete"


def test_hard_concrete_sparsity_is_the_expected_l0():
    z, t, logits = _inputs()
    gate, l0 = hard_concrete_gate(logits, 0.5, sample=False)
    terms = ModularContrastiveLoss()(z, t, gate, mask_l0=l0)
    torch.testing.assert_close(terms["sparsity"], l0.mean())
    assert terms["sparsity"] != sparsity_penalty(gate)
