"""Streamed training data: WebDataset shards (and any mix that includes them).

Every rank has ``W = max(1, num_workers)`` *readers* (its DataLoader workers); reader ``j``
of all ``R = world_size * W`` streams its own part of every source and makes its own full
batches, so no sample is read twice in an epoch:

- shards: when a source has at least ``R`` shards, whole shards are dealt to readers
  (largest first, to the reader with the fewest samples; fixed for the run, so batch counts
  do not change between epochs). With fewer shards, every reader streams all shards in the
  same order and keeps every ``R``-th complete sample.
- map-style sources in a mix: reader ``j`` takes every ``R``-th record of the epoch's permutation.

Order: the shard order and a shuffle buffer (``data.shuffle_buffer``) are seeded by
(seed, epoch, source, reader). Mixing: source ``i`` gets ``weight_i / sum(weights)`` of the
epoch's samples; each reader interleaves its quotas in a seeded random order, cycling a
source (with fresh shuffles) when its quota exceeds what the reader holds.

A rank's batches come from its workers in turn (the DataLoader's in-order round robin), so
the order also depends on ``num_workers``; a resumed run must use the same value, and the
position (batches done) is turned into how many batches each worker skips, without decoding.

Bad samples that only show when decoded are replaced by the previous good sample of the same
reader (counted and logged with ``substituted``), so every batch stays full.
"""
from __future__ import annotations

import itertools
import random
from typing import Callable, Dict, Iterator, List, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .config import DataConfig, SourceSpec
from .errors import BadCaption, BadImage, BadInputStats, DataError
from .plan import sample_seed, source_quotas
from .records import RecordTable
from .samples import Sample, collate_samples, make_sample
from .shards import IMAGE_EXTENSIONS, iter_shard, scan_shard, shard_caption
from .sources import scan_map_source

__all__ = ["StreamingBackend", "round_robin_consumed"]


def round_robin_consumed(batches_per_worker: Sequence[int], done: int) -> Tuple[List[int], int]:
    """After ``done`` batches of in-order round robin over workers with these batch counts (a
    worker with none left is passed over): how many each worker delivered, and which worker
    is next in the cycle."""
    consumed, n = [0] * len(batches_per_worker), len(batches_per_worker)
    pointer = 0
    while done > 0:
        if consumed[pointer] < batches_per_worker[pointer]:
            consumed[pointer] += 1
            done -= 1
        pointer = (pointer + 1) % n
    return consumed, pointer


def _shuffled(items: Iterator, size: int, rng: random.Random) -> Iterator:
    buf = []
    for item in items:
        if len(buf) < size:
            buf.append(item)
            continue
        i = rng.randrange(size)
        yield buf[i]
        buf[i] = item
    rng.shuffle(buf)
    yield from buf


class _ShardSource:
    def __init__(self, index: int, files: List[str], sizes: List[int]):
        self.index, self.files, self.sizes = index, files, sizes
        self.size = sum(sizes)
        self.assignment = None  # reader -> shard ids (shard mode) or None (sample-stride mode)

    def assign(self, readers: int):
        if len(self.files) >= readers:
            loads, self.assignment = [0] * readers, [[] for _ in range(readers)]
            for s in sorted(range(len(self.files)), key=lambda s: (-self.sizes[s], s)):
                j = min(range(readers), key=lambda r: (loads[r], r))
                self.assignment[j].append(s)
                loads[j] += self.sizes[s]
        self.readers = readers

    def count(self, j: int) -> int:
        if self.assignment is not None:
            return sum(self.sizes[s] for s in self.assignment[j])
        return self.size // self.readers + (1 if j < self.size % self.readers else 0)

    def raw(self, j: int, seed: int, epoch: int, pass_no: int) -> Iterator[tuple]:
        if self.assignment is not None:
            shards = list(self.assignment[j])
            random.Random(sample_seed(seed, epoch, self.index, pass_no, j)).shuffle(shards)
            for s in shards:
                for key, group in iter_shard(self.files[s]):
                    yield ("shard", self.files[s], key, group)
        else:
            shards = list(range(len(self.files)))
            random.Random(sample_seed(seed, epoch, self.index, pass_no)).shuffle(shards)
            ordinal = 0
            for s in shards:
                for key, group in iter_shard(self.files[s]):
                    if ordinal % self.readers == j:
                        yield ("shard", self.files[s], key, group)
                    ordinal += 1


class _TableSource:
    def __init__(self, index: int, table: RecordTable):
        self.index, self.table, self.size = index, table, len(table)

    def assign(self, readers: int):
        self.readers = readers

    def count(self, j: int) -> int:
        return self.size // self.readers + (1 if j < self.size % self.readers else 0)

    def raw(self, j: int, seed: int, epoch: int, pass_no: int) -> Iterator[tuple]:
        perm = np.random.default_rng([seed, epoch, self.index + 1, pass_no]).permutation(self.size)
        for i in perm[j::self.readers]:
            yield ("record", self.table[int(i)])


class _ReaderStream(IterableDataset):
    """Reader ``rank * W + worker``: yields its full, collated batches of one epoch."""

    def __init__(self, backend: "StreamingBackend", epoch: int, skip_batches: List[int], first_reader: int = 0):
        self.b, self.epoch, self.skip_batches, self.first_reader = backend, epoch, skip_batches, first_reader

    def _source_stream(self, src, j: int, quota: int) -> Iterator[tuple]:
        b = self.b
        passes = (src.raw(j, b.seed, self.epoch, p) for p in itertools.count())
        shuffled = (_shuffled(stream, b.shuffle_buffer, random.Random(sample_seed(b.seed, self.epoch, src.index, p, j, 1)))
                    for p, stream in enumerate(passes))
        return itertools.islice(itertools.chain.from_iterable(shuffled), quota)

    def _decode(self, raw: tuple, seed: int) -> Sample:
        b = self.b
        if raw[0] == "record":
            rec = raw[1]
            return make_sample(rec.image, rec.caption, rec.where, preprocess=b.preprocess, mode=b.mode, k=b.k,
                               seed=seed, max_pixels=b.max_pixels, draft=b.draft)
        _, shard, key, group = raw
        where = f"{shard} sample {key}"
        caption = shard_caption(group)
        ext = next(e for e in group if e in IMAGE_EXTENSIONS)
        return make_sample(group[ext], caption, where, preprocess=b.preprocess, mode=b.mode, k=b.k, seed=seed,
                           max_pixels=b.max_pixels, name=f"{where}.{ext}", draft=b.draft)

    def __iter__(self):
        b = self.b
        info = get_worker_info()
        # A fresh DataLoader starts its round robin at worker 0; after a restart, worker 0 plays
        # the reader whose batch comes next, so the delivered order continues unchanged.
        w = ((info.id if info is not None else 0) + self.first_reader) % b.readers_per_rank
        j = b.rank * b.readers_per_rank + w
        if info is not None:
            torch.set_num_threads(1)
        quotas = b.reader_quotas[j]
        streams = {s.index: self._source_stream(s, j, quotas[s.index]) for s in b.sources}
        labels = np.repeat(np.arange(len(b.sources)), quotas)
        labels = np.random.default_rng([b.seed, self.epoch, j, 2]).permutation(labels)
        n_batches = b.reader_batches[j]
        skip = self.skip_batches[w] * b.batch_size
        last_good, pending, batch, events = None, 0, [], []
        for position, label in enumerate(labels[: n_batches * b.batch_size]):
            raw = next(streams[int(label)])
            if position < skip:
                continue  # already delivered before the restart: read, never decoded
            try:
                sample = self._decode(raw, sample_seed(b.seed, self.epoch, j, position))
            except (BadImage, BadCaption) as e:
                where = raw[1].where if raw[0] == "record" else f"{raw[1]} sample {raw[2]}"
                events.append((e.kind, where, f"{getattr(e, 'path', '')} {e.detail}".strip() + "; substituted"))
                if last_good is None:
                    pending += 1
                    continue
                sample = Sample(last_good.image, list(last_good.texts), last_good.where, [], True)
            else:
                last_good = sample
                while pending:  # bad samples before the first good one take its copy
                    batch.append(Sample(sample.image, list(sample.texts), sample.where, [], True))
                    pending -= 1
                    if len(batch) == b.batch_size:
                        yield collate_samples(batch, b.tokenizer, events)
                        batch, events = [], []
            batch.append(sample)
            if len(batch) == b.batch_size:
                yield collate_samples(batch, b.tokenizer, events)
                batch, events = [], []
        if pending:
            raise DataError(f"reader {j}: no sample decoded in {pending} tries of epoch {self.epoch}; "
                            f"last error: {events[-1][1]}: {events[-1][0]} ({events[-1][2]})")


class StreamingBackend:
    """Batches of one rank when any source is a set of WebDataset shards."""

    def __init__(self, specs: Sequence[SourceSpec], cfg: DataConfig, *, scan_stats: BadInputStats,
                 preprocess: Callable, tokenizer, batch_size: int, rank: int, world_size: int, seed: int,
                 mode: str, k: int, max_pixels: int, samples_per_epoch: int, num_workers: int, pin_memory: bool,
                 draft=None):
        self.draft = draft
        self.preprocess, self.tokenizer, self.mode, self.k, self.max_pixels = preprocess, tokenizer, mode, k, max_pixels
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.num_workers, self.pin_memory, self.shuffle_buffer = num_workers, pin_memory, cfg.shuffle_buffer
        self.readers_per_rank = max(1, num_workers)
        readers = world_size * self.readers_per_rank
        self.sources = []
        for i, spec in enumerate(specs):
            if spec.kind == "wds":
                sizes = []
                for path in spec.files:
                    complete, events = scan_shard(path)
                    sizes.append(complete)
                    scan_stats.records_read += complete + len(events)
                    scan_stats.add_events(events, log_it=(rank == 0))
                if not sum(sizes):
                    raise DataError(f"{spec.spec}: no complete samples (image + txt/json caption) in {len(sizes)} shard(s)")
                src = _ShardSource(i, spec.files, sizes)
            else:
                table, bad, scanned = scan_map_source(spec, cfg)
                scan_stats.records_read += scanned
                scan_stats.add_events(bad, log_it=(rank == 0))
                src = _TableSource(i, table)
            src.assign(readers)
            self.sources.append(src)
        scan_stats.check(f"{cfg.train}: ")
        sizes = [s.size for s in self.sources]
        totals = source_quotas(sizes, [s.weight for s in specs], samples_per_epoch or sum(sizes))
        self.reader_quotas, self.reader_batches = [], []
        for j in range(readers):
            quotas = [int(s.count(j) * total // s.size) for s, total in zip(self.sources, totals)]
            self.reader_quotas.append(quotas)
            self.reader_batches.append(sum(quotas) // batch_size)
        per_rank = [sum(self.reader_batches[r * self.readers_per_rank:(r + 1) * self.readers_per_rank])
                    for r in range(world_size)]
        self.num_batches = min(per_rank)
        self.mine = self.reader_batches[rank * self.readers_per_rank:(rank + 1) * self.readers_per_rank]

    def describe(self) -> str:
        return (f"{sum(s.size for s in self.sources)} samples; batches per reader "
                f"{self.reader_batches} with {self.readers_per_rank} reader(s) per rank")

    def state_extra(self) -> Dict[str, int]:
        return {"readers_per_rank": self.readers_per_rank}

    def check_state(self, state: dict):
        if state.get("readers_per_rank", self.readers_per_rank) != self.readers_per_rank:
            raise DataError(f"cannot resume streamed data with data.num_workers giving {self.readers_per_rank} "
                            f"reader(s) per rank; it was saved with {state['readers_per_rank']} "
                            f"(set data.num_workers to match)")

    def batches(self, epoch: int, start: int):
        skip, first_reader = round_robin_consumed(self.mine, start)
        stream = _ReaderStream(self, epoch, skip, first_reader)
        loader = DataLoader(stream, batch_size=None, num_workers=self.num_workers, pin_memory=self.pin_memory)
        return iter(loader)
