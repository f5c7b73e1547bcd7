"""Prompt files for generation: plain text, JSON lines, CSV / TSV, or a ShareGPT4V json.

Each prompt has an ``id`` (the file name of its image and sidecar) and, when the file names
one, the ``reference`` image it describes (used by ``smartclip eval-generation``).
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

from ..data.captions import clean_caption
from ..data.errors import BadCaption

__all__ = ["Prompt", "PromptFileError", "read_prompts"]

_TEXT_KEYS = ("prompt", "caption", "text")
_REFERENCE_KEYS = ("reference", "image", "filepath", "path")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ASSISTANT = ("gpt", "assistant", "model")


class PromptFileError(ValueError):
    """A prompt file that cannot be used as given (names the file and record)."""


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    reference: Optional[str] = None  # the image the prompt describes, as the prompt file names it
    index: int = 0  # position in the prompt file (0-based); an image's seed is the run's seed + index


def _first(record: dict, keys) -> Optional[str]:
    return next((record[k] for k in keys if isinstance(record.get(k), str) and record[k].strip()), None)


def _from_record(record, n: int, where: str) -> Prompt:
    """A JSON / CSV record: {prompt|caption|text, id?, reference|image?} or a ShareGPT4V record."""
    if not isinstance(record, dict):
        raise PromptFileError(f"{where}: record is {type(record).__name__}, expected an object")
    text = _first(record, _TEXT_KEYS)
    if text is None and isinstance(record.get("conversations"), list):  # ShareGPT4V
        text = next((t.get("value") for t in record["conversations"]
                     if isinstance(t, dict) and t.get("from") in _ASSISTANT), None)
    if text is None:
        raise PromptFileError(f"{where}: no prompt (expected one of {', '.join(_TEXT_KEYS)}, or ShareGPT4V "
                              f"'conversations' with a 'gpt' turn)")
    try:
        text = clean_caption(text)
    except BadCaption as e:
        raise PromptFileError(f"{where}: unusable prompt ({e.kind})") from None
    ident = record.get("id")
    ident = f"{n:06d}" if ident is None or ident == "" else str(ident)
    return Prompt(ident, text.strip(), _first(record, _REFERENCE_KEYS), n)


def _read_records(path: Path) -> List[Prompt]:
    suffix = path.suffix.lower()
    raw = path.read_text(encoding="utf-8")
    if suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as e:
            raise PromptFileError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(data, list):
            raise PromptFileError(f"{path}: expected a JSON list of records, got {type(data).__name__}")
        return [_from_record(r, n, f"{path} record {n}") for n, r in enumerate(data)]
    if suffix == ".jsonl":
        out = []
        for n, line in enumerate(raw.splitlines()):
            if line.strip():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise PromptFileError(f"{path} line {n + 1}: not valid JSON ({e})") from None
                out.append(_from_record(record, len(out), f"{path} line {n + 1}"))
        return out
    if suffix in (".csv", ".tsv"):
        reader = csv.DictReader(raw.splitlines(), delimiter="\t" if suffix == ".tsv" else ",")
        return [_from_record(dict(row), n, f"{path} row {n + 2}") for n, row in enumerate(reader)]
    # plain text: one prompt a line, blank lines skipped; the id is the 1-based line number
    lines = [(n, line.strip()) for n, line in enumerate(raw.splitlines()) if line.strip()]
    return [Prompt(f"{n + 1:06d}", text, None, k) for k, (n, text) in enumerate(lines)]


def read_prompts(path, start: int = 0, limit: Optional[int] = None) -> List[Prompt]:
    """The prompts of ``path`` from record ``start`` on, at most ``limit`` of them.

    ``.txt``: one prompt a line (id = line number). ``.jsonl`` / ``.json`` list / ``.csv`` /
    ``.tsv``: records with ``prompt`` (or ``caption`` / ``text``), optional ``id`` and
    ``reference`` (or ``image``); a ShareGPT4V json works as it is (caption = the ``gpt``
    turn, reference = ``image``, id = the record's index, so ``start=0, limit=1000`` is
    ShareGPT4V-1k). Ids must be unique and usable as file names.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompt file")
    if start < 0 or (limit is not None and limit < 1):
        raise PromptFileError(f"start must be >= 0 and limit >= 1 (got start={start}, limit={limit})")
    prompts = _read_records(path)
    prompts = prompts[start:] if limit is None else prompts[start:start + limit]
    if not prompts:
        raise PromptFileError(f"{path}: no prompts" + (f" from record {start} on" if start else ""))
    seen = set()
    for p in prompts:
        if not _SAFE_ID.match(p.id):
            raise PromptFileError(f"{path}: id {p.id!r} cannot be a file name (letters, digits, '.', '_', '-')")
        if p.id in seen:
            raise PromptFileError(f"{path}: id {p.id!r} appears twice")
        seen.add(p.id)
    return prompts
