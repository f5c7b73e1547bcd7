"""``smartclip models``: list model names or pretrained tags, or show the sizes of given models."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="model names, NAME:TAG, hf-hub:ORG/NAME or checkpoint paths to describe; none: list "
                             "every name")
    parser.add_argument("--pretrained", action="store_true",
                        help="list every pretrained tag (NAME:TAG) with its source: smartclip's released weights, "
                             "then open_clip's")
    parser.add_argument("--json", action="store_true", help="print JSON")


def describe(name: str) -> dict:
    """Sizes of model ``name`` (anything ``smartclip.load`` takes), built without weights."""
    import torch
    import smartclip
    from smartclip.factory import find_spec_config

    model_cfg, options, _ = find_spec_config(name)  # the architecture only: a tag's weights are not needed
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

    if args.pretrained:
        from smartclip.pretrained import list_pretrained
        rows = list_pretrained(smartclip.list_models())
        if args.json:
            print(json.dumps(rows, indent=2))
        else:
            width = max(len(r["name"]) for r in rows)
            print("\n".join(f"{r['name']:<{width}}  {r['source']}" for r in rows))
        return 0
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
