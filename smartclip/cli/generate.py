"""``smartclip generate``: SDXL images from long prompts, with a SmartCLIP model as the text encoder.

    smartclip generate --model SmartCLIP-L14.pt --sdxl sdxl-base-1.0 --prompts prompts.txt --out runs/gen
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--model", required=True, help="SmartCLIP checkpoint path, model name, or NAME:TAG "
                                                       "(SDXL needs a ViT-L/14: 768-wide text)")
    parser.add_argument("--sdxl", required=True, help="SDXL base folder in diffusers layout")
    parser.add_argument("--refiner", help="SDXL refiner folder in diffusers layout (finishes the last steps)")
    parser.add_argument("--bigg", help="open_clip ViT-bigG-14 checkpoint for the second encoder "
                                       "(default: text_encoder_2 of the SDXL folder); stretched to 248 either way")
    parser.add_argument("--bigg-arch", default="ViT-bigG-14", help="open_clip architecture of --bigg")
    parser.add_argument("--prompts", required=True,
                        help="prompt file: .txt (one a line), .jsonl / .json / .csv / .tsv records, "
                             "or a ShareGPT4V json")
    parser.add_argument("--start", type=int, default=0, help="first prompt record to use")
    parser.add_argument("--limit", type=int, default=None, help="at most this many prompts")
    parser.add_argument("--out", required=True, help="folder for <id>.png, <id>.json and generation.json")
    parser.add_argument("--layer", default="final", choices=["final", "penultimate"],
                        help="token features: final-LayerNorm output (Long-CLIP) or penultimate block (diffusers)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--seed", type=int, default=0, help="image k of the prompt file uses seed + k")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--height", type=int, default=None, help="default: the UNet's size (1024 for SDXL)")
    parser.add_argument("--width", type=int, default=None)
    parser.add_argument("--negative-prompt", default=None, help="default: none (zero embeddings, as SDXL)")
    parser.add_argument("--refiner-switch", type=float, default=0.8,
                        help="fraction of the steps run by the base when --refiner is given")
    parser.add_argument("--long-prompts", default="truncate", choices=["truncate", "refuse"],
                        help="prompts over 248 tokens: truncate them (counted, marked in each sidecar) or "
                             "refuse the run before any image is made")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--precision", default=None, choices=["fp32", "fp16", "bf16"],
                        help="default: fp16 on cuda, fp32 on cpu")
    parser.add_argument("--variant", default=None, help="diffusers weight variant to load, e.g. fp16")
    parser.add_argument("--overwrite", action="store_true", help="regenerate images already in --out")
    parser.add_argument("--no-progress", action="store_true")


def prepare(args):
    """Every path before anything is loaded: a missing folder or file is reported as missing, in
    one line, before the text model is built."""
    import os
    from smartclip.generation.pipeline import check_pipeline_folder
    try:
        check_pipeline_folder(args.sdxl)
        if args.refiner:
            check_pipeline_folder(args.refiner, "refiner")
        for flag, path in (("--prompts", args.prompts), ("--bigg", args.bigg)):
            if path and not os.path.isfile(path):
                raise FileNotFoundError(f"{flag} {path}: no such file")
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return None


def run(args) -> int:
    import torch

    import smartclip
    from smartclip.checkpoint import CheckpointError
    from smartclip.generation import (GenerationSettings, LongPromptSDXL, PromptFileError, PromptTooLongError,
                                      generate_to_folder, read_prompts)

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    precision = args.precision or ("fp16" if device.startswith("cuda") else "fp32")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    try:
        import diffusers  # noqa: F401
    except ImportError:
        print("error: smartclip generate needs diffusers: pip install 'smartclip[generation]'", file=sys.stderr)
        return 2
    try:
        settings = GenerationSettings(steps=args.steps, guidance_scale=args.guidance_scale, seed=args.seed,
                                      height=args.height, width=args.width, negative_prompt=args.negative_prompt,
                                      refiner_switch=args.refiner_switch, long_prompts=args.long_prompts)
        prompts = read_prompts(args.prompts, start=args.start, limit=args.limit)
        model, _, _ = smartclip.load(args.model)
        model_hash = smartclip.state_dict_hash(model)  # of the weights as stored, before any cast
        sdxl = LongPromptSDXL.from_pretrained(model, args.sdxl, refiner_dir=args.refiner, bigg_checkpoint=args.bigg,
                                              bigg_arch=args.bigg_arch, layer=args.layer, device=device,
                                              dtype=dtype, variant=args.variant, progress=not args.no_progress)
        description = {"model": args.model, "model_hash": model_hash, "sdxl": args.sdxl,
                       "refiner_dir": args.refiner, "bigg": args.bigg or "text_encoder_2 of --sdxl",
                       "precision": precision}
        report = generate_to_folder(sdxl, prompts, args.out, settings, batch_size=args.batch_size,
                                    progress=not args.no_progress, overwrite=args.overwrite, description=description)
    except (PromptFileError, PromptTooLongError, CheckpointError, ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{args.out}: {len(report.written)} images written"
          + (f", {len(report.skipped)} already there" if report.skipped else ""))
    if report.truncated:
        shown = ", ".join(report.truncated[:10]) + (", ..." if len(report.truncated) > 10 else "")
        print(f"  {len(report.truncated)} prompts longer than {sdxl.encoder.context_length} tokens were truncated "
              f"({shown}); each sidecar says so")
    return 0
