"""The training step: gradient caching equals the full batch; non-finite losses add no gradient."""
from __future__ import annotations

import copy

import pytest
import torch

import smartclip
from smartclip.train import ContrastiveStep, LossConfig, build_loss
from conftest import assert_same_gradients, assert_same_loss, step_gradients

B = 8


@pytest.fixture(scope="module")
def batch():
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro")
    tok = smartclip.get_tokenizer(model)
    images = torch.stack([smartclip.image_transform(model)(im) for im in __import__("conftest").real_images(B, 48)])
    texts = [f"photo {i}: a {c} thing next to {'a very ' * i}small pen" for i, c in
             enumerate(["red", "blue", "green", "white", "black", "pink", "grey", "gold"])]
    # two captions per image for the last case: rows 0..7 then 8..15 map to images 0..7
    return model, images, tok(texts), tok(texts[::-1])


def _step(model, objective, images, tokens, image_index, micro_batch, scale=100.0, full_mask=False):
    """One step's loss terms and parameter gradients, in float64: the equivalences below are
    claims about these, equal up to summation order (see ``assert_same_gradients``)."""
    device = images.device
    model = copy.deepcopy(model).to(device, torch.float64).train()
    model.mask_net.requires_grad_(objective == "smartclip" and not full_mask)
    model.logit_scale.requires_grad_(scale is None)
    step = ContrastiveStep(model, build_loss(objective, LossConfig(scale=scale, full_mask=full_mask)),
                           objective=objective, full_mask=full_mask, micro_batch=micro_batch)
    out = step(images.to(torch.float64), tokens, image_index)
    return step_gradients(model), out


# the modular loss with two captions per image (repeated images in the batch), and InfoNCE with a
# learned temperature (an extra cached gradient); both objectives' fixed-scale paths are a subset
@pytest.mark.parametrize("objective, scale, captions", [
    pytest.param("smartclip", 100.0, 2, marks=pytest.mark.slow), ("clip", None, 1)])
def test_gradient_caching_matches_the_full_batch(batch, objective, scale, captions, device):
    model, images, tokens, tokens_rev = batch
    image_index = torch.arange(B)
    if captions == 2:
        tokens, image_index = torch.cat([tokens, tokens_rev]), torch.cat([image_index, image_index.flip(0)])
    images, tokens, image_index = images.to(device), tokens.to(device), image_index.to(device)
    full, full_out = _step(model, objective, images, tokens, image_index, micro_batch=None, scale=scale)
    cached, cached_out = _step(model, objective, images, tokens, image_index, micro_batch=B // 4, scale=scale)
    assert_same_gradients(cached, full)
    assert full_out.terms.keys() == cached_out.terms.keys()
    for key in ("loss", "sidm", "dism", "sparsity", "i2t", "t2i", "contrastive"):
        if key in full_out.terms:
            assert_same_loss(cached_out.terms[key], full_out.terms[key])
    if objective == "smartclip":
        terms = full_out.terms
        assert {"sidm", "dism", "sparsity", "mask_active_mean", "mask_active_min", "mask_active_max"} <= terms.keys()
        assert terms["mask_active_min"] <= terms["mask_active_mean"] <= terms["mask_active_max"]
        assert any(k.startswith("mask_net.") for k in full)
        for key in ("mask_active_mean", "mask_active_min", "mask_active_max"):
            assert cached_out.terms[key] == full_out.terms[key], key
    if scale is None:  # the learned temperature gets its (cached) gradient
        assert full["logit_scale"].abs().item() > 0


def test_full_mask_control_uses_ones_and_leaves_the_mask_network(batch, device):
    model, images, tokens, _ = batch
    grads, out = _step(model, "smartclip", images.to(device), tokens.to(device), torch.arange(B, device=device),
                       micro_batch=2, full_mask=True)
    assert out.terms["sparsity"] == 1.0 and out.terms["mask_active_min"] == model.embed_dim
    assert grads and not [k for k in grads if k.startswith("mask_net.")]  # frozen: the optimizer never moves it


@pytest.mark.parametrize("micro_batch", [None, 2])
def test_nonfinite_loss_adds_no_gradient(batch, micro_batch, device):
    model, images, tokens, _ = batch
    model = copy.deepcopy(model).to(device).train()
    images, tokens = images.to(device), tokens.to(device)
    model.logit_scale.requires_grad_(False)
    step = ContrastiveStep(model, build_loss("smartclip", LossConfig()), micro_batch=micro_batch)
    bad = images.clone()
    bad[3] = float("nan")
    out = step(bad, tokens, torch.arange(B, device=device))
    assert not out.finite and not torch.isfinite(torch.tensor(out.terms["loss"]))
    assert all(p.grad is None for p in model.parameters())
    assert step(images, tokens, torch.arange(B, device=device)).finite


def test_micro_batch_must_divide_the_local_batch(batch):
    model, images, tokens, _ = batch
    step = ContrastiveStep(model, build_loss("clip", LossConfig()), objective="clip", micro_batch=3)
    with pytest.raises(ValueError, match="micro_batch=3 does not divide the local batch of 8"):
        step(images, tokens, torch.arange(B))


def test_gradient_checkpointing_with_caching_matches_the_plain_step(batch, device):
    model, images, tokens, _ = batch
    images, tokens, index = images.to(device), tokens.to(device), torch.arange(B, device=device)
    plain, plain_out = _step(model, "clip", images, tokens, index, micro_batch=None)
    checkpointed = copy.deepcopy(model)
    checkpointed.set_grad_checkpointing(True)
    grads, out = _step(checkpointed, "clip", images, tokens, index, micro_batch=B // 4)
    assert_same_gradients(grads, plain)
    assert_same_loss(out.terms["loss"], plain_out.terms["loss"])


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_step_is_finite_and_close_to_fp32(batch, precision, device):
    model, images, tokens, _ = batch
    model = copy.deepcopy(model).to(device).train()
    images, tokens, index = images.to(device), tokens.to(device), torch.arange(B, device=device)
    model.logit_scale.requires_grad_(False)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    # a small initial scale: the default 2**16 overflows fp16 on the first step, which the scaler
    # handles by skipping it, but then there would be no gradient to look at here
    scaler = torch.amp.GradScaler(device.type, init_scale=2.0 ** 6) if precision == "fp16" else None
    loss_fn = build_loss("clip", LossConfig())
    step = ContrastiveStep(model, loss_fn, objective="clip", micro_batch=2, scaler=scaler,
                           autocast=lambda: torch.autocast(device.type, dtype=dtype))
    out = step(images, tokens, index)
    reference = ContrastiveStep(copy.deepcopy(model), loss_fn, objective="clip")(images, tokens, index)
    assert out.finite and out.terms["loss"] == pytest.approx(reference.terms["loss"], rel=0.05)
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)  # fp32 master weights
    if scaler is not None:  # gradients carry the loss scale until the optimizer step unscales them
        assert scaler.get_scale() == 2.0 ** 6
