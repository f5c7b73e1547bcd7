"""Bad-input kinds, the per-rank counter of them, and the errors the data layer raises."""
from __future__ import annotations

import logging
from collections import Counter
from typing import Dict, Iterable

log = logging.getLogger("smartclip.data")

# Kinds of bad input that make a record unusable: it is skipped (map-style sources: left out
# by the up-front scan, or substituted deterministically when it fails to decode; shards:
# replaced by the previous good sample). Every one counts towards ``max_bad_fraction``.
SKIPPED_KINDS = (
    "missing_file",        # image path does not exist
    "empty_file",          # zero-byte image file
    "truncated_image",     # header readable, pixel data cut short or corrupt
    "not_an_image",        # PIL cannot identify the file as an image
    "decompression_bomb",  # more pixels than data.max_image_pixels
    "missing_field",       # record lacks its image path, caption or shard member
    "empty_caption",       # caption is the empty string
    "whitespace_caption",  # caption is only whitespace
    "non_utf8_caption",    # caption bytes are not valid UTF-8
)
# Kinds that are repaired in place: the record is used, and the repair is counted.
REPAIRED_KINDS = (
    "converted_grayscale",  # L / I / F / 1 images -> RGB
    "converted_cmyk",       # CMYK -> RGB
    "converted_palette",    # P images -> RGB
    "converted_alpha",      # RGBA / LA / PA -> composited on white, RGB
    "converted_other",      # YCbCr / LAB / HSV / RGBX ... -> RGB
    "truncated_caption",    # caption longer than the context; tokens cut, end-of-text kept last
)
ALL_KINDS = SKIPPED_KINDS + REPAIRED_KINDS


class DataError(RuntimeError):
    """A dataset cannot be used as configured (unreadable file, bad layout, too much bad input)."""


class BadImage(Exception):
    """An image file that cannot be used. ``kind`` is one of ``SKIPPED_KINDS``."""

    def __init__(self, kind: str, path: str, detail: str = ""):
        assert kind in SKIPPED_KINDS, kind
        self.kind, self.path, self.detail = kind, str(path), detail
        super().__init__(f"{kind}: {path}" + (f" ({detail})" if detail else ""))


class BadCaption(Exception):
    """A caption that cannot be used. ``kind`` is one of ``SKIPPED_KINDS``."""

    def __init__(self, kind: str, detail: str = ""):
        assert kind in SKIPPED_KINDS, kind
        self.kind, self.detail = kind, detail
        super().__init__(f"{kind}" + (f" ({detail})" if detail else ""))


class BadInputStats:
    """Counts of bad input by kind and of records read, with the check against
    ``max_bad_fraction``. Events are ``(kind, where)``; ``where`` names the file and record."""

    def __init__(self, max_bad_fraction: float = 1.0):
        self.max_bad_fraction = max_bad_fraction
        self.counts: Counter = Counter()
        self.records_read = 0

    def add(self, kind: str, where: str, detail: str = "", *, log_it: bool = True):
        if kind not in ALL_KINDS:
            raise ValueError(f"unknown bad-input kind {kind!r}; valid: {', '.join(ALL_KINDS)}")
        self.counts[kind] += 1
        if log_it:
            level = logging.WARNING if kind in SKIPPED_KINDS else logging.INFO
            log.log(level, "%s %s: %s%s", "skipped" if kind in SKIPPED_KINDS else "repaired",
                    kind, where, f" ({detail})" if detail else "")

    def add_events(self, events: Iterable, *, log_it: bool = False):
        for ev in events:
            self.add(ev[0], ev[1], ev[2] if len(ev) > 2 else "", log_it=log_it)

    @property
    def num_bad(self) -> int:
        return sum(self.counts[k] for k in SKIPPED_KINDS)

    def bad_fraction(self) -> float:
        return self.num_bad / max(1, self.records_read)

    def check(self, context: str = "", *, min_records: int = 0):
        """Raise ``DataError`` when the bad fraction exceeds ``max_bad_fraction`` (once at
        least ``min_records`` records have been read, so a few early failures do not trip it)."""
        if self.records_read < max(1, min_records):
            return
        frac = self.bad_fraction()
        if frac > self.max_bad_fraction:
            kinds = ", ".join(f"{k}={self.counts[k]}" for k in SKIPPED_KINDS if self.counts[k])
            raise DataError(
                f"{context}{self.num_bad} of {self.records_read} records are bad ({frac:.1%} > "
                f"data.max_bad_fraction={self.max_bad_fraction:g}): {kinds}. Fix the data, or raise "
                f"data.max_bad_fraction; `smartclip data check PATH` lists every bad record.")

    def as_dict(self, prefix: str = "") -> Dict[str, int]:
        out = {f"{prefix}records_read": self.records_read, f"{prefix}bad": self.num_bad}
        out.update({f"{prefix}{k}": int(self.counts[k]) for k in ALL_KINDS})
        return out

    def merge(self, other: "BadInputStats"):
        self.counts.update(other.counts)
        self.records_read += other.records_read
