"""``check_dataset``: every kind of bad input in a dataset, without training.

Reads every source of a ``data.train`` string the way training would (same readers, same
ShareGPT4V held-out rule), then decodes every image and tokenises every full caption, in
a process pool. The report counts records by kind and lists each bad or repaired one with
its file and record.
"""
from __future__ import annotations

import multiprocessing as mp
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import List, Optional, Tuple

from .config import DataConfig
from .errors import ALL_KINDS, REPAIRED_KINDS, SKIPPED_KINDS, BadCaption, BadImage
from .images import load_image
from .shards import IMAGE_EXTENSIONS, iter_shard, scan_shard, shard_caption
from .sources import read_map_source

__all__ = ["CheckReport", "check_dataset"]

Event = Tuple[str, str, str]


@dataclass
class CheckReport:
    train: str
    records: int = 0                       # records found in all sources
    counts: Counter = field(default_factory=Counter)
    events: List[Event] = field(default_factory=list)  # (kind, where, detail), skipped and repaired
    max_bad_fraction: float = 0.01
    context_length: int = 248
    good_records: List[str] = field(default_factory=list)  # "where" of every usable record

    @property
    def bad(self) -> int:
        return sum(self.counts[k] for k in SKIPPED_KINDS)

    @property
    def good(self) -> int:
        return self.records - self.bad

    @property
    def bad_fraction(self) -> float:
        return self.bad / max(1, self.records)

    @property
    def ok(self) -> bool:
        return self.records > 0 and self.bad_fraction <= self.max_bad_fraction

    def as_dict(self) -> dict:
        return {"train": self.train, "records": self.records, "good": self.good, "bad": self.bad,
                "bad_fraction": self.bad_fraction, "max_bad_fraction": self.max_bad_fraction, "ok": self.ok,
                "counts": {k: int(self.counts[k]) for k in ALL_KINDS},
                "events": [{"kind": k, "where": w, "detail": d} for k, w, d in self.events]}

    def summary(self, show: int = 20) -> str:
        lines = [f"{self.train}: {self.records} records, {self.good} usable, {self.bad} skipped "
                 f"({self.bad_fraction:.2%}; limit data.max_bad_fraction={self.max_bad_fraction:g})"]
        for title, kinds in (("skipped", SKIPPED_KINDS), ("repaired", REPAIRED_KINDS)):
            for k in kinds:
                if self.counts[k]:
                    note = f" (longer than {self.context_length} tokens)" if k == "truncated_caption" else ""
                    lines.append(f"  {title:<8} {k:<20} {self.counts[k]:>8}{note}")
        shown = [e for e in self.events if e[0] in SKIPPED_KINDS][:show]
        shown += [e for e in self.events if e[0] in REPAIRED_KINDS][:max(0, show - len(shown))]
        for kind, where, detail in shown:
            lines.append(f"  {kind}: {where}" + (f" ({detail})" if detail else ""))
        if len(self.events) > len(shown):
            lines.append(f"  ... {len(self.events) - len(shown)} more (write them all with --report FILE.json)")
        lines.append("OK" if self.ok else "FAIL: too much bad input" if self.records else "FAIL: no records")
        return "\n".join(lines)


_TOKENIZER = None


def _init(context_length: int):
    global _TOKENIZER
    import torch
    torch.set_num_threads(1)
    from ..tokenizer import Tokenizer
    _TOKENIZER = Tokenizer(context_length)


def _caption_events(caption: str, where: str) -> List[Event]:
    _, truncated = _TOKENIZER.tokenize([caption])
    return [("truncated_caption", where, f"longer than {_TOKENIZER.context_length} tokens")] if truncated[0] else []


def _check_record(job) -> Tuple[str, List[Event]]:
    image, caption, where, max_pixels = job
    repairs: List[str] = []
    try:
        load_image(image, max_pixels=max_pixels, repairs=repairs)
    except BadImage as e:
        return where, [(e.kind, where, f"{e.path}: {e.detail}")]
    return where, [(k, where, image) for k in repairs] + _caption_events(caption, where)


def _check_shard(job) -> Tuple[int, List[str], List[Event]]:
    path, max_pixels = job
    complete, events = scan_shard(path)  # events: incomplete samples
    records, good = complete + len(events), []
    for key, group in iter_shard(path):
        where = f"{path} sample {key}"
        try:
            caption = shard_caption(group)
        except BadCaption as e:
            events.append((e.kind, where, e.detail))
            continue
        ext = next(e for e in group if e in IMAGE_EXTENSIONS)
        repairs: List[str] = []
        try:
            load_image(group[ext], name=f"{where}.{ext}", max_pixels=max_pixels, repairs=repairs)
        except BadImage as e:
            events.append((e.kind, where, e.detail))
            continue
        events.extend((k, where, ext) for k in repairs)
        events.extend(_caption_events(caption, where))
        good.append(where)
    return records, good, events


def check_dataset(cfg, *, workers: Optional[int] = None, context_length: int = 248, limit: int = 0) -> CheckReport:
    """Check every record of ``cfg`` (a ``DataConfig`` or a ``data.train`` string).
    ``limit`` > 0 checks only records numbered below ``limit`` in each CSV / json source."""
    if isinstance(cfg, str):
        cfg = DataConfig(train=cfg)
    cfg.validate()
    report = CheckReport(cfg.train, max_bad_fraction=cfg.max_bad_fraction, context_length=context_length)
    workers = workers or min(4, os.cpu_count() or 1)
    record_jobs, shard_jobs = [], []
    for spec in cfg.sources():
        if spec.kind == "wds":
            shard_jobs.extend((path, cfg.max_image_pixels) for path in spec.files)
            continue
        good, bad = read_map_source(spec, cfg)
        if limit:
            good = [r for r in good if r.index < limit]
            bad = [e for e in bad if _record_number(e[1]) < limit]
        report.records += len(good) + len(bad)
        _add(report, bad)
        record_jobs.extend((r.image, r.caption, r.where, cfg.max_image_pixels) for r in good)
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
    if workers > 1 and len(record_jobs) + len(shard_jobs) > 1:
        with ctx.Pool(workers, initializer=_init, initargs=(context_length,)) as pool:
            record_results = list(pool.imap(_check_record, record_jobs, chunksize=64))
            shard_results = list(pool.imap(_check_shard, shard_jobs))
    else:
        _init(context_length)
        record_results = [_check_record(j) for j in record_jobs]
        shard_results = [_check_shard(j) for j in shard_jobs]
    for where, events in record_results:
        _add(report, events)
        if not any(e[0] in SKIPPED_KINDS for e in events):
            report.good_records.append(where)
    for records, good, events in shard_results:
        report.records += records
        report.good_records.extend(good)
        _add(report, events)
    return report


def _record_number(where: str) -> int:
    parts = where.split(" record ")
    return int(parts[1].split()[0]) if len(parts) > 1 else -1


def _add(report: CheckReport, events: List[Event]):
    for ev in events:
        report.counts[ev[0]] += 1
        report.events.append(ev)
