"""Model registry and construction: ``create_model``, ``list_models``, ``image_transform``."""
from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.pretrained import get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.transform import PreprocessCfg, image_transform_v2

from .model import SmartCLIP

__all__ = ["create_model", "list_models", "get_model_config", "build_model", "image_transform",
           "context_length_for", "DEFAULT_OPTIONS"]

log = logging.getLogger(__name__)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_OPTIONS: Dict[str, Any] = {"keep": 20, "ratio": 4, "soft_mask": False, "mask_padding": False}


def _own_configs() -> Dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted(_CONFIG_DIR.glob("*.json"))}


def _supported_open_clip_config(cfg: dict) -> bool:
    text = cfg.get("text_cfg", {})
    return not (cfg.get("custom_text") or "multimodal_cfg" in cfg or text.get("hf_model_name")
                or text.get("hf_tokenizer_name") or text.get("tokenizer_kwargs"))


def list_models() -> List[str]:
    """Our tiny configurations, then every open_clip CLIP architecture with the built-in
    text transformer and CLIP tokenizer."""
    ours = sorted(_own_configs())
    theirs = [n for n in open_clip.list_models() if _supported_open_clip_config(open_clip.get_model_config(n))]
    return ours + theirs


def get_model_config(name: str) -> dict:
    """The open_clip-style config (``embed_dim``, ``vision_cfg``, ``text_cfg``...) of ``name``."""
    own = _own_configs()
    if name in own:
        return copy.deepcopy(own[name])
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    if cfg is not None and _supported_open_clip_config(cfg):
        return cfg
    valid = list_models()
    close = difflib.get_close_matches(name, valid, n=5)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ValueError(f"Unknown model name {name!r}.{hint} Valid names: {', '.join(valid)}")


def context_length_for(name: Optional[str] = None, keep: int = DEFAULT_OPTIONS["keep"],
                       ratio: int = DEFAULT_OPTIONS["ratio"]) -> int:
    """Context length of the SmartCLIP model ``name`` (or a checkpoint path) would have."""
    if name is None:
        base = 77
    elif os.path.exists(name):
        from .checkpoint import read_config
        cfg = read_config(name)
        base = cfg["model_cfg"]["text_cfg"].get("context_length", 77)
        keep, ratio = cfg["options"]["keep"], cfg["options"]["ratio"]
    else:
        base = get_model_config(name)["text_cfg"].get("context_length", 77)
    return base if ratio == 1 else keep + ratio * (base - keep)


def _options(overrides: Dict[str, Any]) -> Dict[str, Any]:
    unknown = set(overrides) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(DEFAULT_OPTIONS)}")
    return {**DEFAULT_OPTIONS, **overrides}


def _dtype(precision: str) -> torch.dtype:
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"precision must be one of {sorted(table)}, got {precision!r}")
    return table[precision]


def build_model(model_cfg: dict, options: Optional[Dict[str, Any]] = None, *, model_name: str = "custom",
                preprocess_cfg: Optional[dict] = None) -> SmartCLIP:
    """A randomly initialised SmartCLIP from an open_clip-style config dict."""
    options = _options(options or {})
    clip = CLIP(**copy.deepcopy(model_cfg))
    return _wrap(clip, model_cfg, options, model_name, preprocess_cfg)


def _wrap(clip: CLIP, model_cfg: dict, options: dict, model_name: str, preprocess_cfg: Optional[dict]):
    model = SmartCLIP(clip, **options)
    model.model_name = model_name
    model.model_cfg = copy.deepcopy(model_cfg)
    pre = asdict(PreprocessCfg())
    pre["size"] = model.image_size[0] if model.image_size[0] == model.image_size[1] else list(model.image_size)
    pre.update({k: v for k, v in (preprocess_cfg or {}).items() if k in pre})
    model.preprocess_cfg = pre
    model.mask_trained = True
    return model


def create_model(name: str, pretrained: Optional[str] = None, *, device="cpu", precision: str = "fp32",
                 cache_dir: Optional[str] = None, **options) -> SmartCLIP:
    """Build a SmartCLIP model.

    ``name``: one of ``list_models()`` (``ViT-B-16``, ``smartclip-tiny``...) or the path of a
    smartclip / released checkpoint. ``pretrained``: an open_clip tag (``openai``...), an
    open_clip checkpoint file (77 positions; stretched here), a released SmartCLIP /
    Long-CLIP ``.pt`` or one of our checkpoints. ``options``: ``keep``, ``ratio``
    (positional stretch), ``soft_mask``, ``mask_padding``.
    """
    from . import checkpoint as ckpt

    if pretrained is None and os.path.exists(name):
        model = ckpt.load_checkpoint(name, **options)
        return model.to(device=device, dtype=_dtype(precision))
    model_cfg = get_model_config(name)
    opts = _options(options)
    preprocess_cfg = None
    if pretrained is None:
        model = build_model(model_cfg, opts, model_name=name)
    elif os.path.exists(pretrained):
        kind = ckpt.detect_format(pretrained)
        if kind == "open_clip" and not ckpt.is_torchscript(pretrained):
            clip = CLIP(**copy.deepcopy(model_cfg))
            open_clip.load_checkpoint(clip, pretrained, strict=True)  # also converts third-party layouts
            model = _wrap(clip, model_cfg, opts, name, None)
            model.mask_trained = False
        else:  # ours, a released SmartCLIP / Long-CLIP file, or a TorchScript CLIP: into this architecture
            model = build_model(model_cfg, opts, model_name=name)
            state, mask_trained = ckpt.read_weights(pretrained)
            ckpt.stretch_to_model(state, model)
            ckpt.load_weights_checked(model, state, source=pretrained)
            model.mask_trained = mask_trained
    else:
        tag_cfg = get_pretrained_cfg(name.replace("/", "-"), pretrained)
        if not tag_cfg:
            tags = list_pretrained_tags_by_model(name.replace("/", "-"))
            raise ValueError(f"pretrained={pretrained!r} is neither a file nor an open_clip tag for {name}; "
                             f"tags: {tags or 'none'}")
        if tag_cfg.get("quick_gelu"):
            model_cfg["quick_gelu"] = True
        clip = open_clip.create_model(name, pretrained=pretrained, force_quick_gelu=bool(tag_cfg.get("quick_gelu")),
                                      cache_dir=cache_dir)
        preprocess_cfg = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        model = _wrap(clip, model_cfg, opts, name, preprocess_cfg)
        model.mask_trained = False
    return model.to(device=device, dtype=_dtype(precision))


def image_transform(model: SmartCLIP, train: bool = False):
    """open_clip's image preprocessing for ``model`` (resize, centre crop, CLIP mean/std)."""
    return image_transform_v2(PreprocessCfg(**model.preprocess_cfg), is_train=train)
