"""Encoding for the scene benchmark through ``smartclip.eval``'s shared encoders, plus
``smartclip.eval``'s optional feature cache."""
from __future__ import annotations

import hashlib
import os
from typing import Sequence

import torch
import torch.nn.functional as F

from smartclip.eval.encode import encode_images as _encode_images, encode_texts as _encode_texts
from smartclip.eval.metrics import retrieval_recall

__all__ = ["encode_images", "encode_texts", "retrieval_recall"]


def _key(kind: str, items: Sequence[str], *extra) -> str:
    """Cache key: what is encoded (paths with size and mtime, or the strings) and how."""
    h = hashlib.sha256(kind.encode())
    for item in items:
        if kind == "images" and os.path.isfile(item):
            st = os.stat(item)
            item = f"{item}|{st.st_size}|{st.st_mtime_ns}"
        h.update(item.encode() + b"\0")
    for e in extra:
        h.update(repr(e).encode() + b"\0")
    return f"scenes-{kind}-{h.hexdigest()[:20]}"


def _cached(cache, key: str, compute):
    """``cache`` is ``smartclip.eval``'s FeatureCache (``fetch(key, compute)``) or None."""
    if cache is None:
        return compute()
    features, _ = cache.fetch(key, lambda: (compute(), {"kind": key}))
    return features


def encode_images(model, preprocess, paths: Sequence[str], *, batch_size=64, device="cpu", progress=True,
                  desc="images", cache=None) -> torch.Tensor:
    """L2-normalised image features [n, dim] (float32, CPU)."""
    key = _key("images", list(paths), preprocess, getattr(model, "image_size", None))
    return _cached(cache, key, lambda: F.normalize(
        _encode_images(model, preprocess, list(paths), batch_size=batch_size, device=device, progress=progress), dim=-1))


def encode_texts(model, tokenizer, texts: Sequence[str], *, batch_size=64, device="cpu", progress=True,
                 desc="texts", cache=None) -> torch.Tensor:
    """L2-normalised text features [n, dim] (float32, CPU)."""
    key = _key("texts", list(texts), getattr(tokenizer, "context_length", None))
    return _cached(cache, key, lambda: F.normalize(
        _encode_texts(model, tokenizer, list(texts), batch_size=batch_size, device=device, progress=progress), dim=-1))
