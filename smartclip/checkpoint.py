"""Checkpoints: our format (safetensors + JSON), the authors' released ``.pt`` files, and
export to open_clip.

Our format is a directory::

    smartclip_config.json   architecture (open_clip model_cfg), options, preprocessing
    model.safetensors       every tensor of the state dict, no pickle
"""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import logging
import os
import re
import warnings
import zipfile
from pathlib import Path
from typing import Dict, Optional, Tuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .hf import SMARTCLIP_HF_NAME
from .model import SmartCLIP, stretch_positional_embedding

__all__ = ["save_checkpoint", "load_checkpoint", "read_config", "read_weights", "detect_format",
           "load_weights_checked", "infer_config_from_state_dict", "export", "state_dict_hash",
           "stretch_to_model", "is_torchscript", "find_checkpoint", "missing_path_message", "save_tensors",
           "set_default_file_mode",
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


# ------------------------------------------------------------------------ finding a checkpoint
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


# ------------------------------------------------------------------------------ writing files
def _file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask."""
    try:  # Linux says it without changing it
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def set_default_file_mode(path):
    """Give ``path`` the mode every other file the project writes gets. safetensors (also
    inside transformers' ``save_pretrained``) creates its files readable by their owner only."""
    os.chmod(path, _file_mode())


def save_tensors(tensors: Dict[str, torch.Tensor], path, metadata: Optional[dict] = None) -> Path:
    """safetensors' ``save_file``, the file with the usual mode (see :func:`set_default_file_mode`)."""
    save_file(tensors, str(path), metadata=metadata)
    set_default_file_mode(path)
    return Path(path)


# ------------------------------------------------------------------------------ our format
def save_checkpoint(model: SmartCLIP, path, extra: Optional[dict] = None) -> Path:
    """Write ``model`` to the directory ``path`` (created). Files are written to temporary
    names and renamed, so a reader never sees half a checkpoint."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "format": "smartclip",
        "format_version": FORMAT_VERSION,
        "model_name": getattr(model, "model_name", "custom"),
        "model_cfg": model.model_cfg,
        "options": model.options,
        "preprocess_cfg": model.preprocess_cfg,
        "context_length": model.context_length,
        "embed_dim": model.embed_dim,
        "mask_trained": bool(getattr(model, "mask_trained", True)),
        **(extra or {}),
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    tmp_weights, tmp_config = path / (WEIGHTS_NAME + ".tmp"), path / (CONFIG_NAME + ".tmp")
    save_tensors(tensors, tmp_weights, metadata={"format": "smartclip"})
    tmp_config.write_text(json.dumps(config, indent=2))
    os.replace(tmp_weights, path / WEIGHTS_NAME)
    os.replace(tmp_config, path / CONFIG_NAME)
    return path


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
    if context == base:  # an ordinary CLIP: stretched to 248 when loaded (see load_checkpoint)
        return 20, 4
    if context == 20 + 4 * (base - 20):
        return 20, 4
    for ratio in range(2, 9):
        for keep in range(0, base - 1):
            if keep + ratio * (base - keep) == context:
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
            "options": {"keep": keep, "ratio": ratio, "soft_mask": False, "mask_padding": False},
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
    """Load one of our checkpoints, a released SmartCLIP / Long-CLIP ``.pt`` file, or an
    ordinary OpenAI-layout CLIP file (its 77 positions stretched; TorchScript archives such
    as OpenAI's originals too): architecture inferred from the tensors, fp16 converted to
    fp32, ``weights_only`` unpickling."""
    from .factory import build_model

    cfg = read_config(path)
    opts = {**cfg["options"], **options}
    model = build_model(cfg["model_cfg"], opts, model_name=cfg.get("model_name", "custom"),
                        preprocess_cfg=cfg.get("preprocess_cfg"))
    state, mask_trained = read_weights(path)
    stretch_to_model(state, model)
    load_weights_checked(model, state, source=str(path))
    model.mask_trained = mask_trained
    model.checkpoint_path = str(path)
    return model


def stretch_to_model(state: Dict[str, torch.Tensor], model: SmartCLIP) -> Dict[str, torch.Tensor]:
    """An ordinary CLIP state dict (77 positions) gets the model's stretched positional tables,
    as ``create_model`` does for open_clip checkpoints; anything else is left alone."""
    pos = state.get("positional_embedding")
    expected = model.keep + model.ratio * (pos.shape[0] - model.keep) if pos is not None and model.ratio > 1 else None
    if pos is not None and pos.shape[0] != model.context_length and expected == model.context_length:
        stretched = stretch_positional_embedding(pos, model.keep, model.ratio)
        state["positional_embedding"], state["positional_embedding_res"] = stretched, stretched.clone()
    return state


# ---------------------------------------------------------------------------------- export
def export(model: SmartCLIP, path, format: str = "open_clip") -> Path:
    """Write ``model`` for another library.

    ``open_clip``: a directory with ``open_clip_config.json`` (context 248) and
    ``open_clip_model.safetensors`` holding the merged positional embedding, loadable with
    ``open_clip.create_model("local-dir:PATH")``. The mask network is not part of CLIP and
    is left out. ``hf``: a transformers CLIPModel folder (see ``smartclip.hf``).
    """
    path = Path(path)
    if format == "hf":
        from .hf import export_hf
        return export_hf(model, path)
    if format != "open_clip":
        raise ValueError(f"unknown export format {format!r}; valid: 'open_clip', 'hf'")
    path.mkdir(parents=True, exist_ok=True)
    model_cfg = copy.deepcopy(model.model_cfg)
    model_cfg["text_cfg"]["context_length"] = model.context_length
    state = {k: v.detach().cpu().float().contiguous() for k, v in model.state_dict().items()
             if not k.startswith("mask_net.") and k != "positional_embedding_res"}
    state["positional_embedding"] = model.merged_positional_embedding().detach().cpu().float().contiguous()
    save_tensors(state, path / "open_clip_model.safetensors")
    (path / "open_clip_config.json").write_text(json.dumps(
        {"model_cfg": model_cfg, "preprocess_cfg": model.preprocess_cfg}, indent=2))
    return path


def state_dict_hash(model_or_path) -> str:
    """A short SHA-256 of a model's tensors (names, dtypes, bytes), or of a checkpoint file's
    bytes. Used to key caches and to check an index against the model querying it."""
    h = hashlib.sha256()
    if isinstance(model_or_path, (str, os.PathLike)):
        p = Path(model_or_path)
        files = [p / WEIGHTS_NAME] if _our_dir(p) is not None and p.is_dir() else [p]
        for f in files:
            with open(f, "rb") as fh:
                for chunk in iter(lambda: fh.read(1 << 20), b""):
                    h.update(chunk)
        return h.hexdigest()[:16]
    for key, tensor in sorted(model_or_path.state_dict().items()):
        h.update(key.encode())
        t = tensor.detach().cpu().contiguous()
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:16]
