"""Checkpoint file formats: our format (safetensors + JSON), the authors' released ``.pt``
files (docs/method.md §8), and ordinary OpenAI-layout CLIP files (state dicts, TorchScript archives).

This module knows files only: which names and paths mean what is :mod:`smartclip.factory`'s
business, export to other libraries is :mod:`smartclip.exporting`'s.

Our format is a directory::

    smartclip_config.json   architecture (open_clip model_cfg), options, preprocessing
    model.safetensors       every tensor of the state dict, no pickle
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .fileio import atomic_write_json, set_default_file_mode, sha256_file
from .model import DEFAULT_OPTIONS, SmartCLIP, build_model, stretch_positional_embedding, stretched_length

__all__ = ["save_checkpoint", "load_checkpoint", "read_config", "read_weights", "detect_format",
           "load_weights_checked", "infer_config_from_state_dict", "state_dict_hash", "is_our_checkpoint",
           "stretch_to_model", "is_torchscript", "save_tensors", "load_into_config",
           "CheckpointError", "ModelNotFoundError", "CONFIG_NAME", "WEIGHTS_NAME"]

log = logging.getLogger(__name__)
CONFIG_NAME = "smartclip_config.json"
WEIGHTS_NAME = "model.safetensors"
FORMAT_VERSION = 1
_JIT_EXTRAS = ("input_resolution", "context_length", "vocab_size", "attn_mask")  # not weights


class CheckpointError(ValueError):
    """A checkpoint file that is missing, truncated, foreign or does not fit the model."""


class ModelNotFoundError(CheckpointError):
    """A model as a user wrote it (``--model``, a config's ``model.name``) that names nothing
    loadable: a path that does not exist, a training run folder, a folder without a
    checkpoint, an unknown name or tag, weights that cannot be downloaded. The message is one
    line that says which, and what to pass instead."""


def save_tensors(tensors: Dict[str, torch.Tensor], path, metadata: Optional[dict] = None) -> Path:
    """safetensors' ``save_file``, the file with the usual mode (see :func:`set_default_file_mode`)."""
    save_file(tensors, str(path), metadata=metadata)
    set_default_file_mode(path)
    return Path(path)


# ------------------------------------------------------------------------------ our format
def save_checkpoint(model: SmartCLIP, path, extra: Optional[dict] = None, *, overwrite: bool = False) -> Path:
    """Write ``model`` to the directory ``path`` (created). Files are written to temporary
    names and renamed, so a reader never sees half a checkpoint. A folder that already holds a
    checkpoint is refused (``FileExistsError``) unless ``overwrite=True``."""
    path = Path(path)
    if not overwrite and ((path / CONFIG_NAME).exists() or (path / WEIGHTS_NAME).exists()):
        raise FileExistsError(f"{path} already holds a checkpoint; pass overwrite=True to replace it, "
                              "or save to another folder")
    if model.model_cfg is None:
        raise CheckpointError("this model has no model_cfg (it was built from a bare CLIP); build it with "
                              "smartclip.build_model or create_model so a checkpoint can record its architecture")
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "format": "smartclip",
        "format_version": FORMAT_VERSION,
        "model_name": model.model_name,
        "model_cfg": model.model_cfg,
        "options": model.options,
        "preprocess_cfg": model.preprocess_cfg,
        "context_length": model.context_length,
        "embed_dim": model.embed_dim,
        "mask_trained": model.mask_trained,
        **(extra or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp_weights = path / (WEIGHTS_NAME + ".tmp")
    save_tensors(tensors, tmp_weights, metadata={"format": "smartclip"})
    tmp_weights.replace(path / WEIGHTS_NAME)
    atomic_write_json(path / CONFIG_NAME, config)
    return path


def is_our_checkpoint(path) -> bool:
    """Whether ``path`` is one of our checkpoint folders (or the weights file inside one)."""
    return _our_dir(Path(path)) is not None


def _our_dir(path: Path) -> Optional[Path]:
    if path.is_dir() and (path / CONFIG_NAME).is_file():
        return path
    if path.is_file() and path.suffix == ".safetensors" and (path.parent / CONFIG_NAME).is_file():
        return path.parent
    return None


def read_config(path) -> dict:
    """The JSON config of one of our checkpoints, or the inferred one of a released file."""
    path = Path(path)
    root = _our_dir(path)
    if root is not None:
        try:
            cfg = json.loads((root / CONFIG_NAME).read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f"{root / CONFIG_NAME}: not valid JSON ({e})") from e
        if cfg.get("format") != "smartclip":
            raise CheckpointError(f"{root / CONFIG_NAME}: not a smartclip config (format={cfg.get('format')!r})")
        return cfg
    state = _load_torch_state_dict(path)
    return infer_config_from_state_dict(state, source=str(path))


def detect_format(path) -> str:
    """``smartclip`` (our directory), ``released`` (SmartCLIP / Long-CLIP .pt with stretched
    positions) or ``open_clip`` (an ordinary CLIP state dict with 77 positions)."""
    path = Path(path)
    if _our_dir(path) is not None:
        return "smartclip"
    state = _load_torch_state_dict(path)
    pos = state.get("positional_embedding")
    if pos is None:
        raise CheckpointError(f"{path}: no 'positional_embedding' tensor; not a CLIP checkpoint "
                              f"(first keys: {list(state)[:5]})")
    return "released" if ("positional_embedding_res" in state or pos.shape[0] != 77) else "open_clip"


# --------------------------------------------------------------------- released .pt files
def _load_torch_state_dict(path: Path) -> Dict[str, torch.Tensor]:
    if not path.exists():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(f"{path}: a directory without {CONFIG_NAME}; not a smartclip checkpoint")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes); the download or copy was probably interrupted")
    if path.suffix == ".safetensors":
        try:
            obj = load_file(str(path))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e
    elif is_torchscript(path):
        # OpenAI's original CLIP files are TorchScript archives (open_clip loads them the same way)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FutureWarning)
                obj = dict(torch.jit.load(str(path), map_location="cpu").state_dict())
        except RuntimeError as e:
            raise CheckpointError(f"{path}: truncated or corrupt TorchScript archive ({e})") from e
    else:
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except (RuntimeError, zipfile.BadZipFile, EOFError) as e:
            raise CheckpointError(f"{path}: truncated or corrupt PyTorch checkpoint ({e})") from e
        except Exception as e:  # UnpicklingError and friends: not a weights-only tensor file
            raise CheckpointError(f"{path}: not a PyTorch state dict that loads with weights_only=True "
                                  f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from e
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    if obj and next(iter(obj)).startswith("module."):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return {k: v for k, v in obj.items() if k not in _JIT_EXTRAS}


def is_torchscript(path) -> bool:
    """Whether ``path`` is a TorchScript archive (as OpenAI's original CLIP files are)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(name.endswith("/constants.pkl") or "/code/" in name for name in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def _count_blocks(state, prefix: str) -> int:
    ids = {int(k[len(prefix):].split(".")[0]) for k in state if k.startswith(prefix)}
    return max(ids) + 1 if ids else 0


def _infer_stretch(context: int, base: int = 77) -> Tuple[int, int]:
    default = DEFAULT_OPTIONS["keep"], DEFAULT_OPTIONS["ratio"]
    if context == base or context == stretched_length(base, *default):
        return default  # an ordinary CLIP is stretched to 248 when loaded (see load_checkpoint)
    for ratio in range(2, 9):
        for keep in range(0, base - 1):
            if stretched_length(base, keep, ratio) == context:
                return keep, ratio
    raise CheckpointError(f"cannot explain a context of {context} positions as a stretch of {base}")


def infer_config_from_state_dict(state: Dict[str, torch.Tensor], source: str = "state dict") -> dict:
    """Architecture of an OpenAI-layout (ViT) CLIP state dict, as our config dict."""
    needed = ["visual.conv1.weight", "visual.positional_embedding", "text_projection", "token_embedding.weight",
              "ln_final.weight", "positional_embedding"]
    missing = [k for k in needed if k not in state]
    if missing:
        hint = " (a ResNet image tower is not supported)" if "visual.layer1.0.conv1.weight" in state else ""
        raise CheckpointError(f"{source}: missing tensors {missing}; not an OpenAI-layout ViT CLIP{hint}")
    conv = state["visual.conv1.weight"]
    vision_width, patch = conv.shape[0], conv.shape[-1]
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state["ln_final.weight"].shape[0]
    context = state["positional_embedding"].shape[0]
    keep, ratio = _infer_stretch(context)
    model_cfg = {
        "embed_dim": state["text_projection"].shape[1],
        "quick_gelu": True,
        "vision_cfg": {"image_size": patch * grid, "layers": _count_blocks(state, "visual.transformer.resblocks."),
                       "width": vision_width, "patch_size": patch, "head_width": 64},
        "text_cfg": {"context_length": 77, "vocab_size": state["token_embedding.weight"].shape[0],
                     "width": text_width, "heads": text_width // 64,
                     "layers": _count_blocks(state, "transformer.resblocks.")},
    }
    return {"format": "released", "model_name": f"released:{Path(source).name}", "model_cfg": model_cfg,
            "options": {**DEFAULT_OPTIONS, "keep": keep, "ratio": ratio},
            "preprocess_cfg": None, "mask_trained": any(k.startswith("mask_net.") for k in state)}


def read_weights(path) -> Tuple[Dict[str, torch.Tensor], bool]:
    """``(state_dict in float32, has a trained mask network)`` of our or a released checkpoint."""
    path = Path(path)
    root = _our_dir(path)
    if root is not None:
        cfg = read_config(root)
        try:
            state = load_file(str(root / WEIGHTS_NAME))
        except (SafetensorError, OSError) as e:
            raise CheckpointError(f"{root / WEIGHTS_NAME}: truncated or corrupt safetensors file ({e})") from e
        return state, bool(cfg.get("mask_trained", True))
    state = _load_torch_state_dict(path)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}
    if "positional_embedding_res" not in state and "positional_embedding" in state:
        state["positional_embedding_res"] = state["positional_embedding"].clone()
    return state, any(k.startswith("mask_net.") for k in state)


def load_weights_checked(model: SmartCLIP, state: Dict[str, torch.Tensor], source: str = "checkpoint"):
    """Load ``state`` into ``model``; every missing, unexpected or mis-shaped tensor is named.
    A missing mask network (Long-CLIP files) keeps its fresh initialisation."""
    own = model.state_dict()
    problems = []
    for key, tensor in state.items():
        if key not in own:
            problems.append(f"unexpected tensor {key!r} {tuple(tensor.shape)}")
        elif tuple(tensor.shape) != tuple(own[key].shape):
            problems.append(f"tensor {key!r} has shape {tuple(tensor.shape)}, expected {tuple(own[key].shape)}")
    missing = [k for k in own if k not in state and not k.startswith("mask_net.")]
    problems += [f"missing tensor {k!r} {tuple(own[k].shape)}" for k in missing]
    if problems:
        shown = "\n  ".join(problems[:20]) + (f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise CheckpointError(f"{source} does not fit the model:\n  {shown}")
    if not any(k.startswith("mask_net.") for k in state):
        log.info("%s has no mask network (a Long-CLIP checkpoint?): it keeps its fresh initialisation", source)
    model.load_state_dict(state, strict=False)


def load_checkpoint(path, **options) -> SmartCLIP:
    """Load a checkpoint file or folder: one of ours, a released SmartCLIP / Long-CLIP ``.pt``
    file, or an ordinary OpenAI-layout CLIP file (its 77 positions stretched; TorchScript
    archives such as OpenAI's originals too). The architecture of a file that is not ours is
    inferred from its tensors (QuickGELU, as OpenAI's); fp16 is converted to fp32;
    ``weights_only`` unpickling. ``smartclip.load_checkpoint`` (in :mod:`smartclip.factory`)
    also takes Hugging Face exports, ``hf-hub:`` and released tags."""
    cfg = read_config(path)
    return load_into_config(path, cfg["model_cfg"], {**cfg["options"], **options},
                            model_name=cfg.get("model_name", "custom"), preprocess_cfg=cfg.get("preprocess_cfg"),
                            training_info=cfg.get("training"))  # how a training checkpoint was made


def load_into_config(path, model_cfg: dict, options: dict, *, model_name: str, preprocess_cfg: Optional[dict] = None,
                     training_info: Optional[dict] = None) -> SmartCLIP:
    """The model of ``model_cfg`` and ``options`` with the weights of the checkpoint at ``path``
    (ours or an OpenAI-layout file), every tensor checked against the architecture: nothing is
    guessed from the file."""
    state, mask_trained = read_weights(path)
    model = build_model(model_cfg, options, model_name=model_name, preprocess_cfg=preprocess_cfg,
                        mask_trained=mask_trained, training_info=training_info)
    stretch_to_model(state, model)
    load_weights_checked(model, state, source=str(path))
    return model


def stretch_to_model(state: Dict[str, torch.Tensor], model: SmartCLIP) -> Dict[str, torch.Tensor]:
    """An ordinary CLIP state dict (77 positions) gets the model's stretched positional tables,
    as ``create_model`` does for open_clip checkpoints; anything else is left alone."""
    pos = state.get("positional_embedding")
    expected = stretched_length(pos.shape[0], model.keep, model.ratio) if pos is not None else None
    if pos is not None and pos.shape[0] != model.context_length and expected == model.context_length:
        stretched = stretch_positional_embedding(pos, model.keep, model.ratio)
        state["positional_embedding"], state["positional_embedding_res"] = stretched, stretched.clone()
    return state


# ------------------------------------------------------------------------------- hashing
def state_dict_hash(model_or_path) -> str:
    """A short SHA-256 of a model's tensors (names, dtypes, bytes), or of a checkpoint file's
    bytes. Used to key caches and to check an index against the model querying it."""
    if isinstance(model_or_path, (str, os.PathLike)):
        p = Path(model_or_path)
        return sha256_file(p / WEIGHTS_NAME if p.is_dir() and _our_dir(p) is not None else p)[:16]
    h = hashlib.sha256()
    for key, tensor in sorted(model_or_path.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
