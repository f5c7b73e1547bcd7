"""``smartclip demo``: the embedded scene benchmark, CLIP vs SmartCLIP, on a CPU."""
from __future__ import annotations

import argparse
import shlex
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo", help="output directory (reused: finished runs are kept, "
                        "interrupted ones resume)")
    parser.add_argument("--seeds", type=int, default=3, help="fine-tuning seeds (default 3: mean ± std and verdicts)")
    parser.add_argument("--scratch", action="store_true",
                        help="also train CLIP and SmartCLIP from scratch on long captions (a control)")
    parser.add_argument("--quick", action="store_true",
                        help="a few steps on a few images: checks that the pipeline runs end to end; its table and "
                             "verdicts are printed but say nothing about the methods")
    parser.add_argument("--finetune-steps", type=int, default=None, help="override DemoConfig.finetune_steps")
    parser.add_argument("--base", default=None, metavar="DIR",
                        help="start from this checkpoint instead of the shipped base model")
    parser.add_argument("--build-base", default=None, metavar="DIR",
                        help="pretrain the demo's base model into DIR (the recipe of docs/demo.md) and stop")
    parser.add_argument("--grid", nargs="+", default=None, metavar="KEY=V1,V2",
                        help="ablation grid: fine-tune SmartCLIP from the base for every combination of these "
                             "dotted training settings (e.g. loss.sparsity_weight=0,2,8 loss.scale=model,100) "
                             "with the same seeds, and write one table with plots against each key")
    parser.add_argument("--grid-split", default="val", choices=["val", "test"],
                        help="the scenes the grid is scored on: val (to choose settings; default) or test")
    parser.add_argument("--grid-regime", default="long", choices=["long", "short"], help="the grid's captions")
    parser.add_argument("--grid-summary", action="store_true",
                        help="one table of every grid already run into OUT on --grid-split, and stop")
    parser.add_argument("--workers", type=int, default=None, help="runs in parallel (default 2, one thread each)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    parser.add_argument("--data-only", action="store_true", help="only write the scene dataset to OUT/data")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--keep-checkpoints", action="store_true",
                        help="keep every run's checkpoints (with the optimizer state); by default the demo keeps "
                             "only the weights its report's plots load, and the grid only weights")


def _fail(message: str) -> int:
    print(f"smartclip demo: {message}", file=sys.stderr)
    return 2


def command_line(args) -> str:
    """The ``smartclip demo`` command line of ``args`` (what report.md and results.json name)."""
    words = ["smartclip", "demo", "--out", args.out, "--seeds", str(args.seeds)]
    for flag in ("scratch", "quick", "keep_checkpoints"):
        if getattr(args, flag):
            words.append(f"--{flag.replace('_', '-')}")
    for name in ("finetune_steps", "base", "workers"):
        if getattr(args, name) is not None:
            words += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    if args.device != "cpu":
        words += ["--device", args.device]
    if args.grid:
        words += ["--grid", *args.grid, "--grid-split", args.grid_split, "--grid-regime", args.grid_regime]
    return shlex.join(words)


def run(args) -> int:
    from smartclip.scenes.demo import (BaseRecipe, DemoConfig, build_base, parse_grid, run_demo, run_grid,
                                      summarise_grids)
    if args.seeds < 1:
        return _fail("--seeds must be >= 1")
    changes = {"scratch": args.scratch, "device": args.device, "base": args.base,
               "keep_checkpoints": args.keep_checkpoints}
    for name in ("finetune_steps", "workers"):
        value = getattr(args, name)
        if value is not None:
            if value < 1:
                return _fail(f"--{name.replace('_', '-')} must be >= 1")
            changes[name] = value
    cfg = DemoConfig.quick(**changes) if args.quick else DemoConfig.from_dict(changes)
    if args.build_base:
        recipe = BaseRecipe(num_pretrain=64, num_pretrain_single=16, steps=3, warmup=1, batch_size=16,
                                probe_images=64) \
            if args.quick else BaseRecipe()
        build_base(args.build_base, recipe, progress=not args.no_progress,
                   command=f"smartclip demo --build-base {args.build_base}" + (" --quick" if args.quick else ""))
        return 0
    if args.data_only:
        from smartclip.scenes import write_dataset
        path = write_dataset(f"{args.out}/data", seed=cfg.data_seed, num_train=cfg.num_train, num_test=cfg.num_test,
                             num_single=cfg.num_single, num_val=cfg.num_val, num_val_single=cfg.num_val_single,
                             image_size=cfg.image_size)
        print(f"scene dataset in {path}")
        return 0
    try:
        if args.grid_summary:
            summarise_grids(args.out, args.grid_split)
        elif args.grid:
            run_grid(args.out, parse_grid(args.grid), seeds=args.seeds, config=cfg, regime=args.grid_regime,
                     split=args.grid_split, progress=not args.no_progress, command=command_line(args))
        else:
            run_demo(args.out, seeds=args.seeds, config=cfg, progress=not args.no_progress,
                     command=command_line(args))
    except (FileExistsError, FileNotFoundError, ValueError) as exc:
        return _fail(str(exc))
    return 0
