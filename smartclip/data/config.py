"""``DataConfig``: the ``data`` section of a training config, and the source-list syntax."""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import List

from smartclip.configlib import check_types

from .captions import CAPTION_MODES
from .images import DECODE_MODES, DEFAULT_MAX_IMAGE_PIXELS
from .readers import parse_image_roots

__all__ = ["DataConfig", "SourceSpec", "parse_sources", "SOURCE_SEPARATOR"]

SOURCE_SEPARATOR = "::"


@dataclass
class SourceSpec:
    kind: str          # "csv" | "sharegpt4v" | "wds"
    spec: str          # as written (path or shard pattern)
    weight: float      # relative sampling weight (1 when not given)
    files: List[str]   # the file (csv/json) or the expanded shard list (wds)


@dataclass
class DataConfig:
    """Where the training pairs come from and how they are turned into batches.

    ``train`` is one source or several joined by ``::``, each optionally followed by
    ``@WEIGHT``: ``"cc.csv@1::sharegpt4v.json@2::shards/{000..009}.tar@0.5"``. A source is a
    ``.csv``/``.tsv`` file, a ShareGPT4V ``.json``, or WebDataset shards (a ``.tar`` file, a
    brace pattern, or a folder of ``.tar`` files). See docs/data.md.
    """
    train: str = ""
    caption_mode: str = "prefix"          # prefix (docs/method.md §4) | full | first | random_sentence
    captions_per_image: int = 1           # k captions sampled per image per step
    csv_image_key: str = "filepath"       # open_clip's default column names
    csv_caption_key: str = "title"
    csv_separator: str = ""               # "" = "," for .csv, tab for .tsv
    image_roots: str = ""                 # ShareGPT4V: "coco=/data/coco,sam=/data/sam,/data/other"
    exclude_sharegpt4v_eval: bool = True  # leave out records [:1000] (ShareGPT4V-1k) of .json sources
    check_files: bool = True              # stat every image file up front (missing / empty files)
    max_bad_fraction: float = 0.01        # more skipped records than this fraction stops the run
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS  # decompression-bomb guard
    decode: str = "exact"                 # exact | draft (JPEG DCT-domain reduction, reducing gap 2; not bit-exact)
    samples_per_epoch: int = 0            # 0 = total size of all sources; weights split it
    shuffle_buffer: int = 1000            # WebDataset shards: samples shuffled within this window
    num_workers: int = 4                  # DataLoader worker processes per rank
    pin_memory: bool = False

    def validate(self) -> None:
        """Raise ``ValueError`` naming ``data.<field>`` and what would be valid."""
        check_types(self, "data")  # the field types (smartclip.configlib); the values below
        if not self.train.strip():
            raise ValueError("data.train is empty; give a .csv/.tsv file, a ShareGPT4V .json or WebDataset "
                             "shards ('shards/{000..009}.tar'), several joined by '::' with optional '@WEIGHT'")
        if self.caption_mode not in CAPTION_MODES:
            raise ValueError(f"data.caption_mode={self.caption_mode!r} is not valid; use one of {', '.join(CAPTION_MODES)}")
        if self.captions_per_image < 1:
            raise ValueError(f"data.captions_per_image={self.captions_per_image!r}; expected an integer >= 1")
        if self.captions_per_image > 1 and self.caption_mode in ("full", "first"):
            raise ValueError(f"data.captions_per_image={self.captions_per_image} with data.caption_mode="
                             f"{self.caption_mode!r} gives identical captions; use caption_mode 'prefix' or "
                             f"'random_sentence', or captions_per_image=1")
        for key in ("csv_image_key", "csv_caption_key"):
            if not str(getattr(self, key)).strip():
                raise ValueError(f"data.{key} is empty; expected a CSV column name")
        if self.csv_image_key == self.csv_caption_key:
            raise ValueError("data.csv_image_key and data.csv_caption_key name the same column")
        if self.csv_separator not in ("", ",", "\t", ";", "|"):
            raise ValueError(f"data.csv_separator={self.csv_separator!r}; expected '' (by extension), ',', '\\t', ';' or '|'")
        if self.decode not in DECODE_MODES:
            raise ValueError(f"data.decode={self.decode!r} is not valid; use one of {', '.join(DECODE_MODES)}")
        if not (0.0 <= float(self.max_bad_fraction) <= 1.0):
            raise ValueError(f"data.max_bad_fraction={self.max_bad_fraction}; expected a fraction in [0, 1]")
        for key, low in (("max_image_pixels", 1), ("samples_per_epoch", 0), ("shuffle_buffer", 1),
                         ("num_workers", 0)):
            value = getattr(self, key)
            if value < low:
                raise ValueError(f"data.{key}={value!r}; expected an integer >= {low}")
        parse_image_roots(self.image_roots)
        parse_sources(self.train)

    def sources(self) -> List[SourceSpec]:
        return parse_sources(self.train)


def _expand_shards(pattern: str) -> List[str]:
    if os.path.isdir(pattern):
        files = sorted(glob.glob(os.path.join(pattern, "*.tar")) + glob.glob(os.path.join(pattern, "*.tar.gz"))
                       + glob.glob(os.path.join(pattern, "*.tgz")))
        if not files:
            raise ValueError(f"data.train: folder {pattern!r} has no .tar shards")
        return files
    from braceexpand import braceexpand
    files = list(braceexpand(pattern))
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise ValueError(f"data.train: {len(missing)} of {len(files)} shard(s) of {pattern!r} do not exist "
                         f"(first: {missing[0]}); shards must be local files")
    return files


def _kind(path: str) -> str:
    low = path.lower()
    if low.endswith((".csv", ".tsv")):
        return "csv"
    if low.endswith(".json"):
        return "sharegpt4v"
    if low.endswith((".tar", ".tar.gz", ".tgz")) or os.path.isdir(path):
        return "wds"
    raise ValueError(f"data.train: cannot tell the format of {path!r}; expected .csv/.tsv, a ShareGPT4V .json, "
                     f"or WebDataset .tar shards (a file, a brace pattern like 'shards/{{000..009}}.tar', or a folder)")


def parse_sources(train: str) -> List[SourceSpec]:
    """Parse ``data.train``: ``SOURCE[@WEIGHT]`` joined by ``::``."""
    out = []
    for part in train.split(SOURCE_SEPARATOR):
        part = part.strip()
        if not part:
            raise ValueError(f"data.train={train!r} has an empty source between '::' separators")
        spec, weight = part, 1.0
        head, at, tail = part.rpartition("@")
        if at:
            try:
                weight = float(tail)
            except ValueError:
                head = None  # an '@' that is part of the path
            else:
                spec = head.strip()
            if weight <= 0 or weight != weight or weight == float("inf"):
                raise ValueError(f"data.train: weight of {spec!r} is {tail!r}; expected a positive number")
        kind = _kind(spec)
        if kind == "wds":
            files = _expand_shards(spec)
        else:
            if not os.path.isfile(spec):
                raise ValueError(f"data.train: {spec!r} does not exist")
            files = [spec]
        out.append(SourceSpec(kind, spec, weight, files))
    return out
