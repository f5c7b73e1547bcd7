"""``build_train_data`` and ``TrainData``: per-rank batches with a resumable position."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional

from .config import DataConfig
from .errors import BadInputStats, DataError
from .mapstyle import MapStyleBackend
from .prepared import check_prepared_recipe, describe_recipe, find_prepared, image_recipe, preprocess_cfg_of
from .sources import scan_map_source
from .streaming import StreamingBackend

__all__ = ["TrainData", "build_train_data"]

log = logging.getLogger("smartclip.data")

# The running bad fraction is only checked once this many records were read on a rank, so a
# few bad images among the first batches do not stop a run whose overall fraction is fine.
MIN_RECORDS_FOR_RUNTIME_CHECK = 512


class TrainData:
    """Batches of one rank, epoch by epoch, with a position that survives a restart.

    ``iter(data)`` yields the remaining batches of the current epoch:
    ``{"images": [B,3,H,W], "tokens": [B*k, ctx], "image_index": [B*k], "texts": [B*k]}``.
    ``set_epoch(e)`` moves to epoch ``e`` (from its start, unless ``e`` is the epoch the
    position already points into). ``state_dict()`` / ``load_state_dict()`` carry the position.
    """

    def __init__(self, backend, *, cfg: DataConfig, batch_size: int, rank: int, world_size: int, seed: int,
                 scan_stats: BadInputStats):
        self.backend, self.cfg = backend, cfg
        self.batch_size, self.rank, self.world_size, self.seed = batch_size, rank, world_size, seed
        self.epoch, self.position = 0, 0
        self.scan_stats = scan_stats
        self.read_stats = BadInputStats(cfg.max_bad_fraction)

    def __len__(self) -> int:
        return self.backend.num_batches

    def set_epoch(self, epoch: int):
        if int(epoch) != self.epoch:
            self.epoch, self.position = int(epoch), 0

    def __iter__(self):
        it = self.backend.batches(self.epoch, self.position)
        epoch = self.epoch
        while self.position < len(self) and self.epoch == epoch:
            try:
                batch = next(it)
            except StopIteration:
                raise DataError(f"rank {self.rank}: the loader ended after {self.position} of {len(self)} "
                                f"batches of epoch {self.epoch}") from None
            events = batch.pop("events")
            self.read_stats.records_read += len(batch["images"])
            self.read_stats.add_events(events, log_it=True)
            self.position += 1
            # Checked once enough records were read, and always at the end of an epoch.
            self.read_stats.check(f"rank {self.rank}, epoch {self.epoch}: ",
                                  min_records=0 if self.position == len(self) else MIN_RECORDS_FOR_RUNTIME_CHECK)
            yield batch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batches_done": self.position, "seed": self.seed,
                "batch_size": self.batch_size, "world_size": self.world_size,
                "num_batches": len(self), **getattr(self.backend, "state_extra", lambda: {})()}

    def load_state_dict(self, state: dict):
        for key, mine in (("seed", self.seed), ("batch_size", self.batch_size), ("world_size", self.world_size),
                          ("num_batches", len(self))):
            if key in state and state[key] != mine:
                raise DataError(f"cannot resume the data position: it was saved with {key}={state[key]}, "
                                f"this run has {key}={mine}; the batch order would differ")
        check = getattr(self.backend, "check_state", None)
        if check:
            check(state)
        self.epoch, self.position = int(state["epoch"]), int(state["batches_done"])

    def stats(self) -> Dict[str, int]:
        """Counts on this rank: records read, bad input by kind (skipped and repaired), plus the
        up-front scan's counts on rank 0 only, so a sum over ranks counts each record once."""
        total = BadInputStats()
        total.merge(self.read_stats)
        if self.rank == 0:
            total.counts.update(self.scan_stats.counts)
        out = total.as_dict()
        out["records_scanned"] = self.scan_stats.records_read if self.rank == 0 else 0
        return out


def build_train_data(cfg: DataConfig, *, preprocess: Callable, tokenizer, batch_size: int, rank: int = 0,
                     world_size: int = 1, seed: int = 0, preprocess_cfg: Optional[dict] = None) -> TrainData:
    """The batches of rank ``rank`` of ``world_size`` for ``cfg`` (``batch_size`` images per rank).

    ``preprocess_cfg``: the model's open_clip preprocessing config (``model.preprocess_cfg``);
    without it, it is read from ``preprocess``'s resize when that is an open_clip eval
    transform. A folder written by ``smartclip data prepare`` in ``cfg.train`` is checked
    against it (same image size and interpolation), and ``data.decode: draft`` needs it."""
    cfg.validate()
    if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"batch_size={batch_size}, rank={rank}, world_size={world_size}: need batch_size >= 1 "
                         f"and 0 <= rank < world_size")
    sources = cfg.sources()
    if preprocess_cfg is None:
        preprocess_cfg = preprocess_cfg_of(preprocess)
    for src in sources:
        folder = find_prepared(src.spec, src.files) if src.kind == "wds" else None
        if folder:
            manifest = check_prepared_recipe(folder, preprocess_cfg, cfg.max_bad_fraction)
            if preprocess_cfg is None:
                log.warning("data: %s was prepared for %s; the model's preprocessing is unknown here (pass "
                            "preprocess_cfg), so it was not checked", folder, describe_recipe(manifest["recipe"]["image"]))
    draft = None
    if cfg.decode == "draft":
        if preprocess_cfg is None:
            raise ValueError("data.decode=draft needs the model's image size: pass preprocess_cfg=model.preprocess_cfg")
        recipe = image_recipe(preprocess_cfg)
        draft = (recipe["size"], recipe["resize_mode"])
    scan_stats = BadInputStats(cfg.max_bad_fraction)
    common = dict(preprocess=preprocess, tokenizer=tokenizer, batch_size=batch_size, rank=rank,
                  world_size=world_size, seed=seed, mode=cfg.caption_mode, k=cfg.captions_per_image,
                  max_pixels=cfg.max_image_pixels, samples_per_epoch=cfg.samples_per_epoch,
                  num_workers=cfg.num_workers, pin_memory=cfg.pin_memory, draft=draft)
    if all(s.kind != "wds" for s in sources):
        tables = []
        for src in sources:
            table, bad, scanned = scan_map_source(src, cfg)
            scan_stats.records_read += scanned
            scan_stats.add_events(bad, log_it=(rank == 0))
            tables.append(table)
        scan_stats.check(f"{cfg.train}: ")
        backend = MapStyleBackend(tables, [s.weight for s in sources], **common)
    else:
        backend = StreamingBackend(sources, cfg, scan_stats=scan_stats, **common)
    if backend.num_batches == 0:
        raise DataError(f"{cfg.train}: too few samples for one batch of {batch_size} on each of {world_size} "
                        f"rank(s) ({backend.describe() if hasattr(backend, 'describe') else ''})")
    data = TrainData(backend, cfg=cfg, batch_size=batch_size, rank=rank, world_size=world_size, seed=seed,
                     scan_stats=scan_stats)
    log.info("data: %s -> %d batches of %d per epoch on rank %d/%d", cfg.train, len(data), batch_size, rank,
             world_size)
    return data
