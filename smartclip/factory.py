"""Names, paths and tags to models: the one resolver, and everything built on it.

Every way of naming a model goes through :func:`resolve_model`: ``smartclip.load``,
:func:`create_model`, :func:`load_checkpoint` and every command's ``--model``. It accepts

- a path: one of our checkpoint folders, a released SmartCLIP / Long-CLIP ``.pt``, an OpenAI /
  open_clip file, a ``smartclip export --format hf`` folder (a training run folder is named
  with its latest checkpoint);
- ``NAME`` (an architecture, random weights), ``NAME:TAG`` (our released tags and open_clip's,
  :mod:`smartclip.pretrained`) and ``NAME:FILE`` (a weights file for that architecture);
- ``hf-hub:ORG/NAME``: a Hugging Face repository holding one of our checkpoint folders or an
  HF export, read through huggingface_hub's cache.

This module sits on top of the core: it imports model, tokenizer, checkpoint, hf and
pretrained; none of them imports it.
"""
from __future__ import annotations

import copy
import difflib
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import open_clip
import torch
from open_clip.model import CLIP
from open_clip.transform import PreprocessCfg, image_transform_v2

from .checkpoint import (CONFIG_NAME, WEIGHTS_NAME, CheckpointError, ModelNotFoundError, detect_format,
                         is_torchscript, load_checkpoint as load_checkpoint_file, load_into_config, read_config)
from .hf import MASK_NET_NAME, SMARTCLIP_HF_NAME, load_hf
from .model import DEFAULT_OPTIONS, SmartCLIP, build_model, model_options, stretched_length
from .pretrained import RELEASED, get_pretrained, hub_file, open_clip_tag, open_clip_weights, tags_of
from .tokenizer import Tokenizer

__all__ = ["create_model", "load", "load_checkpoint", "list_models", "get_model_config", "build_model",
           "image_transform", "get_tokenizer", "resolve_model", "context_length_for", "find_checkpoint",
           "missing_path_message", "find_spec_config", "DEFAULT_OPTIONS", "HF_HUB_PREFIX"]

log = logging.getLogger(__name__)
_CONFIG_DIR = Path(__file__).parent / "model_configs"
HF_HUB_PREFIX = "hf-hub:"


# ------------------------------------------------------------------------------ architectures
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


# ------------------------------------------------------------------------- finding a checkpoint
_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")
_STEP_NAME = re.compile(r"step_(\d+)$")


def _listing(folder: Path, limit: int = 5) -> str:
    try:
        entries = sorted(os.listdir(folder))
    except OSError:
        return ""
    return ", ".join(entries[:limit]) + (f", ... ({len(entries)} entries)" if len(entries) > limit else "")


def missing_path_message(path) -> str:
    """One line about a path that does not exist: the part that is missing, and what its
    deepest existing folder holds (the closest names first)."""
    shown, path = str(path), Path(path)
    missing, anchor = path, path.parent
    while not anchor.exists() and anchor != anchor.parent:
        missing, anchor = anchor, anchor.parent
    text = f"{shown} does not exist" + (f" (nor does {missing})" if missing != path else "")
    where = f"the current folder ({Path.cwd()})" if str(anchor) in ("", ".") else str(anchor)
    try:
        entries = sorted(os.listdir(anchor))
    except OSError:
        return text
    close = difflib.get_close_matches(missing.name, entries, n=3, cutoff=0.5)
    if close:
        return text + f"; did you mean {', '.join(str(anchor / c) for c in close)}?"
    return text + (f"; {where} holds {_listing(anchor)}" if entries else f"; {where} is empty")


def _checkpoints_below(folder: Path):
    """Our checkpoint folders one or two levels below ``folder`` (a run folder holds
    ``checkpoints/step_N``), latest last: by step number, then modification time."""
    found = {p.parent for pattern in (f"*/{CONFIG_NAME}", f"*/*/{CONFIG_NAME}") for p in folder.glob(pattern)}

    def order(p: Path):
        m = _STEP_NAME.match(p.name)
        return (int(m.group(1)) if m else -1, p.stat().st_mtime)
    return sorted(found, key=order)


def find_checkpoint(path) -> Path:
    """``path`` when it is a checkpoint ``smartclip.load`` reads (a file, one of our folders, a
    Hugging Face export); otherwise :class:`ModelNotFoundError` saying what it is instead: a
    path that does not exist, a training run folder (naming its latest checkpoint) or a folder
    without a checkpoint (naming the weight files in it, if any)."""
    path = Path(path)
    if not path.exists():
        raise ModelNotFoundError(missing_path_message(path))
    if path.is_file() or (path / CONFIG_NAME).is_file() or (path / SMARTCLIP_HF_NAME).is_file():
        return path
    is_run = (path / "config.yaml").is_file() and (path / "metrics.jsonl").is_file()
    found = _checkpoints_below(path)
    if found:
        kind = "a training run folder" if is_run else f"a folder of {len(found)} checkpoint(s)"
        raise ModelNotFoundError(f"{path} is {kind}, not a checkpoint; its latest checkpoint is {found[-1]}: "
                                 "pass that")
    if is_run:
        raise ModelNotFoundError(f"{path} is a training run folder without a checkpoint yet (one is written every "
                                 "checkpoint.every_steps steps and at the end)")
    weights = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix in _WEIGHT_SUFFIXES)
    if weights:
        raise ModelNotFoundError(f"{path} is a folder, not a checkpoint (no {CONFIG_NAME}); to load a weights file "
                                 f"in it, pass the file: {', '.join(str(path / w) for w in weights[:3])}")
    listing = _listing(path)
    raise ModelNotFoundError(f"{path} is a folder without a checkpoint: no {CONFIG_NAME} (smartclip's format), "
                             f"no Hugging Face export, no .pt/.bin/.safetensors file"
                             + (f" (it holds {listing})" if listing else " (it is empty)"))




# --------------------------------------------------------------------------------- the resolver
_PATH_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt", ".json")


def _looks_like_path(spec: str) -> bool:
    seps = {os.sep, os.altsep or os.sep}
    return (any(sep in spec for sep in seps) or spec.startswith((".", "~"))
            or spec.lower().endswith(_PATH_SUFFIXES))


def resolve_model(spec: str, pretrained: Optional[str] = None, *, download: bool = False,
                  cache_dir: Optional[str] = None) -> Tuple[str, Optional[str]]:
    """Check a model as users write it and return what :func:`create_model` builds: ``(name or
    checkpoint path, pretrained)``. The one resolver of the package (see the module's doc).

    ``spec``: a checkpoint path, a name from :func:`list_models`, ``NAME:TAG`` / ``NAME:FILE``
    (same as ``pretrained``) or ``hf-hub:ORG/NAME`` (returned as the folder of its files in
    huggingface_hub's cache; its config is read, so an unknown or uncached repository is
    reported here). Nothing is loaded; ``download=True`` also fetches a tag's or a repository's
    weights into the cache (``create_model`` then finds them there). Anything else raises
    :class:`ModelNotFoundError` with one line saying what is wrong: a path that does not exist
    (and what its folder holds), a training run folder (and its latest checkpoint), a folder
    without a checkpoint, an unknown name (and the closest names), an unknown tag (and the
    model's tags), weights that are neither cached nor downloadable (and how to pass a local
    file instead).
    """
    spec = str(spec)
    if spec.startswith(HF_HUB_PREFIX):
        if pretrained is not None:
            raise ModelNotFoundError(f"{spec} names a repository; pretrained={pretrained!r} goes with a model "
                                     "name only")
        return str(_hub_folder(spec, download, cache_dir)), None
    spec = os.path.expanduser(spec)
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
    pretrained = str(pretrained)
    entry = get_pretrained(spec, pretrained)  # a tag before a file of the same name (./openai is the file)
    if entry is not None:
        if download:
            _released_file(entry, cache_dir)
        return spec, pretrained
    tag_cfg = open_clip_tag(spec, pretrained)
    if tag_cfg:
        if download:
            open_clip_weights(spec, pretrained, tag_cfg, cache_dir)
        return spec, pretrained
    pretrained = os.path.expanduser(pretrained)
    if os.path.exists(pretrained):
        return spec, str(find_checkpoint(pretrained))
    if _looks_like_path(pretrained):
        raise ModelNotFoundError(missing_path_message(pretrained))
    ours = [t for t in tags_of(spec) if get_pretrained(spec, t)]
    theirs = [t for t in tags_of(spec) if t not in ours]
    raise ModelNotFoundError(f"{pretrained!r} is neither a file nor an open_clip tag of {spec} (its tags: "
                             f"{', '.join(theirs) or 'none'}" + (f"; smartclip's: {', '.join(ours)}" if ours else "")
                             + ")")


def _released_file(entry, cache_dir=None) -> str:
    return hub_file(entry.hf_hub, entry.filename, what=entry.name, cache_dir=cache_dir,
                    local_hint=f"pass its path instead (smartclip.load('/path/to/{entry.filename}')), or put it in "
                               f"the cache with `hf download {entry.hf_hub} {entry.filename}`")


def _hub_folder(spec: str, weights: bool, cache_dir=None) -> Path:
    """The snapshot folder, in huggingface_hub's cache, of the repository ``hf-hub:ORG/NAME[@REVISION]``:
    its config always, its weights with ``weights=True``."""
    repo, _, revision = spec[len(HF_HUB_PREFIX):].partition("@")
    if not re.fullmatch(r"[\w.-]+/[\w.-]+", repo):
        raise ModelNotFoundError(f"{spec}: expected hf-hub:ORG/NAME (a Hugging Face repository id)")
    hint = f"pass the downloaded folder's path instead of {spec}"

    def fetch(filename):
        return Path(hub_file(repo, filename, what=spec, local_hint=hint, cache_dir=cache_dir,
                             revision=revision or None))
    try:
        config = fetch(CONFIG_NAME)
        files = [WEIGHTS_NAME]
    except ModelNotFoundError as ours:
        try:
            config = fetch(SMARTCLIP_HF_NAME)
        except ModelNotFoundError:
            tags = [p.name for p in RELEASED.values() if p.hf_hub == repo]
            if tags:  # a repository of released .pt files: those are loaded by their tags
                raise ModelNotFoundError(f"{spec} holds released .pt files, not a smartclip checkpoint folder; load "
                                         f"them by tag: {', '.join(tags)}") from ours
            raise ModelNotFoundError(f"{ours} ({repo} holds neither {CONFIG_NAME}, a smartclip checkpoint, nor "
                                     f"{SMARTCLIP_HF_NAME}, an HF export, as far as this machine can tell)") from ours
        info = json.loads(config.read_text())
        files = ["model.safetensors", info.get("mask_net_file", MASK_NET_NAME)]
    if weights:
        for filename in files:
            fetch(filename)
    return config.parent


def find_spec_config(spec: str) -> Tuple[dict, Optional[dict], str]:
    """``(model_cfg, options, name)`` of a model as users write it, without its weights;
    ``options`` is ``None`` for a bare architecture name (they are the caller's choice)."""
    name, pretrained = resolve_model(spec)
    if os.path.isfile(os.path.join(name, SMARTCLIP_HF_NAME)):
        info = json.loads(Path(name, SMARTCLIP_HF_NAME).read_text())
        return info["model_cfg"], model_options(info["options"]), info.get("model_name", spec)
    if os.path.exists(name):
        cfg = read_config(name)
        return cfg["model_cfg"], model_options(cfg["options"]), cfg.get("model_name", spec)
    entry = get_pretrained(name, pretrained) if pretrained else None
    if entry is not None:
        return {**get_model_config(entry.architecture), **entry.model_cfg}, model_options(entry.options), entry.name
    return get_model_config(name), None, spec


def context_length_for(name: Optional[str] = None, keep: int = DEFAULT_OPTIONS["keep"],
                       ratio: int = DEFAULT_OPTIONS["ratio"]) -> int:
    """Context length the SmartCLIP model ``name`` (a name, tag, path or ``hf-hub:``) has;
    ``keep`` / ``ratio`` apply to a bare architecture name (a checkpoint or tag has its own)."""
    if name is None:
        return stretched_length(77, keep, ratio)
    model_cfg, options, _ = find_spec_config(name)
    if options is not None:
        keep, ratio = options["keep"], options["ratio"]
    return stretched_length(model_cfg["text_cfg"].get("context_length", 77), keep, ratio)


# ------------------------------------------------------------------------------------ building
def _dtype(precision: str) -> torch.dtype:
    table = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    if precision not in table:
        raise ValueError(f"precision must be one of {sorted(table)}, got {precision!r}")
    return table[precision]


def _load_path(path: str, options: Dict[str, Any]) -> SmartCLIP:
    """One of our checkpoints, a released / OpenAI file, or an HF export folder."""
    if os.path.isfile(os.path.join(path, SMARTCLIP_HF_NAME)):
        return load_hf(path, **options)
    return load_checkpoint_file(path, **options)


def _load_released(entry, options: Dict[str, Any], cache_dir) -> SmartCLIP:
    """A registered tag: the registry's architecture and options, the file's weights, every
    tensor checked against them (nothing inferred from the file)."""
    path = _released_file(entry, cache_dir)
    model_cfg = {**get_model_config(entry.architecture), **entry.model_cfg}
    model = load_into_config(path, model_cfg, {**entry.options, **options}, model_name=entry.name)
    if entry.mask_trained and not model.mask_trained:
        raise CheckpointError(f"{entry.name}: {path} has no mask network (mask_net.*), yet the registry says "
                              f"{entry.filename} holds a trained one; is the cached file the right one?")
    return model


def create_model(name: str, pretrained: Optional[str] = None, *, device="cpu", precision: str = "fp32",
                 cache_dir: Optional[str] = None, **options) -> SmartCLIP:
    """Build a SmartCLIP model from anything :func:`resolve_model` accepts.

    ``name``: one of ``list_models()`` (``ViT-B-16``, ``smartclip-tiny``...: random weights),
    ``NAME:TAG`` (``ViT-L-14:smartclip``, ``ViT-B-16:openai``...), ``NAME:FILE``, a checkpoint
    path or ``hf-hub:ORG/NAME``. ``pretrained``: a tag or a file, as after the colon. A file
    for an architecture may be an open_clip checkpoint (77 positions, stretched here), a
    released SmartCLIP / Long-CLIP ``.pt`` or one of our checkpoints. ``options``: ``keep``,
    ``ratio`` (positional stretch), ``soft_mask``, ``mask_padding``, ``mask_gate`` (see
    ``SmartCLIP``); a tag's or a checkpoint's own options are the defaults.
    ``cache_dir``: huggingface_hub's cache (default ``HF_HUB_CACHE``).
    """
    name, pretrained = resolve_model(name, pretrained, download=str(name).startswith(HF_HUB_PREFIX),
                                     cache_dir=cache_dir)
    if pretrained is None and os.path.exists(name):
        model = _load_path(name, options)
    elif pretrained is None:
        model = build_model(get_model_config(name), options, model_name=name)
    elif get_pretrained(name, pretrained) is not None:
        model = _load_released(get_pretrained(name, pretrained), options, cache_dir)
    elif open_clip_tag(name, pretrained):
        tag_cfg = open_clip_tag(name, pretrained)
        model_cfg = get_model_config(name)
        if tag_cfg.get("quick_gelu"):
            model_cfg["quick_gelu"] = True
        weights = open_clip_weights(name, pretrained, tag_cfg, cache_dir)
        clip = open_clip.create_model(name, pretrained=weights, force_quick_gelu=bool(tag_cfg.get("quick_gelu")))
        preprocess_cfg = {k: tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in tag_cfg}
        model = SmartCLIP(clip, **model_options(options), model_name=f"{name}:{pretrained}", model_cfg=model_cfg,
                          preprocess_cfg=preprocess_cfg, mask_trained=False)
    else:  # a file for this architecture (resolve_model checked that it exists)
        model_cfg, opts = get_model_config(name), model_options(options)
        kind = detect_format(pretrained)
        if kind == "released" and not model_cfg.get("quick_gelu"):
            log.warning("%s: a released SmartCLIP / Long-CLIP file uses QuickGELU, but %s is built with GELU as "
                        "named; use %s-quickgelu, a registered tag (smartclip models --pretrained) or the file alone",
                        pretrained, name, name)
        if kind == "open_clip" and not is_torchscript(pretrained):
            clip = CLIP(**copy.deepcopy(model_cfg))
            open_clip.load_checkpoint(clip, pretrained, strict=True)  # also converts third-party layouts
            model = SmartCLIP(clip, **opts, model_name=name, model_cfg=model_cfg, mask_trained=False)
        else:  # ours, a released SmartCLIP / Long-CLIP file, or a TorchScript CLIP: into this architecture
            model = load_into_config(pretrained, model_cfg, opts, model_name=name)
    return model.to(device=device, dtype=_dtype(precision))


def load_checkpoint(spec, **options) -> SmartCLIP:
    """A checkpoint, as :func:`create_model` reads it: a path (ours, a released or OpenAI file,
    an HF export folder), ``NAME:TAG`` / ``NAME:FILE`` or ``hf-hub:ORG/NAME``. A bare
    architecture name has no weights: :class:`ModelNotFoundError` (``create_model`` builds it
    with random weights)."""
    name, pretrained = resolve_model(spec)
    if pretrained is None and not os.path.exists(name):
        raise ModelNotFoundError(f"{spec} is an architecture without weights, not a checkpoint; pass a path, "
                                 f"NAME:TAG or hf-hub:ORG/NAME (smartclip.create_model({str(spec)!r}) builds it with "
                                 "random weights)")
    return create_model(str(spec), **options)


def image_transform(model: SmartCLIP, train: bool = False):
    """open_clip's image preprocessing for ``model`` (resize, centre crop, CLIP mean/std)."""
    return image_transform_v2(PreprocessCfg(**model.preprocess_cfg), is_train=train)


def get_tokenizer(model_or_name=None, context_length: Optional[int] = None) -> Tokenizer:
    """A tokenizer at the context length of a SmartCLIP model, a model as users write it
    (248 for every CLIP architecture, as the stretch makes it), or ``context_length``."""
    if context_length is None:
        if model_or_name is None or isinstance(model_or_name, (str, os.PathLike)):
            context_length = context_length_for(None if model_or_name is None else str(model_or_name))
        else:
            context_length = int(model_or_name.context_length)
    return Tokenizer(context_length)


def load(path_or_name: str, device="cpu", **options):
    """``(model, preprocess, tokenizer)`` for anything :func:`resolve_model` accepts: one of our
    checkpoints, a released SmartCLIP / Long-CLIP file, a folder written by ``export(...,
    format="hf")``, ``NAME`` (random weights), ``NAME:TAG`` (``"ViT-L-14:smartclip"``, the
    authors' weights; ``"ViT-B-16:openai"``, open_clip's), ``NAME:FILE`` or ``hf-hub:ORG/NAME``.
    The model is in eval mode.

    A spec that names nothing loadable raises :class:`ModelNotFoundError` saying what is wrong:
    a path that does not exist, a training run folder (with its latest checkpoint), a folder
    without a checkpoint, an unknown name (with the closest ones), weights that are neither
    cached nor downloadable (with how to pass a local file)."""
    model = create_model(path_or_name, device=device, **options)
    model.eval()
    return model, image_transform(model, train=False), get_tokenizer(model)
