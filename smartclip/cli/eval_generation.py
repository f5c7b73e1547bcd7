"""``smartclip eval-generation``: KID, precision / recall / F1 and DINO-L of generated images
against their reference images, from local feature-extractor weights.

    smartclip eval-generation --generated runs/gen --reference /data/sharegpt4v \\
        --inception-weights weights-inception-2015-12-05-6726825d.pth --vgg16-weights vgg16-397923af.pth \\
        --dinov2 dinov2-large
"""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--generated", required=True, help="folder written by smartclip generate (or any images)")
    parser.add_argument("--reference", required=True,
                        help="reference images: the root that sidecar 'reference' paths are relative to, or a "
                             "folder of images named like the generated ones")
    parser.add_argument("--inception-weights", help="torch-fidelity's Inception-v3 weights file (for KID)")
    parser.add_argument("--vgg16-weights", help="torchvision's ImageNet VGG16 weights file (for precision / recall)")
    parser.add_argument("--dinov2", help="DINOv2 folder in transformers layout, e.g. facebook/dinov2-large (DINO-L)")
    parser.add_argument("--prc-features", default="vgg16", choices=["vgg16", "inception"],
                        help="features for precision / recall (vgg16: Kynkaanniemi et al. and torch-fidelity)")
    parser.add_argument("--k", type=int, default=3, help="nearest neighbours for precision / recall")
    parser.add_argument("--kid-subsets", type=int, default=100)
    parser.add_argument("--kid-subset-size", type=int, default=1000, help="capped at the number of pairs")
    parser.add_argument("--out", default=None, help="folder for eval_generation.json / .md (default: --generated)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the eval_generation.json / .md already in --out (without it the run is refused)")
    parser.add_argument("--device", default=None, help="default: cuda when available")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--allow-partial", action="store_true",
                        help="score the pairs found when some generated images have no reference (marked partial)")
    parser.add_argument("--no-progress", action="store_true")


def prepare(args):
    """Paths before any feature extractor is loaded: a missing folder is reported as missing,
    and earlier results are not replaced without --overwrite."""
    from pathlib import Path
    for flag, path in (("--generated", args.generated), ("--reference", args.reference)):
        if not Path(path).is_dir():
            print(f"error: {flag} {path}: no such folder", file=sys.stderr)
            return 2
    for flag, path in (("--inception-weights", args.inception_weights), ("--vgg16-weights", args.vgg16_weights),
                       ("--dinov2", args.dinov2)):
        if path and not Path(path).exists():
            print(f"error: {flag} {path}: no such file or folder", file=sys.stderr)
            return 2
    existing = Path(args.out or args.generated) / "eval_generation.json"
    if existing.is_file() and not args.overwrite:
        print(f"error: {existing} already holds results; pass --overwrite to replace them, or choose another --out",
              file=sys.stderr)
        return 2
    return None


def run(args) -> int:
    import torch

    from smartclip.generation import IncompletePairsError, evaluate_generation, write_generation_results
    from smartclip.generation.pipeline import progress_bars

    try:
        import torch_fidelity  # noqa: F401
    except ImportError:
        print("error: smartclip eval-generation needs torch-fidelity: pip install 'smartclip[generation]'",
              file=sys.stderr)
        return 2
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        with progress_bars(not args.no_progress):  # transformers' loading bars of DINOv2 too
            record = evaluate_generation(
                args.generated, args.reference, inception_weights=args.inception_weights,
                vgg16_weights=args.vgg16_weights, dinov2=args.dinov2, prc_features=args.prc_features,
                kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size, k=args.k, device=device,
                batch_size=args.batch_size, allow_partial=args.allow_partial, progress=not args.no_progress)
    except (IncompletePairsError, ValueError, FileNotFoundError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    paths = write_generation_results(record, args.out or args.generated)
    for name, value in record["metrics"].items():
        print(f"{name:>10}: {value:.4f}")
    for name, why in record["not_computed"].items():
        print(f"{name:>10}: not computed ({why})")
    if record["partial"]:
        print(f"PARTIAL: {record['counts']['missing']} generated images had no reference image")
    print(f"wrote {paths['json']} and {paths['markdown']}")
    return 0
