"""CLIP_benchmark's WebDataset layout for classification: an inventory of bad input by
kind, a decode check, and filtered views that let CLIP_benchmark read only the good samples.

The layout (``clip_benchmark.datasets.builder.build_wds_dataset``; the published
``clip-benchmark/wds_*`` sets)::

    ROOT/classnames.txt                           one class name per line, in label order
    ROOT/zeroshot_classification_templates.txt    one template per line, '{c}' for the class
    ROOT/dataset_type.txt                         optional: 'multilabel' (labels in .npy)
    ROOT/<split>/nshards.txt                      N
    ROOT/<split>/0.tar ... <N-1>.tar              <key>.{webp,png,jpg,jpeg} + <key>.cls

The inventory reads tar headers and the small label members only, so it is cheap; images
are decoded by CLIP_benchmark's pipeline during the run, or by :func:`verify_images` when
a run allowed to be partial has to find every unreadable one. A decoding error inside the
pipeline stops it, so samples are never skipped there: a partial run is scored on a
*view* (:func:`write_view`), a folder of the same layout whose shards hold the good
samples only (links to untouched shards, filtered copies of the others).
"""
from __future__ import annotations

import io
import os
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Set, Tuple

import numpy as np

from .benchmark import DatasetFormatError, DatasetNotFoundError

__all__ = ["WDS_LAYOUT", "WdsInventory", "inventory", "verify_images", "write_view", "sample_key"]

IMAGE_EXTENSIONS = ("webp", "png", "jpg", "jpeg")  # what CLIP_benchmark's pipeline decodes
CLASSNAMES = "classnames.txt"
TEMPLATES = "zeroshot_classification_templates.txt"
DATASET_TYPE = "dataset_type.txt"
_LFS_POINTER = b"version https://git-lfs"
WDS_LAYOUT = (f"{CLASSNAMES}, {TEMPLATES}, optional {DATASET_TYPE} ('multilabel'), test/nshards.txt (N) and "
              "test/0.tar ... test/<N-1>.tar holding <key>.{webp,png,jpg,jpeg} + <key>.cls (<key>.npy for "
              "multilabel); the layout of the published clip-benchmark/wds_* sets")
Event = Tuple[str, str, str]


def sample_key(member_name: str) -> Tuple[Optional[str], str]:
    """WebDataset's split of a tar member name into sample key and extension: the key is
    the path up to the first dot of the file name; a name without a dot belongs to no sample."""
    folder, base = os.path.split(member_name)
    stem, dot, ext = base.partition(".")
    if not dot or not stem:
        return None, ""
    return (f"{folder}/{stem}" if folder else stem), ext.lower()


@dataclass
class WdsInventory:
    root: Path
    split: str
    classnames: List[str]
    multilabel: bool
    shards: List[Path]                                          # as nshards.txt names them
    samples: int = 0                                            # samples in readable shards
    problems: Counter = field(default_factory=Counter)          # kind -> count
    events: List[Event] = field(default_factory=list)           # (kind, where, detail)
    bad_samples: Dict[int, Set[str]] = field(default_factory=dict)  # shard index -> keys left out
    bad_shards: Set[int] = field(default_factory=set)           # shards that cannot be read at all

    @property
    def clean(self) -> bool:
        return not self.bad_shards and not any(self.bad_samples.values())

    def add(self, kind: str, where: str, detail: str = "", shard: Optional[int] = None, key: Optional[str] = None):
        self.problems[kind] += 1
        self.events.append((kind, where, detail))
        if key is not None:
            self.bad_samples.setdefault(shard, set()).add(key)
        elif shard is not None:
            self.bad_shards.add(shard)

    def missing(self) -> List[str]:
        return [f"{where} ({kind}{': ' + detail if detail else ''})" for kind, where, detail in self.events]

    def fingerprint(self) -> List[object]:
        """What identifies the inputs for the feature cache: every shard's size and mtime,
        and the samples left out."""
        parts: List[object] = [self.split, *self.classnames]
        for path in self.shards:
            st = path.stat() if path.is_file() else None
            parts.append(f"{path}|{st.st_size}|{st.st_mtime_ns}" if st else f"{path}|absent")
        parts.extend(f"{i}:{sorted(keys)}" for i, keys in sorted(self.bad_samples.items()))
        return parts


def _read_lines(path: Path) -> List[str]:
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]


def _need(path: Path, root: Path) -> Path:
    if not path.is_file():
        raise DatasetNotFoundError(f"{path} not found. Expected under {root}: {WDS_LAYOUT}")
    return path


def _label_problem(ext: str, data: bytes, n_classes: int) -> str:
    try:
        if ext == "cls":
            label = int(data.decode("utf-8").strip())
            return "" if 0 <= label < n_classes else f"label {label} outside 0..{n_classes - 1}"
        values = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - reported per sample
        return f"unparseable .{ext} ({type(exc).__name__}: {exc})"
    if values.shape != (n_classes,):
        return f".npy of shape {values.shape}, expected ({n_classes},)"
    if not np.isin(values, (0, 1)).all():
        return ".npy values must be 0 or 1"
    return ""


def inventory(root, split: str = "test") -> WdsInventory:
    """Check the layout and every shard's members by kind: ``missing_shard``,
    ``lfs_pointer_shard`` (a Git LFS pointer, not fetched), ``unreadable_shard``,
    ``sample_without_image``, ``sample_without_label``, ``bad_label``, ``empty_image``.
    A missing ``nshards.txt``, ``classnames.txt`` or templates file raises
    :class:`DatasetNotFoundError` (CLIP_benchmark needs all three); nothing is decoded."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetNotFoundError(f"data root {root} does not exist. Expected under it: {WDS_LAYOUT}")
    nshards_file = _need(root / split / "nshards.txt", root)
    classnames = _read_lines(_need(root / CLASSNAMES, root))
    if not classnames:
        raise DatasetFormatError(f"{root / CLASSNAMES}: no class names")
    _need(root / TEMPLATES, root)
    kind = (root / DATASET_TYPE).read_text().strip().lower() if (root / DATASET_TYPE).is_file() else "classification"
    if kind == "retrieval":
        raise DatasetFormatError(f"{root}: {DATASET_TYPE} says 'retrieval'; this is not a classification set")
    try:
        count = int(nshards_file.read_text().strip())
    except ValueError:
        raise DatasetFormatError(f"{nshards_file}: expected the number of shards, got "
                                 f"{nshards_file.read_text()[:40]!r}") from None
    label_ext = "npy" if kind == "multilabel" else "cls"
    inv = WdsInventory(root, split, classnames, kind == "multilabel",
                       [root / split / f"{i}.tar" for i in range(count)])
    for index, path in enumerate(inv.shards):
        where = f"{split}/{path.name}"
        if not path.is_file():
            inv.add("missing_shard", where, "named by nshards.txt", shard=index)
            continue
        with open(path, "rb") as f:
            if f.read(len(_LFS_POINTER)) == _LFS_POINTER:
                inv.add("lfs_pointer_shard", where, "a Git LFS pointer: run 'git lfs pull'", shard=index)
                continue
        try:
            _scan_shard(inv, index, path, where, label_ext)
        except (tarfile.TarError, OSError) as exc:
            inv.add("unreadable_shard", where, f"{type(exc).__name__}: {exc}", shard=index)
    return inv


def _scan_shard(inv: WdsInventory, index: int, path: Path, where: str, label_ext: str) -> None:
    def close(key, exts, label_problem, empty):
        inv.samples += 1
        at = f"{where}:{key}"
        if not any(e in IMAGE_EXTENSIONS for e in exts):
            inv.add("sample_without_image", at, f"has {', '.join(sorted(exts))}", index, key)
        elif empty:
            inv.add("empty_image", at, "0 bytes", index, key)
        elif label_ext not in exts:
            inv.add("sample_without_label", at, f"no .{label_ext}; has {', '.join(sorted(exts))}", index, key)
        elif label_problem:
            inv.add("bad_label", at, label_problem, index, key)

    with tarfile.open(path, "r:") as tar:
        key, exts, label_problem, empty = None, set(), "", False
        for member in tar:
            if not member.isfile():
                continue
            member_key, ext = sample_key(member.name)
            if member_key is None:
                continue
            if member_key != key:  # WebDataset groups consecutive members by key
                if key is not None:
                    close(key, exts, label_problem, empty)
                key, exts, label_problem, empty = member_key, set(), "", False
            exts.add(ext)
            if ext in IMAGE_EXTENSIONS and member.size == 0:
                empty = True
            if ext == label_ext:
                label_problem = _label_problem(ext, tar.extractfile(member).read(), len(inv.classnames))
        if key is not None:
            close(key, exts, label_problem, empty)


def verify_images(inv: WdsInventory) -> int:
    """Decode every image of every readable shard the way CLIP_benchmark's pipeline does
    (PIL, load, RGB) and add the ones that fail as ``unreadable_image``. Returns how many."""
    from PIL import Image
    found = 0
    for index, path in enumerate(inv.shards):
        if index in inv.bad_shards:
            continue
        with tarfile.open(path, "r:") as tar:
            for member in tar:
                key, ext = sample_key(member.name)
                if key is None or ext not in IMAGE_EXTENSIONS or key in inv.bad_samples.get(index, ()):
                    continue
                try:
                    with Image.open(io.BytesIO(tar.extractfile(member).read())) as image:
                        image.load()
                        image.convert("RGB")
                except Exception as exc:  # noqa: BLE001 - reported per sample
                    inv.add("unreadable_image", f"{inv.split}/{path.name}:{key}", f"{type(exc).__name__}: {exc}",
                            index, key)
                    found += 1
    return found


def write_view(inv: WdsInventory, folder) -> Path:
    """A folder of the same layout holding only the good samples: shards without problems are
    linked, shards with bad samples are copied without them, unreadable shards are left out."""
    folder = Path(folder)
    (folder / inv.split).mkdir(parents=True, exist_ok=True)
    for name in (CLASSNAMES, TEMPLATES, DATASET_TYPE):
        if (inv.root / name).is_file():
            os.symlink((inv.root / name).resolve(), folder / name)
    kept = 0
    for index, path in enumerate(inv.shards):
        if index in inv.bad_shards:
            continue
        target = folder / inv.split / f"{kept}.tar"
        bad = inv.bad_samples.get(index)
        if not bad:
            os.symlink(path.resolve(), target)
        else:
            with tarfile.open(path, "r:") as source, tarfile.open(target, "w") as out:
                for member in source:
                    if member.isfile() and sample_key(member.name)[0] not in bad:
                        out.addfile(member, source.extractfile(member))
        kept += 1
    if not kept:
        raise DatasetFormatError(f"{inv.root}: no readable shard left to score")
    (folder / inv.split / "nshards.txt").write_text(f"{kept}\n")
    return folder
