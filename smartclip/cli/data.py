"""``smartclip data check PATH`` (count and list bad input without training) and
``smartclip data prepare SOURCE --out DIR --model MODEL`` (decode and resize once, exactly)."""
from __future__ import annotations

import argparse
import json
import os
import sys


def _source_arguments(p: argparse.ArgumentParser, verb: str):
    p.add_argument("--csv-image-key", default="filepath", help="CSV column with image paths (default: filepath)")
    p.add_argument("--csv-caption-key", default="title", help="CSV column with captions (default: title)")
    p.add_argument("--csv-separator", default="", help="CSV field separator (default: ',' for .csv, tab for .tsv)")
    p.add_argument("--image-roots", default="",
                   help="ShareGPT4V image folders by source: 'coco=/data/coco,sam=/data/sam,/data/other'")
    p.add_argument("--include-sharegpt4v-eval", action="store_true",
                   help=f"also {verb} records [:1000] of a ShareGPT4V json (held out of training by default)")
    p.add_argument("--max-bad-fraction", type=float, default=0.01, help="fail above this fraction (default 0.01)")
    p.add_argument("--max-image-pixels", type=int, default=None, help="decompression-bomb limit in pixels")


def add_arguments(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="decode every image, read every caption, report bad input by kind",
                           description="Read a dataset the way training would and report every bad or repaired "
                                       "record by kind, with its file and record. Exit status 1 when the bad "
                                       "fraction exceeds --max-bad-fraction.")
    check.add_argument("path", help="a data.train string: .csv/.tsv, ShareGPT4V .json, WebDataset shards "
                                    "('shards/{000..009}.tar') or a prepared folder, several joined by '::' "
                                    "with optional '@WEIGHT'")
    _source_arguments(check, "check")
    check.add_argument("--context-length", type=int, default=248, help="tokens before a caption counts as truncated")
    check.add_argument("--workers", type=int, default=0, help="decoding processes (default: up to 4)")
    check.add_argument("--limit", type=int, default=0, help="check only records numbered below this in CSV/json")
    check.add_argument("--show", type=int, default=20, help="bad records to list (default 20)")
    check.add_argument("--report", default="", help="write the full report (every event) to this JSON file")

    prep = sub.add_parser("prepare", help="decode and resize every image once into exact WebDataset shards",
                          description="Decode every image of SOURCE once, resize it as MODEL's preprocessing does, "
                                      "and store it losslessly in WebDataset shards under --out, with the caption "
                                      "as training reads it and a manifest. Training on --out gives the same "
                                      "tensors as training on SOURCE (train.augment: false), faster. "
                                      "Interrupted? Run the same command again.")
    prep.add_argument("source", help="a data.train string: .csv/.tsv, ShareGPT4V .json, WebDataset shards, "
                                     "several joined by '::' (weights are ignored: every record is written once)")
    prep.add_argument("--out", required=True, help="the folder to write (new or empty, or one this command "
                                                   "started with the same settings)")
    prep.add_argument("--model", required=True, help="model name or checkpoint; fixes the image size and interpolation")
    _source_arguments(prep, "prepare")
    prep.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                      help="worker processes (default: all CPUs, %(default)s here)")
    prep.add_argument("--shard-size", type=int, default=1000, help="records per shard (default 1000)")
    prep.add_argument("--store", choices=("resized", "crop"), default="resized",
                      help="keep the whole resized image (default) or only its centre crop (smaller; exact "
                           "without augmentation too, but train.augment: true then sees only the crop)")
    prep.add_argument("--format", choices=("ppm", "png"), default="ppm",
                      help="lossless image format (default ppm: uncompressed, fastest to read; png: smaller, slower)")
    prep.add_argument("--quiet", action="store_true", help="no progress bar")


def _data_config(args, train: str):
    from ..data import DataConfig
    fields = dict(train=train, csv_image_key=args.csv_image_key, csv_caption_key=args.csv_caption_key,
                  csv_separator=args.csv_separator, image_roots=args.image_roots,
                  exclude_sharegpt4v_eval=not args.include_sharegpt4v_eval, max_bad_fraction=args.max_bad_fraction)
    if args.max_image_pixels is not None:
        fields["max_image_pixels"] = args.max_image_pixels
    return DataConfig(**fields)


def run(args) -> int:
    return _prepare(args) if args.action == "prepare" else _check(args)


def _check(args) -> int:
    from ..data import DataError, parse_sources
    from ..data.check import check_dataset
    from ..data.prepared import find_prepared, read_manifest, verify_prepared
    try:
        cfg = _data_config(args, args.path)
        report = check_dataset(cfg, workers=args.workers or None, context_length=args.context_length,
                               limit=args.limit)
        prepared = [f for s in parse_sources(args.path) if s.kind == "wds"
                    for f in [find_prepared(s.spec, s.files)] if f]
    except (ValueError, DataError) as e:
        print(f"smartclip data check: {e}", file=sys.stderr)
        return 2
    print(report.summary(show=args.show))
    problems = []
    for folder in prepared:
        try:
            manifest = read_manifest(folder)
        except OSError:
            problems.append(f"{folder}: an unfinished prepare (no manifest.json); run its prepare command again")
            continue
        found = verify_prepared(folder)
        problems.extend(found)
        if not found:
            print(f"prepared folder {folder}: {len(manifest['shards'])} shard(s) match manifest.json (sha256); "
                  f"its prepare read {manifest['records']} records and skipped {manifest['bad']}")
    for p in problems:
        print(f"FAIL: {p}")
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report.as_dict(), f, indent=1)
        print(f"full report: {args.report}")
    return 0 if report.ok and not problems else 1


def _prepare(args) -> int:
    from ..data import DataError
    from ..data.prepare import prepare_dataset
    try:
        cfg = _data_config(args, args.source)
        cfg.validate()
        import smartclip
        model = smartclip.create_model(args.model)
        preprocess_cfg, context_length = dict(model.preprocess_cfg), int(model.context_length)
        del model
        result = prepare_dataset(cfg, args.out, preprocess_cfg=preprocess_cfg, context_length=context_length,
                                 workers=max(1, args.workers), shard_size=args.shard_size, store=args.store,
                                 image_format=args.format, progress=not args.quiet)
    except (ValueError, DataError) as e:
        print(f"smartclip data prepare: {e}", file=sys.stderr)
        return 2
    print(result.summary())
    return 0 if result.manifest["ok"] else 1
