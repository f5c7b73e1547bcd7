"""Shared helpers for the training tests (no tests here). Equivalence checks (float64 gradients
and losses of one step) are in conftest: ``assert_same_gradients``, ``float64_training``."""
from __future__ import annotations

import pytest

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
