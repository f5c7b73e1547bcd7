"""The order of samples: a pure function of (seed, epoch), split across ranks.

For map-style sources every epoch is a *plan*: a list of global record ids. Each source
``i`` contributes ``n_i = weight_i / sum(weights) * samples_per_epoch`` records (drawn from
fresh permutations, so a source with ``n_i`` above its size is upsampled and one below it
shows a different subset each epoch); the ids are then shuffled together. Batch ``b`` of
rank ``r`` is the slice ``[(b * world + r) * B, ... + B)``: ranks are disjoint, and the tail
that does not fill a batch on every rank is left out of that epoch (it differs by epoch).
"""
from __future__ import annotations

from typing import List, Sequence

import numpy as np

__all__ = ["source_quotas", "epoch_plan", "sample_seed", "batches_per_epoch", "rank_batch"]


def source_quotas(sizes: Sequence[int], weights: Sequence[float], total: int) -> List[int]:
    """Split ``total`` in proportion to ``weights`` (largest remainders, ties by source order)."""
    w = np.asarray(weights, dtype=np.float64)
    exact = w / w.sum() * total
    quotas = np.floor(exact).astype(np.int64)
    order = sorted(range(len(w)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in order[: total - int(quotas.sum())]:
        quotas[i] += 1
    return [int(q) if sizes[i] > 0 else 0 for i, q in enumerate(quotas)]


def epoch_plan(sizes: Sequence[int], weights: Sequence[float], seed: int, epoch: int,
               samples_per_epoch: int = 0) -> np.ndarray:
    """Global record ids (source offsets applied) in the order of epoch ``epoch``."""
    sizes = [int(s) for s in sizes]
    if len(sizes) == 1 and not samples_per_epoch:
        return np.random.default_rng([seed, epoch, 0]).permutation(sizes[0])
    total = samples_per_epoch or sum(sizes)
    quotas = source_quotas(sizes, weights, total)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    picks = []
    for i, (size, quota) in enumerate(zip(sizes, quotas)):
        if quota == 0:
            continue
        rng = np.random.default_rng([seed, epoch, i + 1])
        rounds = -(-quota // size)
        ids = np.concatenate([rng.permutation(size) for _ in range(rounds)])[:quota]
        picks.append(ids + offsets[i])
    plan = np.concatenate(picks) if picks else np.zeros(0, dtype=np.int64)
    return np.random.default_rng([seed, epoch, 0]).permutation(plan)


def batches_per_epoch(plan_length: int, batch_size: int, world_size: int) -> int:
    return plan_length // (batch_size * world_size)


def rank_batch(plan: np.ndarray, batch: int, batch_size: int, rank: int, world_size: int) -> np.ndarray:
    start = (batch * world_size + rank) * batch_size
    return plan[start:start + batch_size]


def sample_seed(*keys: int) -> int:
    """A 32-bit seed from integer keys (seed, epoch, position...), stable across processes."""
    return int(np.random.SeedSequence([int(k) & 0xFFFFFFFF for k in keys]).generate_state(1)[0])
