"""Shared helpers for the training tests (no tests here)."""
from __future__ import annotations

import pytest
import torch

from smartclip.train import load_config, train


def tiny_config(tmp_path, csv: str, *overrides: str):
    """A validated config for smartclip-micro on ``csv``: batch 8, no workers, no bar/plots."""
    return load_config(None, [f"data.train={csv}", "data.num_workers=0", "model.name=smartclip-micro",
                              "train.global_batch=8", "train.progress=false", "train.plots=false",
                              "train.tensorboard=false", f"run_dir={tmp_path / 'run'}",
                              # from-scratch learning rates, so a few steps move the weights visibly
                              "optim.clip.lr=1e-4", "optim.clip.warmup_steps=0", *overrides])


class Interrupt(Exception):
    """Raised from a run's ``on_step`` callback by :func:`train_until`."""


def train_until(cfg, step: int) -> None:
    """Run ``cfg`` and stop it right after ``step`` (its checkpoint, if due, is written), as a
    kill at that moment would."""
    def on_step(info):
        if info.step == step:
            raise Interrupt

    with pytest.raises(Interrupt):
        train(cfg, on_step=on_step)


def _shift_invariant(name: str) -> bool:
    # Softmax ignores a constant added to every score, so these parameters have an exactly-zero
    # gradient in theory; in floating point it is ~1e-10 noise that AdamW divides by its own
    # magnitude, and the noise differs between any two summation orders. (A ResNet tower's
    # attention pool has the same shift-invariant key bias.)
    return name.endswith(("attn_pool.attention.bias", "attnpool.k_proj.bias"))


def assert_same_weights(a: dict, b: dict, atol: float = 1e-5, moved_from: dict | None = None):
    """State dicts equal within ``atol`` (the key third of attention in-projection biases and the
    mask pooling bias are shift-invariant, see ``_shift_invariant``, and compared only in part).
    With ``moved_from``, also check that training changed the weights at all."""
    assert a.keys() == b.keys()
    worst = (0.0, "")
    for name in a:
        x, y = a[name].float(), b[name].float()
        if _shift_invariant(name):
            continue
        if name.endswith("in_proj_bias"):  # [q | k | v]: the k part is shift-invariant
            d = x.shape[0] // 3
            x, y = torch.cat([x[:d], x[2 * d:]]), torch.cat([y[:d], y[2 * d:]])
        diff = (x - y).abs().max().item() if x.numel() else 0.0
        worst = max(worst, (diff, name))
    assert worst[0] <= atol, f"weights differ by {worst[0]:.3g} in {worst[1]} (tolerance {atol})"
    if moved_from is not None:
        moved = max((a[k].float() - moved_from[k].float()).abs().max().item() for k in a if a[k].numel())
        assert moved > 10 * atol, f"training barely changed the weights (max change {moved:.3g})"
