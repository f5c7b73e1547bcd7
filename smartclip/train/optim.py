"""Parameter groups, AdamW and the per-group warm-up + cosine schedule (docs/method.md §4)."""
from __future__ import annotations

import math
from typing import List

import torch
from torch import nn

from .config import OptimConfig

__all__ = ["trainable_groups", "build_optimizer", "build_scheduler", "WarmupCosine"]


def trainable_groups(model: nn.Module) -> dict:
    """``{"clip": [...], "mask": [...]}``: trainable parameters outside / inside ``model.mask_net``."""
    mask_ids = {id(p) for p in model.mask_net.parameters()}
    groups = {"clip": [], "mask": []}
    for p in model.parameters():
        if p.requires_grad:
            groups["mask" if id(p) in mask_ids else "clip"].append(p)
    return groups


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW with one group per non-empty parameter set, named ``clip`` and ``mask``."""
    param_groups = []
    for name, params in trainable_groups(model).items():
        if not params:
            continue
        g = getattr(cfg, name)
        param_groups.append({"name": name, "params": params, "lr": g.lr, "weight_decay": g.weight_decay,
                             "betas": tuple(g.betas), "eps": g.eps})
    if not param_groups:
        raise ValueError("the model has no trainable parameters")
    return torch.optim.AdamW(param_groups)


class WarmupCosine:
    """Learning-rate factor of open_clip's ``cosine_lr``: linear warm-up ``(step + 1) / warmup``
    then a half cosine to 0 at ``total``. ``schedule="constant"`` keeps 1 after warm-up.
    A plain object (not a closure) so LambdaLR can save it."""

    def __init__(self, warmup: int, total: int, schedule: str = "cosine"):
        self.warmup, self.total, self.schedule = int(warmup), int(total), schedule

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        if self.schedule == "constant":
            return 1.0
        span = self.total - self.warmup
        if span <= 0:
            return 0.0
        return 0.5 * (1 + math.cos(math.pi * min(step - self.warmup, span) / span))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, total_steps: int):
    lambdas: List[WarmupCosine] = []
    for group in optimizer.param_groups:
        g = getattr(cfg, group["name"])
        lambdas.append(WarmupCosine(g.warmup_steps, total_steps, g.schedule))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
