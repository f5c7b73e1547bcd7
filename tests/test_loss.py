"""The modular loss against a direct restatement of docs/method.md §3, and against open_clip's ClipLoss."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from open_clip.loss import ClipLoss

from smartclip.loss import (ClipContrastiveLoss, ModularContrastiveLoss, clip_contrastive_loss,
                            modular_contrastive_loss)
from smartclip.model import straight_through_mask


def reference_modular_loss(z, t, m, scale=100.0, eps=1e-6, groups=None):
    """docs/method.md §3 written literally, with the [N, N, d] tensor the released code builds, and its
    sparsity term ``torch.mean(torch.abs(use_mask))``.
    ``groups``: pairs of the same image are not each other's negatives."""
    n, dev = z.shape[0], z.device
    tn = t / t.norm(dim=-1, keepdim=True)
    zm = z[:, None, :] * m[None, :, :]                     # [image i, caption j, d]
    u = zm / zm.norm(dim=-1, keepdim=True).clamp_min(eps)  # u(i, j)
    labels = torch.arange(n, device=dev)
    sidm_logits = scale * (u * tn[None, :, :]).sum(-1)          # image i vs caption j (mask j)
    dism_logits = scale * (u.transpose(0, 1) * tn[:, None, :]).sum(-1)  # caption i vs image j (mask i)
    if groups is not None:
        other = (groups[:, None] == groups[None, :]) & ~torch.eye(n, dtype=torch.bool, device=dev)
        sidm_logits = sidm_logits.masked_fill(other, float("-inf"))
        dism_logits = dism_logits.masked_fill(other, float("-inf"))
    return {
        "sidm": torch.nn.functional.cross_entropy(sidm_logits, labels),
        "dism": torch.nn.functional.cross_entropy(dism_logits, labels),
        "sparsity": torch.mean(torch.abs(m)),
    }


# The equivalences below (another formula, another process split) are checked in float64: two
# evaluations that differ in summation order over at most n·d = 192 terms differ by at most
# ~2·192·2**-53 ≈ 4e-14 of the terms' size, and normalisation and cross-entropy amplify that by
# at most ~10²; TOL = 1e-10 leaves a margin of 20 and is independent of the CPU's kernels, while a
# real difference (a lost negative, a wrong mask, float32 inside) is 1e-7 or more.
TOL = 1e-10


def _inputs(n=12, d=16, seed=0, dtype=torch.float64, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(n, d, generator=g, dtype=dtype).to(device) for _ in range(3))  # z, t, mask logits


@pytest.mark.parametrize("soft", [False, True])
def test_values_and_gradients_match_direct_formula(soft, device):
    results = []
    for fn in (modular_contrastive_loss, reference_modular_loss):
        z, t, logits = (x.clone().requires_grad_(True) for x in _inputs(device=device))
        probs = torch.sigmoid(logits)
        m = probs if soft else straight_through_mask(probs)
        out = fn(z, t, m)
        total = 10 * (out["sidm"] + out["dism"]) + 2 * out["sparsity"]
        total.backward()
        results.append(({k: out[k].detach() for k in ("sidm", "dism", "sparsity")}, z.grad, t.grad, logits.grad))
    (ours, gz, gt, gl), (ref, rz, rt, rl) = results
    for k in ours:
        torch.testing.assert_close(ours[k], ref[k], rtol=TOL, atol=TOL)
    for a, b in ((gz, rz), (gt, rt), (gl, rl)):
        scale = b.abs().max()
        torch.testing.assert_close(a / scale, b / scale, rtol=TOL, atol=TOL)
    assert gl.abs().sum() > 0  # the straight-through estimator lets gradient reach the mask logits


def test_sparsity_is_the_released_term_in_value_and_gradient():
    """float64, hard zeros present: the STE mask's inactive entries are exactly 0, and the
    released ``mean(|m|)`` sends them no sparsity gradient (``mean(m)`` would)."""
    z, t, logits = (x.requires_grad_(True) for x in _inputs(n=10, d=12, seed=5, dtype=torch.float64))
    m = straight_through_mask(torch.sigmoid(logits))
    inactive = m.detach() == 0
    assert inactive.any() and (~inactive).any()
    ours = modular_contrastive_loss(z, t, m)
    ref = reference_modular_loss(z, t, m)
    for k in ("sidm", "dism", "sparsity"):
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-12, atol=1e-12)
    grads = []
    for terms in (ours, ref):
        total = 10 * (terms["sidm"] + terms["dism"]) + 2 * terms["sparsity"]
        grads.append(torch.autograd.grad(total, (z, t, logits), retain_graph=True))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    # the sparsity term alone: zero gradient on inactive logits, s(1-s)/(n*d) on active ones
    (g_sparse,) = torch.autograd.grad(ours["sparsity"], logits, retain_graph=True)
    s = torch.sigmoid(logits.detach())
    expected = torch.where(inactive, torch.zeros_like(s), s * (1 - s) / m.numel())
    torch.testing.assert_close(g_sparse, expected, rtol=1e-12, atol=1e-15)
    (g_linear,) = torch.autograd.grad(m.mean(), logits)
    assert (g_linear[inactive] > 0).all()  # what the earlier mean(m) did differently


def test_several_captions_per_image_are_not_negatives(device):
    z, t, logits = _inputs(n=8, d=16, device=device)
    z = z[[0, 0, 1, 1, 2, 2, 3, 3]]  # two captions for each of four images
    groups = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3], device=device)
    m = straight_through_mask(torch.sigmoid(logits))
    ours = modular_contrastive_loss(z, t, m, groups=groups)
    ref = reference_modular_loss(z, t, m, groups=groups)
    for k in ("sidm", "dism"):
        torch.testing.assert_close(ours[k], ref[k], rtol=TOL, atol=TOL)
    plain = modular_contrastive_loss(z, t, m)  # the same rows with same-image pairs as negatives
    assert not torch.allclose(ours["sidm"] + ours["dism"], plain["sidm"] + plain["dism"])


def test_all_ones_mask_is_twice_clip_loss(device):
    z, t, _ = _inputs(n=10, d=8, device=device)
    ours = modular_contrastive_loss(z, t, torch.ones_like(z))
    theirs = ClipLoss()(torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(t, dim=-1),
                        logit_scale=torch.tensor(100.0, dtype=z.dtype, device=device))
    torch.testing.assert_close(ours["sidm"] + ours["dism"], 2 * theirs, rtol=TOL, atol=TOL)
    torch.testing.assert_close(clip_contrastive_loss(z, t)["contrastive"], theirs, rtol=TOL, atol=TOL)


def test_zero_mask_row_is_finite(device):
    z, t, _ = _inputs(n=4, d=8, device=device)
    m = torch.ones_like(z)
    m[1] = 0  # a caption that selects nothing: the released code gives NaN here
    out = modular_contrastive_loss(z, t, m)
    assert all(torch.isfinite(v) for v in out.values())


def test_weights_of_module(device):
    z, t, logits = _inputs(device=device)
    m = straight_through_mask(torch.sigmoid(logits))
    terms = ModularContrastiveLoss(align_weight=3.0, sparsity_weight=0.5)(z, t, m)
    torch.testing.assert_close(terms["loss"], 3.0 * (terms["sidm"] + terms["dism"]) + 0.5 * terms["sparsity"])


def test_shape_errors_name_the_tensor():
    z, t, logits = _inputs(n=4, d=8)
    with pytest.raises(ValueError, match=r"text_features has shape \(4, 6\), expected \(4, 8\)"):
        modular_contrastive_loss(z, t[:, :6], logits)
    with pytest.raises(ValueError, match=r"mask has shape \(3, 8\), expected \(4, 8\)"):
        modular_contrastive_loss(z, t, logits[:3])
    with pytest.raises(ValueError, match="image_features must be"):
        modular_contrastive_loss(z[0], t, logits)


# ------------------------------------------------------------------------- two processes
GROUPS = torch.tensor([0, 1, 1, 2, 3, 4, 4, 5])  # one image with two captions on each rank
def _worker(rank, world, path, local_loss, objective):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["_TEST_PORT"])
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        z, t, logits = (x.clone() for x in _inputs(n=8, d=16, seed=3))
        b = z.shape[0] // world
        z, t, logits = (x[rank * b:(rank + 1) * b].clone().requires_grad_(True) for x in (z, t, logits))
        m = straight_through_mask(torch.sigmoid(logits))
        groups = GROUPS[rank * b:(rank + 1) * b]
        if objective == "smartclip":
            out = ModularContrastiveLoss(local_loss=local_loss)(z, t, m, groups=groups)
        else:
            out = ClipContrastiveLoss(scale=50.0, local_loss=local_loss)(z, t, groups=groups)
        out["loss"].backward()
        torch.save({"loss": out["loss"].detach(), "gz": z.grad, "gt": t.grad, "gl": logits.grad},
                   os.path.join(path, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
@pytest.mark.parametrize("objective", ["smartclip", "clip"])
@pytest.mark.parametrize("local_loss", [True, False])
def test_two_processes_match_one(local_loss, objective, unused_port):
    world = 2
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["_TEST_PORT"] = str(unused_port)
        mp.start_processes(_worker, args=(world, tmp, local_loss, objective), nprocs=world, start_method="spawn")
        parts = [torch.load(os.path.join(tmp, f"rank{r}.pt")) for r in range(world)]
    z, t, logits = (x.clone().requires_grad_(True) for x in _inputs(n=8, d=16, seed=3))
    m = straight_through_mask(torch.sigmoid(logits))
    if objective == "smartclip":
        single = ModularContrastiveLoss()(z, t, m, groups=GROUPS)
    else:
        single = ClipContrastiveLoss(scale=50.0)(z, t, groups=GROUPS)
    single["loss"].backward()
    # the loss DDP optimises is the mean over ranks; every rank's gradient is world x the
    # single-process one, which DDP's gradient averaging divides back out
    torch.testing.assert_close(torch.stack([p["loss"] for p in parts]).mean(), single["loss"].detach(),
                               rtol=TOL, atol=TOL)
    grads = {"gz": z.grad, "gt": t.grad, "gl": logits.grad if objective == "smartclip" else None}
    for key, full in grads.items():
        if full is None:
            continue
        ranks = torch.cat([p[key] for p in parts]) / world
        scale = full.abs().max()
        torch.testing.assert_close(ranks / scale, full / scale, rtol=TOL, atol=TOL)
