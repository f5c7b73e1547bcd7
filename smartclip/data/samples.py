"""One training sample: decode + preprocess the image, sample k captions; and batch collation.

Runs inside DataLoader workers. Bad input never raises here: it comes back as events
``(kind, where, detail)`` that the main process counts and logs (workers have no shared
counters, and the trainer's logging is configured in the main process).
"""
from __future__ import annotations

import random
from typing import Callable, List, Optional, Sequence

import torch

from .captions import sample_caption
from .errors import BadImage
from .images import load_image

__all__ = ["Sample", "make_sample", "collate_samples"]


class Sample:
    """A decoded sample. ``substitute`` marks one standing in for a bad record: its own
    problems are not counted again here (they are counted where its own record is read)."""
    __slots__ = ("image", "texts", "where", "events", "substitute")

    def __init__(self, image: torch.Tensor, texts: List[str], where: str, events: list, substitute: bool = False):
        self.image, self.texts, self.where, self.events, self.substitute = image, texts, where, events, substitute


def make_sample(image_source, caption: str, where: str, *, preprocess: Callable, mode: str, k: int,
                seed: int, max_pixels: int, name: Optional[str] = None, draft=None) -> Sample:
    """Raises ``BadImage``; repairs are returned as events. ``seed`` fixes both the caption draw
    and any random augmentation in ``preprocess``, so a sample is the same whichever worker
    decodes it. ``draft``: ``(size, resize_mode)`` for ``data.decode: draft`` (see ``load_image``)."""
    repairs: List[str] = []
    img = load_image(image_source, name=name, max_pixels=max_pixels, repairs=repairs, draft=draft)
    with torch.random.fork_rng(devices=[]):
        # The CPU generator only: torch.manual_seed would also queue CUDA seeding (~1 ms each).
        torch.default_generator.manual_seed(seed)
        pixels = preprocess(img)
    rng = random.Random(seed)
    texts = [sample_caption(caption, mode, rng) for _ in range(k)]
    return Sample(pixels, texts, where, [(kind, where, "") for kind in repairs])


def collate_samples(samples: Sequence[Sample], tokenizer, extra_events: Sequence = ()) -> dict:
    """Stack a batch: ``images [B,3,H,W]``, ``tokens [B*k, ctx]``, ``image_index [B*k]``, ``texts``,
    and ``events`` (bad input met while making it, including captions the tokenizer truncated)."""
    texts, image_index, wheres, counted, events = [], [], [], [], list(extra_events)
    for i, s in enumerate(samples):
        texts.extend(s.texts)
        image_index.extend([i] * len(s.texts))
        wheres.extend([s.where] * len(s.texts))
        counted.extend([not s.substitute] * len(s.texts))
        events.extend(s.events)
    tokens, truncated = tokenizer.tokenize(texts)
    for j in torch.nonzero(truncated).flatten().tolist():
        if counted[j]:
            events.append(("truncated_caption", wheres[j], f"longer than the {tokenizer.context_length}-token context"))
    return {
        "images": torch.stack([s.image for s in samples]),
        "tokens": tokens,
        "image_index": torch.tensor(image_index, dtype=torch.long),
        "texts": texts,
        "events": events,
    }
