"""WebDataset tar shards: member grouping, the up-front header scan, streamed reading.

A sample is the run of consecutive members sharing a key (the member path up to the first
dot of its file name, as WebDataset defines it); it is complete when it has an image member
and a ``txt`` or ``json`` caption member. The scan reads only tar headers (no image data)
to count complete samples per shard and report incomplete ones; the count is what lets
every rank know its number of batches before streaming starts.
"""
from __future__ import annotations

import json
import os
import tarfile
from typing import Dict, Iterator, List, Tuple

from .captions import clean_caption
from .errors import BadCaption, DataError

__all__ = ["IMAGE_EXTENSIONS", "scan_shard", "index_shard", "read_sample", "iter_shard", "shard_caption"]

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "ppm")
CAPTION_EXTENSIONS = ("txt", "json")
Event = Tuple[str, str, str]


def _split(name: str) -> Tuple[str, str]:
    folder, base = os.path.split(name)
    key, _, ext = base.partition(".")
    return (f"{folder}/{key}" if folder else key), ext.lower()


def _problem(exts) -> str:
    if not any(e in IMAGE_EXTENSIONS for e in exts):
        return f"no image member (.{', .'.join(IMAGE_EXTENSIONS[:3])}...; has: {', '.join(sorted(exts)) or 'nothing'})"
    if not any(e in CAPTION_EXTENSIONS for e in exts):
        return f"no caption member (.txt or .json; has: {', '.join(sorted(exts))})"
    return ""


def _groups(members: Iterator[Tuple[str, object]]):
    key, group = None, {}
    for name, payload in members:
        k, ext = _split(name)
        if k != key and group:
            yield key, group
            group = {}
        key = k
        group[ext] = payload
    if group:
        yield key, group


def _open(path: str, streaming: bool):
    try:
        return tarfile.open(path, "r|*" if streaming else "r:*")
    except (tarfile.TarError, OSError) as e:
        raise DataError(f"{path}: cannot read as a tar shard ({e})") from None


def scan_shard(path: str) -> Tuple[int, List[Event]]:
    """``(complete samples, events for incomplete ones)`` from the tar headers of ``path``."""
    tar = _open(path, streaming=False)
    try:
        members = ((m.name, None) for m in tar if m.isfile())
        complete, events = 0, []
        for key, group in _groups(members):
            problem = _problem(group)
            if problem:
                events.append(("missing_field", f"{path} sample {key}", problem))
            else:
                complete += 1
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: tar shard is damaged ({e})") from None
    finally:
        tar.close()
    return complete, events


def index_shard(path: str) -> Tuple[List[Tuple[str, Dict[str, Tuple[int, int]]]], List[Event]]:
    """Like ``scan_shard``, but also where each complete sample's members lie:
    ``([(key, {extension: (data offset, size)})], events for incomplete samples)``.
    Only headers are read; ``read_sample`` fetches a sample's bytes from the offsets."""
    tar = _open(path, streaming=False)
    try:
        members = ((m.name, (m.offset_data, m.size)) for m in tar if m.isfile())
        samples, events = [], []
        for key, group in _groups(members):
            problem = _problem(group)
            if problem:
                events.append(("missing_field", f"{path} sample {key}", problem))
            else:
                samples.append((key, group))
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: tar shard is damaged ({e})") from None
    finally:
        tar.close()
    return samples, events


def read_sample(f, members: Dict[str, Tuple[int, int]]) -> Dict[str, bytes]:
    """The bytes of one sample's members from an open (uncompressed) tar file ``f``, given the
    offsets ``index_shard`` found."""
    out = {}
    for ext, (offset, size) in members.items():
        f.seek(offset)
        out[ext] = f.read(size)
    return out


def iter_shard(path: str) -> Iterator[Tuple[str, Dict[str, bytes]]]:
    """Stream the complete samples of ``path`` as ``(key, {extension: bytes})``."""
    tar = _open(path, streaming=True)
    try:
        def members():
            for m in tar:
                if m.isfile():
                    yield m.name, tar.extractfile(m).read()
        for key, group in _groups(members()):
            if not _problem(group):
                yield key, group
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"{path}: tar shard is damaged ({e})") from None
    finally:
        tar.close()


def shard_caption(group: Dict[str, bytes]) -> str:
    """The caption of a sample: its ``txt`` member, else the ``caption`` (or ``text``) field of
    its ``json`` member. Raises ``BadCaption``."""
    if "txt" in group:
        return clean_caption(group["txt"])
    raw = group["json"]
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise BadCaption("non_utf8_caption", f"json member: {e}") from None
    try:
        obj = json.loads(text)
    except ValueError as e:
        raise BadCaption("missing_field", f"json member is not valid JSON ({e})") from None
    value = obj.get("caption", obj.get("text")) if isinstance(obj, dict) else None
    if value is None:
        raise BadCaption("missing_field", "json member has no 'caption' or 'text' field")
    return clean_caption(value)
