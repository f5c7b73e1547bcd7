"""``smartclip demo``: the embedded scene benchmark, CLIP vs SmartCLIP, on a CPU."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (reused: finished runs are kept, "
                        "interrupted ones resume)")
    parser.add_argument("--seeds", type=int, default=1, help="fine-tuning seeds; >1 reports mean ± std")
    parser.add_argument("--scratch", action="store_true",
                        help="also train CLIP and SmartCLIP from scratch on long captions (a control)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on a few images: checks the pipeline, measures nothing")
    parser.add_argument("--pretrain-steps", type=int, default=None, help="override DemoConfig.pretrain_steps")
    parser.add_argument("--finetune-steps", type=int, default=None, help="override DemoConfig.finetune_steps")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--data-only", action="store_true", help="only write the scene dataset to OUT/data")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args) -> int:
    from smartclip.demo import DemoConfig, run_demo
    if args.seeds < 1:
        raise SystemExit("smartclip demo: --seeds must be >= 1")
    changes = {"scratch": args.scratch, "device": args.device}
    for name in ("pretrain_steps", "finetune_steps"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                raise SystemExit(f"smartclip demo: --{name.replace('_', '-')} must be >= 1")
            changes[name] = value
    cfg = DemoConfig.quick(**changes) if args.quick else DemoConfig(**changes)
    if args.data_only:
        from smartclip.scenes import write_dataset
        path = write_dataset(f"{args.out}/data", seed=cfg.data_seed, num_train=cfg.num_train, num_test=cfg.num_test,
                             num_single=cfg.num_single, image_size=cfg.image_size)
        print(f"scene dataset in {path}")
        return 0
    run_demo(args.out, seeds=args.seeds, config=cfg, progress=not args.no_progress)
    return 0
