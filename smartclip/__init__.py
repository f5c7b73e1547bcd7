"""smartclip: SmartCLIP (CVPR 2025) on open_clip.

    import smartclip
    model, preprocess, tokenizer = smartclip.load("ViT-L-14:smartclip")   # the authors' weights
    mask = model.text_mask(tokenizer(["a bear holding a pen"]))       # 248 tokens, truncation counted

The names below are imported on first use: torch and open_clip take seconds to import,
and ``smartclip --help`` (a sub-package) should not wait for them.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "SmartCLIP": "model", "MaskNetwork": "model", "stretch_positional_embedding": "model",
    "straight_through_mask": "model", "build_model": "model",
    "Tokenizer": "tokenizer",
    "create_model": "factory", "list_models": "factory", "get_model_config": "factory", "load": "factory",
    "image_transform": "factory", "resolve_model": "factory", "get_tokenizer": "factory",
    "load_checkpoint": "factory",
    "list_pretrained": "pretrained",
    "save_checkpoint": "checkpoint", "state_dict_hash": "checkpoint", "CheckpointError": "checkpoint",
    "ModelNotFoundError": "checkpoint",
    "export": "exporting",
}

__all__ = [*_EXPORTS, "loss"]


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
