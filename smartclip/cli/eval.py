"""``smartclip eval``: evaluate a model on registered benchmarks, list them, or compare runs.

    smartclip eval --list
    smartclip eval --model ViT-B-16:openai --benchmarks coco urban1k --data-root /data --out runs/eval
    smartclip eval --model ViT-L-14:openai --benchmarks paper-zeroshot --data-root /data --out runs/table3
    smartclip eval --compare runs/a/eval_<hash>.json runs/b/eval_<hash>.json
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import Optional

import yaml


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", help="checkpoint path (ours or a released .pt) or model name[:pretrained tag]")
    parser.add_argument("--benchmarks", "-b", nargs="+", metavar="SPEC",
                        help="benchmark specs: a name (see --list), NAME:ROOT, a suite (paper-zeroshot), "
                             "clip_benchmark/ID, clip_benchmark/wds/ID, retrieval:CSV, classification:DIR, "
                             "scenes:DIR")
    parser.add_argument("--data-root", default=None,
                        help="folder holding each dataset in its default sub-folder (default: $SMARTCLIP_DATA)")
    parser.add_argument("--out", default=None, help="folder for eval_<hash>.json and eval_<hash>.md")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the results of the same model already in --out (without it they are kept "
                             "and the run is refused)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda when available)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=min(8, max(0, (os.cpu_count() or 1) - 1)),
                        help="image-loading processes")
    parser.add_argument("--cache-dir", default=None, help="keep encoded features here, keyed by weights hash")
    parser.add_argument("--allow-partial", action="store_true",
                        help="score benchmarks with missing images or captions (results marked partial)")
    parser.add_argument("--masked", action="store_true",
                        help="rank by masked scores (only the embedding dimensions each text's mask selects) "
                             "instead of cosine similarity")
    parser.add_argument("--set", dest="settings", action="append", default=[], metavar="SPEC.KEY=VALUE",
                        help="a benchmark option, e.g. coco.expected_images=100 or "
                             "classification:/d.classnames=/d/names.txt (value parsed as YAML)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="with missing data, list every benchmark without data and the layouts looked for")
    parser.add_argument("--list", action="store_true", help="list benchmarks with their protocols and data layout")
    parser.add_argument("--compare", nargs="+", metavar="RESULTS_JSON", help="side-by-side table of results files")


def _default_device() -> str:
    import torch  # here, not at import: `smartclip eval --help` should not wait for torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def _parse_settings(settings, specs) -> dict:
    options: dict = {}
    for item in settings:
        key, eq, value = item.partition("=")
        spec, dot, name = key.rpartition(".")
        if not eq or not dot or not spec or not name:
            raise ValueError(f"--set {item!r}: expected SPEC.KEY=VALUE, e.g. coco.expected_images=100")
        if spec not in specs:
            raise ValueError(f"--set {item!r}: {spec!r} is not one of the benchmarks run ({', '.join(specs)})")
        options.setdefault(spec, {})[name] = yaml.safe_load(value)
    return options


def _list() -> int:
    from smartclip.eval import PAPER_BENCHMARKS, SUITES, describe_benchmarks
    from smartclip.eval.clip_benchmark import METRICS, MULTILABEL_METRIC, PAPER_SOURCE
    from smartclip.eval.registry import DATA_ROOT_ENV
    from smartclip.eval.wds import WDS_LAYOUT
    paper = {s.name: s for s in PAPER_BENCHMARKS}
    infos = describe_benchmarks()
    for info in (i for i in infos if i.group != "clip_benchmark"):
        shown = f"{info.name}:{'PATH' if info.name == 'retrieval' else 'DIR'}" if info.prefix else info.name
        print(shown)
        print(f"    protocol: {info.description}")
        if info.name in paper:
            s = paper[info.name]
            print(f"    data:     ${s.env} or ${DATA_ROOT_ENV}/{s.folder} or {s.name}:PATH")
            print(f"    layout:   {s.layout}")
            print(f"    source:   {s.source}")
    for name, members in SUITES.items():
        print(f"{name}  (suite; {name}:DATA_ROOT)")
        print(f"    {PAPER_SOURCE}, with the paper's numbers beside ours: {', '.join(members)}; each read from "
              f"DATA_ROOT/wds_<id> (WebDataset layout) or else DATA_ROOT/<id> (torchvision layout)")
    print("\nCLIP_benchmark zero-shot classification (dataset, class names and templates from CLIP_benchmark; "
          f"{METRICS}; {MULTILABEL_METRIC} for voc2007_multilabel). Data: NAME:PATH or ${DATA_ROOT_ENV}/<folder>; "
          f"nothing is downloaded. Every clip_benchmark/wds/<id> reads the WebDataset layout: {WDS_LAYOUT}")
    for info in (i for i in infos if i.group == "clip_benchmark"):
        if info.layout == WDS_LAYOUT:
            print(f"{info.name}    (folder {info.folder}, WebDataset layout)")
        else:
            print(f"{info.name}    (folder {info.folder})")
            print(f"    layout:   {info.layout}")
    return 0


def _compare(paths) -> int:
    from smartclip.eval import compare_table, read_results
    runs = [read_results(p) for p in paths]
    labels = [f"{r['model']}@{r['checkpoint_hash'][:8]}" for r in runs]
    if len(set(labels)) < len(labels):
        labels = [os.path.basename(os.path.dirname(os.path.abspath(p))) + "/" + os.path.basename(p) for p in paths]
    print(compare_table(runs, labels))
    return 0


def _needs_model(args) -> bool:
    return not (args.list or args.compare)


def prepare(args) -> Optional[int]:
    """The data, before the model: a missing dataset or a typo in a name fails in seconds,
    without loading (or downloading) any weights."""
    if not _needs_model(args):
        return None
    if not args.model or not args.benchmarks:
        print("error: --model and --benchmarks are required (or use --list / --compare)", file=sys.stderr)
        return 2
    from smartclip.eval import DatasetFormatError, DatasetNotFoundError
    from smartclip.eval.runner import MissingDataError, plan_evaluation
    try:
        options = _parse_settings(args.settings, args.benchmarks)
        if args.masked:
            for spec in args.benchmarks:
                options.setdefault(spec, {})["masked"] = True
        args.plan = plan_evaluation(args.benchmarks, root=args.data_root, allow_partial=args.allow_partial,
                                    options=options, num_workers=args.workers)
    except MissingDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if args.verbose:
            print(exc.details(), file=sys.stderr)
        else:
            print("  (every missing set, with the layouts looked for: add --verbose)", file=sys.stderr)
        return 2
    except (DatasetNotFoundError, DatasetFormatError, KeyError, ValueError, TypeError, ImportError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    return None


def run(args) -> int:
    if args.list:
        return _list()
    if args.compare:
        try:
            return _compare(args.compare)
        except (FileNotFoundError, ValueError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    if getattr(args, "plan", None) is None:  # run() called without prepare()
        status = prepare(args)
        if status is not None:
            return status
    import smartclip
    from smartclip.eval import DatasetFormatError, DatasetNotFoundError, IncompleteBenchmarkError, evaluate, \
        markdown_table
    from smartclip.eval.runner import run_record
    try:
        args.device = args.device or _default_device()
        model, _, _ = smartclip.load(args.model, device=args.device, precision=args.precision)
        model_hash = smartclip.state_dict_hash(model)
        if args.out and not args.overwrite:
            existing = os.path.join(args.out, f"eval_{model_hash}.json")
            if os.path.isfile(existing):
                print(f"error: {existing} already holds results of this model; pass --overwrite to replace them, "
                      f"or choose another --out", file=sys.stderr)
                return 2
        results = evaluate(
            model, args.benchmarks, root=args.data_root, device=args.device, batch_size=args.batch_size,
            out_dir=args.out, allow_partial=args.allow_partial, progress=not args.no_progress,
            cache_dir=args.cache_dir, model_label=args.model, num_workers=args.workers, plan=args.plan)
    except (DatasetNotFoundError, DatasetFormatError, IncompleteBenchmarkError, KeyError, ValueError,
            ImportError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) and exc.args else exc}", file=sys.stderr)
        return 2
    record = run_record(model, results, model_hash, args.model, args.device)
    print(markdown_table(record))
    if args.out:
        print(f"\nwrote {os.path.join(args.out, 'eval_' + record['checkpoint_hash'])}.json / .md")
    return 0
