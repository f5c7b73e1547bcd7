"""Model registry and construction: ``create_model``, ``list_models``, ``image_transform``."""
from __future__ import annotations

import copy
import difflib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model
from open_clip.transform import PreprocessCfg, image_transform_v2

from .checkpoint import ModelNotFoundError, find_checkpoint, missing_path_message
from .model import SmartCLIP

__all__ = ["create_model", "list_models", "get_model_config", "build_model", "image_transform",
           "resolve_model", "context_length_for", "DEFAULT_OPTIONS"]

log = logging.getLogger(__name__)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_OPTIONS: Dict[str, Any] = {"keep": 20, "ratio": 4, "soft_mask": False, "mask_padding": False,
                                   "mask_gate": "ste"}


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


def _config_or_none(name: str) -> Optional[dict]:
    own = _own_configs()
    if name in own:
        return copy.deepcopy(own[name])
    cfg = open_clip.get_model_config(name.replace("/", "-"))
    return cfg if cfg is not None and _supported_open_clip_config(cfg) else None


def get_model_config(name: str) -> dict:
    """The open_clip-style config (``embed_dim``, ``vision_cfg``, ``text_cfg``...) of ``name``.
    An unknown name raises :class:`ModelNotFoundError` naming the closest few names."""
    cfg = _config_or_none(name)
    if cfg is not None:
        return cfg
    valid = list_models()
    if open_clip.get_model_config(name.replace("/", "-")) is not None:
        raise ModelNotFoundError(f"{name!r} is an open_clip model whose text tower smartclip cannot extend (a "
                                 f"custom or Hugging Face text model); `smartclip models` lists the {len(valid)} "
                                 "it can")
    by_lower = {n.lower(): n for n in valid}  # "vit-b-16" is closest to "ViT-B-16"
    close = [by_lower[n] for n in difflib.get_close_matches(name.lower(), list(by_lower), n=4, cutoff=0.5)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ModelNotFoundError(f"Unknown model name {name!r}.{hint} (`smartclip models` lists all {len(valid)}; "
                             "a checkpoint path works too)")


_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".json")


def _looks_like_path(spec: str) -> bool:
    seps = {os.sep, os.altsep or os.sep}
    return (any(sep in spec for sep in seps) or spec.startswith((".", "~"))
            or spec.lower().endswith(_PATH_SUFFIXES))


def resolve_model(spec: str, pretrained: Optional[str] = None, *,
                  download: bool = False) -> Tuple[str, Optional[str]]:
    """Check a model as users write it and return what ``create_model`` takes: ``(name or
    checkpoint path, pretrained)``.

    ``spec``: a checkpoint (our folder, a released / open_clip file, a Hugging Face export), a
    name from :func:`list_models`, or ``NAME:TAG`` / ``NAME:FILE`` (same as ``pretrained``).
    Nothing is loaded; ``download=True`` fetches an open_clip tag's weights into the cache
    (``create_model`` then finds them there). Anything else raises :class:`ModelNotFoundError`
    with one line saying what is wrong: a path that does not exist (and what its folder holds),
    a training run folder (and its latest checkpoint), a folder without a checkpoint, an
    unknown name (and the closest names), an unknown tag (and the model's tags), weights that
    cannot be downloaded (and how to use a local file instead).
    """
    spec = os.path.expanduser(str(spec))
    if os.path.exists(spec):
        if pretrained is not None:
            raise ModelNotFoundError(f"{spec} is a path; pretrained={pretrained!r} goes with a model name only")
        return str(find_checkpoint(spec)), None
    if pretrained is None:
        name, sep, tag = spec.partition(":")
        if sep and tag and _config_or_none(name) is not None:
            spec, pretrained = name, tag
    if _config_or_none(spec) is None:
        if _looks_like_path(spec):
            raise ModelNotFoundError(missing_path_message(spec))
        get_model_config(spec)  # raises, naming the closest names
    if pretrained is None:
        return spec, None
    pretrained = os.path.expanduser(str(pretrained))
    if os.path.exists(pretrained):
        return spec, str(find_checkpoint(pretrained))
    tag_cfg = get_pretrained_cfg(spec.replace("/", "-"), pretrained)
    if tag_cfg:
        if download:
            _fetch_pretrained(spec, pretrained, tag_cfg, None)
        return spec, pretrained
    if _looks_like_path(pretrained):
        raise ModelNotFoundError(missing_path_message(pretrained))
    tags = list_pretrained_tags_by_model(spec.replace("/", "-"))
    raise ModelNotFoundError(f"{pretrained!r} is neither a file nor an open_clip tag of {spec} (its tags: "
                             f"{', '.join(tags) or 'none'})")


def _fetch_pretrained(name: str, tag: str, tag_cfg: dict, cache_dir: Optional[str]) -> str:
    """The local file of open_clip's ``tag`` weights for ``name``, downloaded unless cached."""
    try:
        path = download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # offline, hub error, disk full: the same advice in each case
        if tag_cfg.get("hf_hub"):
            repo, file = os.path.split(tag_cfg["hf_hub"])
            file = file or "open_clip_pytorch_model.bin"
            source = f"https://huggingface.co/{repo}/blob/main/{file}"
        else:
            source = tag_cfg.get("url", "")
            file = os.path.basename(source) or "weights"
        raise ModelNotFoundError(
            f"{name}:{tag}: the {tag!r} weights are not cached here and could not be downloaded "
            f"({type(e).__name__}; offline?); get {source} on a machine with network and pass the file "
            f"as {name}:/path/to/{file}") from e
    if not path:
        raise ModelNotFoundError(f"{name}:{tag}: open_clip gives no download source for this tag")
    return path


def context_length_for(name: Optional[str] = None, keep: int = DEFAULT_OPTIONS["keep"],
                       ratio: int = DEFAULT_OPTIONS["ratio"]) -> int:
    """Context length of the SmartCLIP model ``name`` (or a checkpoint path) would have."""
    if name is not None:
        name, _ = resolve_model(name)
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
    (positional stretch), ``soft_mask``, ``mask_padding``, ``mask_gate`` (see ``SmartCLIP``).
    """
    from . import checkpoint as ckpt

    name, pretrained = resolve_model(name, pretrained)
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
        tag_cfg = get_pretrained_cfg(name.replace("/", "-"), pretrained)  # a known tag: resolve_model checked
        if tag_cfg.get("quick_gelu"):
            model_cfg["quick_gelu"] = True
        weights = _fetch_pretrained(name, pretrained, tag_cfg, cache_dir)
        clip = open_clip.create_model(name, pretrained=weights, force_quick_gelu=bool(tag_cfg.get("quick_gelu")))
        preprocess_cfg = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        model = _wrap(clip, model_cfg, opts, name, preprocess_cfg)
        model.mask_trained = False
    return model.to(device=device, dtype=_dtype(precision))


def image_transform(model: SmartCLIP, train: bool = False):
    """open_clip's image preprocessing for ``model`` (resize, centre crop, CLIP mean/std)."""
    return image_transform_v2(PreprocessCfg(**model.preprocess_cfg), is_train=train)
