"""Encoding for the scene benchmark through ``smartclip.eval``'s shared encoders, plus the
optional feature cache (anything with ``get(key)`` / ``put(key, tensor)``)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from smartclip.eval.encode import encode_images as _encode_images, encode_texts as _encode_texts
from smartclip.eval.metrics import retrieval_recall

__all__ = ["encode_images", "encode_texts", "retrieval_recall"]


def _cached(cache, key, compute):
    if cache is None:
        return compute()
    getter = getattr(cache, "get", None)
    hit = getter(key) if getter is not None else None
    if hit is not None:
        return hit
    value = compute()
    putter = getattr(cache, "put", None) or getattr(cache, "__setitem__", None)
    if putter is not None:
        putter(key, value)
    return value


def encode_images(model, preprocess, paths: Sequence[str], *, batch_size=64, device="cpu", progress=True,
                  desc="images", cache=None) -> torch.Tensor:
    """L2-normalised image features [n, dim] (float32, CPU)."""
    return _cached(cache, ("scenes", desc), lambda: F.normalize(
        _encode_images(model, preprocess, list(paths), batch_size=batch_size, device=device, progress=progress), dim=-1))


def encode_texts(model, tokenizer, texts: Sequence[str], *, batch_size=64, device="cpu", progress=True,
                 desc="texts", cache=None) -> torch.Tensor:
    """L2-normalised text features [n, dim] (float32, CPU)."""
    return _cached(cache, ("scenes", desc), lambda: F.normalize(
        _encode_texts(model, tokenizer, list(texts), batch_size=batch_size, device=device, progress=progress), dim=-1))
