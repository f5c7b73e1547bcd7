"""Record tables: image path + caption + provenance for map-style sources, stored compactly.

A million Python strings in a list shared with DataLoader workers get copied page by page as
reference counts change; a table of a few numpy arrays does not, so records are kept as
UTF-8 bytes in one buffer with offsets.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence

import numpy as np

__all__ = ["Record", "StringColumn", "RecordTable"]


@dataclass(frozen=True)
class Record:
    image: str     # path of the image file
    caption: str   # caption text (newlines replaced by spaces)
    source: str    # the file the record came from
    index: int     # record number in that file (0-based; for CSV the data row, header excluded)

    @property
    def where(self) -> str:
        return f"{self.source} record {self.index}"


class StringColumn:
    """Immutable list of strings stored as one UTF-8 buffer (surrogate escapes kept)."""

    def __init__(self, strings: Sequence[str]):
        encoded = [s.encode("utf-8", "surrogateescape") for s in strings]
        self.offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(b) for b in encoded], out=self.offsets[1:])
        self.buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int) -> str:
        start, end = self.offsets[i], self.offsets[i + 1]
        return self.buffer[start:end].tobytes().decode("utf-8", "surrogateescape")


class RecordTable:
    """The good records of one source (a CSV/TSV file or a ShareGPT4V json)."""

    def __init__(self, source: str, records: List[Record]):
        self.source = source
        self.images = StringColumn([r.image for r in records])
        self.captions = StringColumn([r.caption for r in records])
        self.indices = np.asarray([r.index for r in records], dtype=np.int64)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> Record:
        return Record(self.images[i], self.captions[i], self.source, int(self.indices[i]))
