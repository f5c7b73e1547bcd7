"""``smartclip models``: list model names, or show the sizes of given models."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="model names or checkpoint paths to describe; none: list every name")
    parser.add_argument("--json", action="store_true", help="print JSON")


def describe(name: str) -> dict:
    """Sizes of model ``name`` (a registered name, ``NAME:TAG`` or a checkpoint path), built
    without weights."""
    import torch
    import smartclip
    from smartclip.checkpoint import read_config
    from smartclip.hf import SMARTCLIP_HF_NAME

    name_or_path, _ = smartclip.resolve_model(name)  # the architecture only: a tag's weights are not needed
    if os.path.isfile(os.path.join(name_or_path, SMARTCLIP_HF_NAME)):  # a Hugging Face export
        cfg = json.loads(Path(name_or_path, SMARTCLIP_HF_NAME).read_text())
        model_cfg, options = cfg["model_cfg"], cfg["options"]
    elif os.path.exists(name_or_path):
        cfg = read_config(name_or_path)
        model_cfg, options = cfg["model_cfg"], cfg["options"]
    else:
        model_cfg, options = smartclip.get_model_config(name_or_path), {}
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        model = smartclip.build_model(model_cfg, options, model_name=name)

    def count(module):
        return sum(p.numel() for p in module.parameters())

    mask = count(model.mask_net)
    return {
        "name": name,
        "embed_dim": model.embed_dim,
        "image_size": list(model.image_size),
        "context_length": model.context_length,
        "image_tower": {"width": model.visual.conv1.out_channels, "layers": len(model.visual.transformer.resblocks),
                        "patch_size": model.visual.conv1.kernel_size[0]},
        "text_tower": {"width": model.text_width, "layers": len(model.transformer.resblocks),
                       "heads": model.transformer.resblocks[0].attn.num_heads},
        "parameters": {"image": count(model.visual),
                       "text": count(model) - count(model.visual) - mask,
                       "mask_network": mask, "total": count(model)},
    }


def run(args) -> int:
    import smartclip

    if not args.names:
        names = smartclip.list_models()
        print(json.dumps(names) if args.json else "\n".join(names))
        return 0
    try:
        infos = [describe(n) for n in args.names]
    except (ValueError, FileNotFoundError) as e:
        print(f"smartclip models: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(infos, indent=2))
        return 0
    for info in infos:
        p = info["parameters"]
        print(f"{info['name']}: embed {info['embed_dim']}, image {info['image_size'][0]}x{info['image_size'][1]}, "
              f"text context {info['context_length']}")
        print(f"  image tower  width {info['image_tower']['width']}, {info['image_tower']['layers']} layers, "
              f"patch {info['image_tower']['patch_size']}: {p['image'] / 1e6:.2f} M parameters")
        print(f"  text tower   width {info['text_tower']['width']}, {info['text_tower']['layers']} layers, "
              f"{info['text_tower']['heads']} heads: {p['text'] / 1e6:.2f} M parameters")
        print(f"  mask network {p['mask_network'] / 1e6:.2f} M parameters; total {p['total'] / 1e6:.2f} M")
    return 0
