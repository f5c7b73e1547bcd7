"""The records of one map-style source (CSV/TSV or ShareGPT4V json) as training reads them.

Shared by the loader's backends (map-style and streamed), ``check_dataset`` and ``prepare``,
so all of them apply the same readers, the same file checks and the same ShareGPT4V-1k rule.
"""
from __future__ import annotations

import logging
from typing import Tuple

from .config import DataConfig, SourceSpec
from .errors import DataError
from .readers import SHAREGPT4V_EVAL_SIZE, read_csv, scan_sharegpt4v
from .records import RecordTable

__all__ = ["read_map_source", "scan_map_source"]

log = logging.getLogger("smartclip.data")


def read_map_source(src: SourceSpec, cfg: DataConfig) -> Tuple[list, list]:
    """``(good records, bad events)`` of one CSV or ShareGPT4V json source, as configured.
    Records ``[:1000]`` of a json (ShareGPT4V-1k) are left out while ``cfg.exclude_sharegpt4v_eval``."""
    path = src.files[0]
    if src.kind == "csv":
        return read_csv(path, image_key=cfg.csv_image_key, caption_key=cfg.csv_caption_key,
                        separator=cfg.csv_separator or None, check_files=cfg.check_files)
    start = SHAREGPT4V_EVAL_SIZE if cfg.exclude_sharegpt4v_eval else 0
    return scan_sharegpt4v(path, cfg.image_roots, check_files=cfg.check_files, start=start)


def scan_map_source(src: SourceSpec, cfg: DataConfig) -> Tuple[RecordTable, list, int]:
    """``(table of good records, bad events, records scanned)`` of one CSV or json source."""
    path = src.files[0]
    good, bad = read_map_source(src, cfg)
    if src.kind == "sharegpt4v" and cfg.exclude_sharegpt4v_eval:
        log.info("%s: records [:%d] (ShareGPT4V-1k) held out of training (data.exclude_sharegpt4v_eval)",
                 path, SHAREGPT4V_EVAL_SIZE)
    if not good:
        raise DataError(f"{path}: no usable records ({len(bad)} bad"
                        + (f"; first: {bad[0][1]}: {bad[0][0]} ({bad[0][2]})" if bad else "") + ")")
    return RecordTable(path, good), bad, len(good) + len(bad)
