"""``smartclip export``: write a model for open_clip or Hugging Face transformers."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("model", help="checkpoint path, model name, or NAME:TAG (e.g. ViT-B-16:openai)")
    parser.add_argument("--format", choices=["open_clip", "hf"], default="open_clip",
                        help="open_clip: open_clip.create_model('local-dir:OUT'); hf: transformers CLIPModel folder")
    parser.add_argument("--out", required=True, help="output folder (created)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the files of an earlier export in --out (refused without it)")


def run(args) -> int:
    import smartclip
    from smartclip.checkpoint import CheckpointError

    out = Path(args.out)
    if out.is_dir() and any(out.iterdir()) and not args.overwrite:
        print(f"error: {out} already holds files; choose another --out, or pass --overwrite to replace "
              "the export there", file=sys.stderr)
        return 2
    try:
        model, _, _ = smartclip.load(args.model)
        path = smartclip.export(model, args.out, format=args.format)
    except (CheckpointError, ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format == "hf":
        print(f"wrote {path}: load with transformers.CLIPModel.from_pretrained({str(path)!r}) and "
              f"CLIPTokenizer.from_pretrained(...) (padding='max_length', truncation=True: {model.context_length} tokens)")
    else:
        print(f"wrote {path}: load with open_clip.create_model_and_transforms('local-dir:{path}')")
    return 0
