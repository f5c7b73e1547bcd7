"""The library on a CUDA GPU: the same results as on the CPU, mixed precision (fp16 with loss
scaling, bf16), the mask network under autocast, and what gradient caching saves in GPU memory.

Every test here is marked ``cuda`` and is skipped where ``torch.cuda.is_available()`` is False.
``pytest -m cuda`` runs them (on ``--device`` when that names a GPU, else ``cuda``);
benchmarks/gpu_check.py does so first. The tests that take the ``device`` fixture cover the rest
of the library on a GPU with ``pytest --device cuda``.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

import smartclip
from smartclip.loss import ClipContrastiveLoss, ModularContrastiveLoss
from smartclip.model import straight_through_mask
from smartclip.train import ContrastiveStep, LossConfig, OptimConfig, build_loss, build_optimizer, read_metrics, train
from conftest import real_images
from test_train_utils import tiny_config, train_until

pytestmark = pytest.mark.cuda
B = 16
TEXTS = [f"photo {i}: a {c} thing next to {'a very ' * (3 * i)}small pen on a table" for i, c in
         enumerate(["red", "blue", "green", "white", "black", "pink", "grey", "gold"] * 2)]  # 14 to 110 tokens
HALF = {"fp16": torch.float16, "bf16": torch.bfloat16}


@pytest.fixture(scope="module")
def gpu(request) -> torch.device:
    name = request.config.getoption("--device")
    return torch.device(name if name.startswith("cuda") else "cuda")


def _batch(model, n=B):
    preprocess = smartclip.image_transform(model)
    images = torch.stack([preprocess(im) for im in real_images(n, 48)])
    tokens = smartclip.get_tokenizer(model)([TEXTS[i % len(TEXTS)] for i in range(n)])
    return images, tokens


@pytest.fixture(scope="module")
def micro():
    """smartclip-micro (fp32, CPU) and a batch of 16 real images with captions of varied length."""
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro")
    return model, *_batch(model)


def _close(actual, expected, tol):
    """Equal within ``tol`` of the larger magnitude (both moved to the CPU, compared in fp32)."""
    a, e = actual.detach().float().cpu(), expected.detach().float().cpu()
    scale = e.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(a / scale, e / scale, rtol=tol, atol=tol)


def _grads(model):
    return {n: p.grad.detach().float().cpu().clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_same_grads(a, b, tol):
    """Per-parameter gradients equal within ``tol`` of each tensor's magnitude, floored at 1e-3 of
    the largest gradient (some biases have a gradient that is zero in theory and rounding noise)."""
    assert a.keys() == b.keys() and a
    floor = 1e-3 * max(g.abs().max().item() for g in b.values())
    for name in a:
        scale = max(b[name].abs().max().item(), floor)
        torch.testing.assert_close(a[name] / scale, b[name] / scale, rtol=tol, atol=tol, msg=name)


def _step(model, objective="smartclip", micro_batch=None, precision="fp32", scaler=None):
    device = next(model.parameters()).device
    autocast = (lambda: torch.autocast(device.type, dtype=HALF[precision])) if precision in HALF else None
    kwargs = {"autocast": autocast} if autocast else {}
    return ContrastiveStep(model, build_loss(objective, LossConfig()), objective=objective, micro_batch=micro_batch,
                           scaler=scaler, **kwargs)


def _trainable(model, objective="smartclip"):
    model = copy.deepcopy(model).train()
    model.mask_net.requires_grad_(objective == "smartclip")
    model.logit_scale.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------- model
def test_forward_on_cuda_matches_the_cpu(micro, gpu):
    model, images, tokens = micro
    with torch.no_grad():
        ref = model(images, tokens)
        out = copy.deepcopy(model).to(gpu)(images.to(gpu), tokens.to(gpu))
    for key in ("image_features", "text_features", "mask_probs"):
        assert out[key].device.type == "cuda"
        _close(out[key], ref[key], 1e-4)
    # hard masks agree except where a probability sits on 0.5 within rounding
    assert (out["mask"].cpu() == ref["mask"]).float().mean() > 0.99
    with torch.no_grad():
        trimmed = copy.deepcopy(model).to(gpu).encode_text(tokens.to(gpu), trim=True)
    _close(trimmed, ref["text_features"], 1e-4)


# ----------------------------------------------------------------------------------- loss
@pytest.mark.parametrize("objective", ["smartclip", "clip"])
def test_loss_values_and_gradients_on_cuda_match_the_cpu(objective, gpu):
    g = torch.Generator().manual_seed(0)
    n, d = 64, 32
    z0, t0, l0 = (torch.randn(n, d, generator=g) for _ in range(3))
    groups = torch.arange(n) // 2  # two captions per image: the other is not a negative
    results = []
    for dev in (torch.device("cpu"), gpu):
        z, t, logits = (x.to(dev).requires_grad_(True) for x in (z0, t0, l0))
        mask = straight_through_mask(torch.sigmoid(logits))
        mask = torch.cat([mask[:1] * 0, mask[1:]])  # a caption that selects nothing stays finite
        if objective == "smartclip":
            out = ModularContrastiveLoss()(z, t, mask, groups=groups.to(dev))
        else:
            out = ClipContrastiveLoss()(z, t, logit_scale=torch.tensor(30.0, device=dev), groups=groups.to(dev))
        out["loss"].backward()
        grads = [z.grad, t.grad] + ([logits.grad] if objective == "smartclip" else [])
        assert torch.isfinite(out["loss"]) and all(torch.isfinite(x).all() for x in grads)
        results.append((out["loss"], grads))
    (cpu_loss, cpu_grads), (gpu_loss, gpu_grads) = results
    _close(gpu_loss, cpu_loss, 1e-5)
    for a, b in zip(gpu_grads, cpu_grads):
        _close(a, b, 1e-4)


# ----------------------------------------------------------------------- gradient caching
@pytest.mark.parametrize("objective", ["smartclip", "clip"])
def test_gradient_caching_on_cuda_gives_the_full_batch_gradient_in_less_memory(objective, gpu):
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-small")  # text activations at 248 positions dominate
    images, tokens = _batch(model, 64)
    images, tokens, index = images.to(gpu), tokens.to(gpu), torch.arange(64, device=gpu)
    grads, peaks = {}, {}
    for micro_batch in (None, 16):
        m = _trainable(model, objective).to(gpu)
        step = _step(m, objective, micro_batch)
        torch.cuda.synchronize(gpu)
        torch.cuda.reset_peak_memory_stats(gpu)
        before = torch.cuda.memory_allocated(gpu)
        assert step(images, tokens, index).finite
        torch.cuda.synchronize(gpu)
        peaks[micro_batch] = torch.cuda.max_memory_allocated(gpu) - before
        grads[micro_batch] = _grads(m)
        del m, step
    _assert_same_grads(grads[16], grads[None], 1e-4)
    assert peaks[16] < 0.6 * peaks[None], f"peak memory: full batch {peaks[None]} B, micro-batch 16 {peaks[16]} B"


def test_gradient_checkpointing_on_cuda_gives_the_same_gradients(micro, gpu):
    model, images, tokens = micro
    images, tokens, index = images.to(gpu), tokens.to(gpu), torch.arange(B, device=gpu)
    grads = []
    for checkpointing in (False, True):
        m = _trainable(model).to(gpu)
        m.set_grad_checkpointing(checkpointing)
        assert _step(m, micro_batch=B // 4)(images, tokens, index).finite
        grads.append(_grads(m))
    _assert_same_grads(grads[1], grads[0], 1e-4)


# ---------------------------------------------------------------------- mixed precision
def _fp32_loss(model, objective, images, tokens, index):
    m = _trainable(model, objective).to(images.device)
    return _step(m, objective)(images, tokens, index).terms["loss"]


@pytest.mark.parametrize("objective", ["smartclip", "clip"])
def test_fp16_step_with_loss_scaling_on_cuda(micro, objective, gpu):
    model, images, tokens = micro
    images, tokens, index = images.to(gpu), tokens.to(gpu), torch.arange(B, device=gpu)
    reference = _fp32_loss(model, objective, images, tokens, index)

    # a small loss scale: the step is applied, and its loss and gradients can be checked
    m = _trainable(model, objective).to(gpu)
    scaler = torch.amp.GradScaler("cuda", init_scale=2.0 ** 6)
    out = _step(m, objective, micro_batch=B // 4, precision="fp16", scaler=scaler)(images, tokens, index)
    assert out.finite and out.terms["loss"] == pytest.approx(reference, rel=0.05)
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)  # fp32 master weights

    # the training loop's default scaler (2**16): steps whose scaled gradients overflow fp16 are
    # skipped and the scale halved (on a CPU the modular loss needs 512: 7 skips), later ones applied
    m = _trainable(model, objective).to(gpu)
    start = {k: v.detach().clone() for k, v in m.state_dict().items()}
    optimizer = build_optimizer(m, _optim(1e-4))
    scaler = torch.amp.GradScaler("cuda")
    step = _step(m, objective, micro_batch=B // 4, precision="fp16", scaler=scaler)
    applied = 0
    for _ in range(12):
        optimizer.zero_grad(set_to_none=True)
        assert step(images, tokens, index).finite
        scale = scaler.get_scale()
        scaler.step(optimizer)
        scaler.update()
        applied += scaler.get_scale() >= scale  # the scale drops exactly when the step was skipped
    state = m.state_dict()
    assert applied >= 2 and all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    assert any(not torch.equal(state[k], start[k]) for k in start)


@pytest.mark.parametrize("objective", ["smartclip", "clip"])
@pytest.mark.parametrize("micro_batch", [None, B // 4])
def test_bf16_step_on_cuda(micro, objective, micro_batch, gpu):
    model, images, tokens = micro
    images, tokens, index = images.to(gpu), tokens.to(gpu), torch.arange(B, device=gpu)
    reference = _fp32_loss(model, objective, images, tokens, index)
    m = _trainable(model, objective).to(gpu)
    optimizer = build_optimizer(m, _optim(1e-4))
    out = _step(m, objective, micro_batch, precision="bf16")(images, tokens, index)
    assert out.finite and out.terms["loss"] == pytest.approx(reference, rel=0.05)
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    optimizer.step()
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in m.parameters())


def _optim(lr):
    cfg = OptimConfig()
    cfg.clip.lr, cfg.clip.warmup_steps = lr, 0
    return cfg


# -------------------------------------------------------------- text path under autocast
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_trimmed_text_path_on_cuda_under_autocast(micro, precision, gpu):
    model, _, tokens = micro
    model = copy.deepcopy(model).to(gpu).eval()
    tokens = tokens.to(gpu)
    with torch.no_grad():
        fp32 = model.encode_text(tokens, trim=False)
        with torch.autocast("cuda", dtype=HALF[precision]):
            full = model.encode_text(tokens, trim=False)
            trimmed = model.encode_text(tokens, trim=True)
    assert torch.isfinite(trimmed).all()
    _close(trimmed, full, 2e-2)
    _close(trimmed, fp32, 5e-2)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("mask_padding", [False, True])
def test_mask_network_on_cuda_under_autocast(precision, mask_padding, gpu):
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro", mask_padding=mask_padding, device=gpu)
    _, tokens = _batch(model)
    tokens = tokens.to(gpu)
    with torch.no_grad():
        fp32 = model.text_mask(tokens, soft=True)
    with torch.autocast("cuda", dtype=HALF[precision]):
        probs = model.text_mask(tokens, soft=True)
        hard = model.text_mask(tokens)
    assert probs.dtype == torch.float32 and torch.isfinite(probs).all()  # the mask is made in fp32
    assert torch.equal(hard.detach(), (probs.detach() >= 0.5).float())
    assert (hard.detach() == (fp32 >= 0.5).float()).float().mean() > 0.9
    _close(probs, fp32, 5e-2)
    hard.sum().backward()  # the straight-through gradient reaches the mask network in half precision
    grads = [p.grad for p in model.mask_net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert model.mask_net.attn_pool.attention.weight.grad.abs().sum() > 0
    if mask_padding:  # padding hidden by the additive -inf attention mask: trimming stays exact
        with torch.no_grad(), torch.autocast("cuda", dtype=HALF[precision]):
            _, sequence = model._text_tower(tokens, trim=False)
            untrimmed = torch.sigmoid(model.mask_net(sequence, model._padding(tokens)).float())
        _close(probs, untrimmed, 2e-2)


# ------------------------------------------------------------------------- training loop
def test_training_loop_on_cuda_with_fp16_gradient_caching_and_resume(tmp_path, gpu):
    from data_fixtures import make_csv_dataset
    csv = make_csv_dataset(tmp_path / "data", 16)
    overrides = [f"train.device={gpu}", "train.precision=fp16", "train.micro_batch=4", "train.steps=4",
                 "checkpoint.every_steps=2"]
    train_until(tiny_config(tmp_path, csv, *overrides), 2)
    result = train(tiny_config(tmp_path, csv, *overrides, "resume=latest"))  # optimizer and CUDA RNG state
    assert result.steps == 4 and result.metrics["max_memory_gib"] > 0
    records = read_metrics(tmp_path / "run" / "metrics.jsonl", "train")
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) and r["loss_scale"] > 0 for r in records)
    model, _, tokenizer = smartclip.load(str(result.checkpoint))  # written from GPU tensors, read on the CPU
    assert torch.isfinite(model.encode_text(tokenizer(["a cat"]))).all()
