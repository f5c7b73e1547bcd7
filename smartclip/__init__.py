"""smartclip: SmartCLIP (CVPR 2025) on open_clip.

    import smartclip
    model = smartclip.create_model("ViT-B-16", pretrained="openai")
    tokenizer = smartclip.get_tokenizer(model)          # 248 tokens, truncation counted
    preprocess = smartclip.image_transform(model)
    mask = model.text_mask(tokenizer(["a bear holding a pen"]))
"""
from .model import SmartCLIP, MaskNetwork, stretch_positional_embedding, straight_through_mask
from .tokenizer import Tokenizer, get_tokenizer
from .factory import create_model, list_models, get_model_config, build_model, image_transform
from .checkpoint import save_checkpoint, load_checkpoint, export, state_dict_hash, CheckpointError
from . import loss

__version__ = "0.1.0"

__all__ = [
    "SmartCLIP", "MaskNetwork", "stretch_positional_embedding", "straight_through_mask",
    "Tokenizer", "get_tokenizer", "create_model", "list_models", "get_model_config", "build_model",
    "image_transform", "save_checkpoint", "load_checkpoint", "export", "state_dict_hash",
    "CheckpointError", "loss", "load",
]


def load(path_or_name: str, device="cpu", **options):
    """``(model, preprocess, tokenizer)`` for one of our checkpoints, a released SmartCLIP /
    Long-CLIP file, a folder written by ``export(..., format="hf")``, or a model name
    (``"ViT-B-16"``, ``"ViT-B-16:openai"`` for an open_clip tag)."""
    import os
    from .hf import SMARTCLIP_HF_NAME
    if os.path.isfile(os.path.join(path_or_name, SMARTCLIP_HF_NAME)):
        from .hf import load_hf
        model = load_hf(path_or_name, device=device)
    elif os.path.exists(path_or_name):
        model = create_model(path_or_name, device=device, **options)
    else:
        name, _, tag = path_or_name.partition(":")
        model = create_model(name, pretrained=tag or None, device=device, **options)
    model.eval()
    return model, image_transform(model, train=False), get_tokenizer(model)
