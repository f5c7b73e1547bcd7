"""Map-style sources (CSV/TSV, ShareGPT4V json): records scanned up front, random access.

Bad records found by the scan (missing fields, bad captions, missing or empty files) are
left out of the record tables before any plan is made, so batches are full and the order
is fixed by (seed, epoch). An image that only fails when decoded (truncated, not an image,
too many pixels) is *substituted*: the sample at that plan position is replaced by another
record of the same source drawn from a generator seeded by (seed, epoch, position,
attempt), so every batch stays full and a rerun makes the same batch.
"""
from __future__ import annotations

import random
from typing import Callable, List, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..threads import worker_init
from .errors import BadImage, DataError
from .plan import batches_per_epoch, epoch_plan, rank_batch, sample_seed
from .records import RecordTable
from .samples import collate_samples, make_sample

__all__ = ["MapStyleBackend"]

_MAX_SUBSTITUTIONS = 32


class _RecordDataset(Dataset):
    """``dataset[(epoch, position, global_id)]`` -> ``Sample``; positions index the epoch plan."""

    def __init__(self, tables: Sequence[RecordTable], preprocess: Callable, *, mode: str, k: int,
                 seed: int, max_pixels: int, draft=None):
        self.tables = list(tables)
        self.draft = draft
        self.offsets = np.cumsum([0] + [len(t) for t in self.tables]).astype(np.int64)
        self.preprocess, self.mode, self.k, self.seed, self.max_pixels = preprocess, mode, k, seed, max_pixels

    def __len__(self):
        return int(self.offsets[-1])

    def _locate(self, gid: int):
        t = int(np.searchsorted(self.offsets, gid, side="right") - 1)
        return t, int(gid - self.offsets[t])

    def __getitem__(self, item):
        epoch, position, gid = item
        t, local = self._locate(int(gid))
        table, events = self.tables[t], []
        for attempt in range(_MAX_SUBSTITUTIONS):
            rec = table[local]
            try:
                sample = make_sample(rec.image, rec.caption, rec.where, preprocess=self.preprocess,
                                     mode=self.mode, k=self.k, seed=sample_seed(self.seed, epoch, position),
                                     max_pixels=self.max_pixels, draft=self.draft)
            except BadImage as e:
                # Only the record at this plan position is counted; a substitute that fails too
                # is counted where its own position comes, so every occurrence counts once.
                if attempt == 0:
                    events.append((e.kind, rec.where, f"{e.path}: {e.detail}; substituted"))
                last = e
                local = random.Random(sample_seed(self.seed, epoch, position, attempt + 1)).randrange(len(table))
                continue
            if attempt:
                sample.substitute, sample.events = True, events
            return sample
        raise DataError(f"{_MAX_SUBSTITUTIONS} images in a row failed to decode in {table.source} "
                        f"(last: {last}); check the data with `smartclip data check`")


_worker_init = worker_init  # one thread per DataLoader worker (smartclip.threads)


class MapStyleBackend:
    """Batches of one rank for map-style sources."""

    def __init__(self, tables: Sequence[RecordTable], weights: Sequence[float], *, preprocess: Callable,
                 tokenizer, batch_size: int, rank: int, world_size: int, seed: int, mode: str, k: int,
                 max_pixels: int, samples_per_epoch: int, num_workers: int, pin_memory: bool, draft=None):
        self.dataset = _RecordDataset(tables, preprocess, mode=mode, k=k, seed=seed, max_pixels=max_pixels,
                                      draft=draft)
        self.sizes = [len(t) for t in tables]
        self.weights = list(weights)
        self.tokenizer = tokenizer
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.samples_per_epoch = samples_per_epoch
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.plan_length = samples_per_epoch or sum(self.sizes)
        self.num_batches = batches_per_epoch(self.plan_length, batch_size, world_size)

    def plan(self, epoch: int) -> np.ndarray:
        return epoch_plan(self.sizes, self.weights, self.seed, epoch, self.samples_per_epoch)

    def batch_items(self, epoch: int, start: int) -> List[list]:
        plan, items = self.plan(epoch), []
        for b in range(start, self.num_batches):
            first = (b * self.world_size + self.rank) * self.batch_size
            ids = rank_batch(plan, b, self.batch_size, self.rank, self.world_size)
            items.append([(epoch, first + j, int(g)) for j, g in enumerate(ids)])
        return items

    def collate(self, samples):
        return collate_samples(samples, self.tokenizer)

    def batches(self, epoch: int, start: int):
        items = self.batch_items(epoch, start)
        if not items:
            return iter(())
        loader = DataLoader(self.dataset, batch_sampler=items, collate_fn=self.collate,
                            num_workers=self.num_workers, pin_memory=self.pin_memory,
                            worker_init_fn=_worker_init if self.num_workers else None)
        return iter(loader)
