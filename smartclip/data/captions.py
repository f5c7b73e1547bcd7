"""Caption cleaning and the caption samplers (docs/method.md §4: random sentence prefix by default)."""
from __future__ import annotations

import random
from typing import List, Optional, Union

from .errors import BadCaption

__all__ = ["CAPTION_MODES", "clean_caption", "split_sentences", "sample_caption"]

CAPTION_MODES = ("prefix", "full", "first", "random_sentence")


def clean_caption(raw: Union[str, bytes, None]) -> str:
    """The caption as text with newlines replaced by spaces, or ``BadCaption`` with kind
    ``missing_field`` / ``non_utf8_caption`` / ``empty_caption`` / ``whitespace_caption``.

    A ``str`` read with ``errors="surrogateescape"`` carries undecodable bytes as lone
    surrogates; those count as non-UTF-8 too.
    """
    if raw is None:
        raise BadCaption("missing_field", "no caption")
    if isinstance(raw, (bytes, bytearray)):
        try:
            raw = bytes(raw).decode("utf-8")
        except UnicodeDecodeError as e:
            raise BadCaption("non_utf8_caption", str(e)) from None
    if not isinstance(raw, str):
        raise BadCaption("missing_field", f"caption is {type(raw).__name__}, expected a string")
    try:
        raw.encode("utf-8")
    except UnicodeEncodeError as e:
        raise BadCaption("non_utf8_caption", f"undecodable byte at position {e.start}") from None
    if raw == "":
        raise BadCaption("empty_caption")
    text = raw.replace("\r\n", " ").replace("\n", " ").replace("\r", " ")
    if not text.strip():
        raise BadCaption("whitespace_caption")
    return text


def split_sentences(caption: str) -> List[str]:
    """Sentences as the released training code splits them: newlines to spaces, then on ``". "``."""
    return caption.replace("\n", " ").split(". ")


def sample_caption(caption: str, mode: str = "prefix", rng: Optional[random.Random] = None) -> str:
    """One training caption from ``caption``.

    - ``prefix`` (docs/method.md §4, the paper's default): ``k`` uniform in 1..n_sentences, the first
      ``k`` sentences joined by ``". "``;
    - ``full``: the whole caption (newlines as spaces);
    - ``first``: the first sentence;
    - ``random_sentence``: one sentence drawn uniformly (empty pieces excluded).
    """
    if mode not in CAPTION_MODES:
        raise ValueError(f"caption mode {mode!r} is not one of {', '.join(CAPTION_MODES)}")
    rng = rng or random
    sentences = split_sentences(caption)
    if mode == "full":
        out = ". ".join(sentences)
    elif mode == "first":
        out = sentences[0]
    elif mode == "prefix":
        k = rng.randint(1, len(sentences))
        out = ". ".join(sentences[:k])
    else:
        nonempty = [s for s in sentences if s.strip()] or sentences
        out = nonempty[rng.randrange(len(nonempty))]
    out = out.strip()
    # A caption starting with ". " has an empty first sentence; fall back to the whole text.
    return out if out else caption.replace("\n", " ").strip()
