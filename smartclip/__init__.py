"""smartclip: SmartCLIP (CVPR 2025) on open_clip.

    import smartclip
    model = smartclip.create_model("ViT-B-16", pretrained="openai")
    tokenizer = smartclip.get_tokenizer(model)          # 248 tokens, truncation counted
    preprocess = smartclip.image_transform(model)
    mask = model.text_mask(tokenizer(["a bear holding a pen"]))

The names below are imported on first use: torch and open_clip take seconds to import,
and ``smartclip --help`` (a sub-package) should not wait for them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "SmartCLIP": "model", "MaskNetwork": "model", "stretch_positional_embedding": "model",
    "straight_through_mask": "model",
    "Tokenizer": "tokenizer", "get_tokenizer": "tokenizer",
    "create_model": "factory", "list_models": "factory", "get_model_config": "factory", "build_model": "factory",
    "image_transform": "factory", "resolve_model": "factory",
    "save_checkpoint": "checkpoint", "load_checkpoint": "checkpoint", "export": "checkpoint",
    "state_dict_hash": "checkpoint", "CheckpointError": "checkpoint", "ModelNotFoundError": "checkpoint",
}

__all__ = [*_EXPORTS, "loss", "load"]


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif name == "loss":
        value = importlib.import_module(".loss", __name__)
    else:
        raise AttributeError(f"module 'smartclip' has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


def load(path_or_name: str, device="cpu", **options):
    """``(model, preprocess, tokenizer)`` for one of our checkpoints, a released SmartCLIP /
    Long-CLIP file, a folder written by ``export(..., format="hf")``, or a model name
    (``"ViT-B-16"``; ``"ViT-B-16:openai"`` for an open_clip tag, ``"ViT-B-16:/path/weights.bin"``
    for a local open_clip weights file).

    A spec that names nothing loadable raises :class:`ModelNotFoundError` saying what is wrong:
    a path that does not exist, a training run folder (with its latest checkpoint), a folder
    without a checkpoint, an unknown name (with the closest ones), weights that cannot be
    downloaded."""
    import os

    from .factory import create_model, image_transform, resolve_model
    from .hf import SMARTCLIP_HF_NAME
    from .tokenizer import get_tokenizer

    name, pretrained = resolve_model(path_or_name)
    if pretrained is None and os.path.isfile(os.path.join(name, SMARTCLIP_HF_NAME)):
        from .hf import load_hf
        model = load_hf(name, device=device)
    else:
        model = create_model(name, pretrained=pretrained, device=device, **options)
    model.eval()
    return model, image_transform(model, train=False), get_tokenizer(model)
