"""Readers for the map-style formats: CSV/TSV (open_clip convention) and ShareGPT4V json.

Each reader returns the good records and the bad ones as ``(kind, where, detail)`` events;
nothing is dropped without an event. Image files are only checked for existence and size
here (cheap ``stat``); decoding problems show up when the image is loaded.
"""
from __future__ import annotations

import csv
import json
import os
from typing import Dict, List, Optional, Tuple, Union

from .captions import clean_caption
from .errors import BadCaption, DataError
from .records import Record

__all__ = ["read_csv", "read_sharegpt4v", "scan_sharegpt4v", "parse_image_roots", "check_file", "SHAREGPT4V_EVAL_SIZE"]

SHAREGPT4V_EVAL_SIZE = 1000  # records [:1000] of the ShareGPT4V json are the held-out ShareGPT4V-1k split
Event = Tuple[str, str, str]



def _keep_if_readable(image, caption, source, n, where, check_files, good, bad):
    """Append the record to ``good``, or its file problem to ``bad`` (when files are checked)."""
    problem = check_file(image) if check_files else None
    if problem:
        bad.append((problem[0], where, f"{image}: {problem[1]}"))
    else:
        good.append(Record(image, caption, source, n))

def check_file(path: str) -> Optional[Tuple[str, str]]:
    """``(kind, detail)`` when the image file is missing or empty, else ``None``."""
    try:
        size = os.stat(path).st_size
    except OSError:
        return "missing_file", "no such file"
    return ("empty_file", "0 bytes") if size == 0 else None


def read_csv(path: str, *, image_key: str = "filepath", caption_key: str = "title",
             separator: Optional[str] = None, check_files: bool = True) -> Tuple[List[Record], List[Event]]:
    """Records of a CSV (``,``) or TSV (``\\t``) file with a header row; image paths relative to
    the file's folder unless absolute. Returns ``(good records, bad events)``."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such CSV/TSV file")
    sep = separator or ("\t" if path.lower().endswith(".tsv") else ",")
    root = os.path.dirname(os.path.abspath(path))
    good, bad = [], []
    # surrogateescape keeps undecodable bytes so a single bad caption is counted, not fatal.
    with open(path, newline="", encoding="utf-8", errors="surrogateescape") as f:
        reader = csv.reader(f, delimiter=sep)
        try:
            header = next(reader)
        except StopIteration:
            raise DataError(f"{path}: empty file, expected a header row with columns "
                            f"{image_key!r} and {caption_key!r}") from None
        header = [h.strip().lstrip("\ufeff") for h in header]
        missing = [k for k in (image_key, caption_key) if k not in header]
        if missing:
            raise DataError(
                f"{path}: header has no column {' or '.join(map(repr, missing))} (columns: {header}); "
                f"set data.csv_image_key / data.csv_caption_key to the image-path and caption columns")
        ii, ci = header.index(image_key), header.index(caption_key)
        for n, row in enumerate(reader):
            where = f"{path} record {n} (line {reader.line_num})"
            if not row:
                bad.append(("missing_field", where, "blank line"))
                continue
            if len(row) <= max(ii, ci) or not row[ii].strip():
                field = image_key if len(row) <= ii or not row[ii].strip() else caption_key
                bad.append(("missing_field", where, f"no {field!r} field"))
                continue
            try:
                caption = clean_caption(row[ci])
            except BadCaption as e:
                bad.append((e.kind, where, f"field {caption_key!r}" + (f": {e.detail}" if e.detail else "")))
                continue
            _keep_if_readable(os.path.join(root, row[ii].strip()), caption, path, n, where, check_files, good, bad)
    return good, bad


def parse_image_roots(spec: Union[str, Dict[str, str], None]) -> Dict[str, str]:
    """``"coco=/data/coco,sam=/data/sam,/data/rest"`` (or a dict) -> ``{prefix: folder}``;
    an entry without ``=`` is the folder for every other image (key ``""``)."""
    if not spec:
        return {}
    if isinstance(spec, dict):
        return {str(k).strip("/"): str(v) for k, v in spec.items()}
    roots: Dict[str, str] = {}
    for part in str(spec).split(","):
        part = part.strip()
        if not part:
            continue
        prefix, eq, folder = part.partition("=")
        if not eq:
            prefix, folder = "", part
        if not folder.strip():
            raise ValueError(f"data.image_roots entry {part!r} has no folder; expected PREFIX=FOLDER or FOLDER")
        roots[prefix.strip().strip("/")] = folder.strip()
    return roots


def _resolve(image: str, roots: Dict[str, str], default_root: str) -> str:
    if os.path.isabs(image):
        return image
    rel = image.replace("\\", "/")
    # Longest matching source prefix ("llava/llava_pretrain" before "llava").
    for prefix in sorted((p for p in roots if p), key=len, reverse=True):
        if rel == prefix or rel.startswith(prefix + "/"):
            return os.path.join(roots[prefix], rel[len(prefix):].lstrip("/"))
    return os.path.join(roots.get("", default_root), rel)


_ASSISTANT = ("gpt", "assistant", "model")


def scan_sharegpt4v(json_path: str, image_roots=None, *, check_files: bool = True,
                    start: int = 0) -> Tuple[List[Record], List[Event]]:
    """Records of a ShareGPT4V json (a list of ``{"image": ..., "conversations": [...]}``); the
    caption is the first turn ``from`` the model (``gpt``). Records before ``start`` are not
    returned (``start=1000`` leaves out ShareGPT4V-1k). Returns ``(good records, bad events)``."""
    if not os.path.isfile(json_path):
        raise DataError(f"{json_path}: no such ShareGPT4V json file")
    try:
        with open(json_path, "rb") as f:
            data = json.loads(f.read().decode("utf-8", "surrogateescape"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{json_path}: not valid JSON ({e})") from None
    if not isinstance(data, list):
        raise DataError(f"{json_path}: expected a JSON list of records with 'image' and 'conversations', "
                        f"got {type(data).__name__}")
    roots = parse_image_roots(image_roots)
    default_root = os.path.dirname(os.path.abspath(json_path))
    good, bad = [], []
    for n in range(start, len(data)):
        rec, data[n] = data[n], None  # release each parsed record as we go (1.2M records)
        where = f"{json_path} record {n}"
        if not isinstance(rec, dict):
            bad.append(("missing_field", where, f"record is {type(rec).__name__}, expected an object"))
            continue
        image = rec.get("image")
        if not isinstance(image, str) or not image.strip():
            bad.append(("missing_field", where, "no 'image' field"))
            continue
        turns = rec.get("conversations")
        raw = None
        if isinstance(turns, list):
            raw = next((t.get("value") for t in turns if isinstance(t, dict) and t.get("from") in _ASSISTANT), None)
        if raw is None:
            bad.append(("missing_field", where, "no 'conversations' turn from 'gpt' with a 'value'"))
            continue
        try:
            caption = clean_caption(raw)
        except BadCaption as e:
            bad.append((e.kind, where, "conversations[gpt].value" + (f": {e.detail}" if e.detail else "")))
            continue
        _keep_if_readable(_resolve(image.strip(), roots, default_root), caption, json_path, n, where, check_files,
                          good, bad)
    return good, bad


def read_sharegpt4v(json_path: str, image_roots=None, *, strict: bool = True, check_files: bool = True,
                    start: int = 0, stop: Optional[int] = None) -> List[Record]:
    """The records of a ShareGPT4V json as ``Record(image, caption, source, index)``.

    ``image_roots`` maps the first path component of ``image`` (``coco``, ``llava``, ``sam``...)
    to a folder (``"coco=/data/coco,sam=/data/sam"`` or a dict); others are relative to the
    json's folder. ``strict`` raises ``DataError`` naming the first bad record; otherwise bad
    records are left out (``scan_sharegpt4v`` also returns them). ``stop=1000`` gives the
    ShareGPT4V-1k evaluation split.
    """
    good, bad = scan_sharegpt4v(json_path, image_roots, check_files=check_files, start=start)
    if stop is not None:
        good = [r for r in good if r.index < stop]
        bad = [b for b in bad if int(b[1].rsplit(" ", 1)[1]) < stop]
    if strict and bad:
        kind, where, detail = bad[0]
        raise DataError(f"{where}: {kind} ({detail}); {len(bad)} bad record(s) in all")
    return good
