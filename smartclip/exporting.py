"""Export to other libraries: open_clip (``local-dir:``) and Hugging Face transformers.

Above both file layers: it writes with :mod:`smartclip.checkpoint`'s helpers and hands the
``hf`` format to :mod:`smartclip.hf`. ``smartclip.export`` is :func:`export`.
"""
from __future__ import annotations

import copy
from pathlib import Path

from .checkpoint import save_tensors
from .fileio import atomic_write_json
from .hf import export_hf
from .model import SmartCLIP

__all__ = ["export"]


def export(model: SmartCLIP, path, format: str = "open_clip") -> Path:
    """Write ``model`` for another library.

    ``open_clip``: a directory with ``open_clip_config.json`` (context 248) and
    ``open_clip_model.safetensors`` holding the merged positional embedding, loadable with
    ``open_clip.create_model("local-dir:PATH")``. The mask network is not part of CLIP and
    is left out. ``hf``: a transformers CLIPModel folder (see ``smartclip.hf``).
    """
    path = Path(path)
    if format == "hf":
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
    atomic_write_json(path / "open_clip_config.json", {"model_cfg": model_cfg, "preprocess_cfg": model.preprocess_cfg})
    return path
