"""``smartclip data check PATH``: count and list bad input in a dataset without training."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    check = sub.add_parser("check", help="decode every image, read every caption, report bad input by kind",
                           description="Read a dataset the way training would and report every bad or repaired "
                                       "record by kind, with its file and record. Exit status 1 when the bad "
                                       "fraction exceeds --max-bad-fraction.")
    check.add_argument("path", help="a data.train string: .csv/.tsv, ShareGPT4V .json, WebDataset shards "
                                    "('shards/{000..009}.tar'), several joined by '::' with optional '@WEIGHT'")
    check.add_argument("--csv-image-key", default="filepath", help="CSV column with image paths (default: filepath)")
    check.add_argument("--csv-caption-key", default="title", help="CSV column with captions (default: title)")
    check.add_argument("--csv-separator", default="", help="CSV field separator (default: ',' for .csv, tab for .tsv)")
    check.add_argument("--image-roots", default="",
                       help="ShareGPT4V image folders by source: 'coco=/data/coco,sam=/data/sam,/data/other'")
    check.add_argument("--include-sharegpt4v-eval", action="store_true",
                       help="also check records [:1000] of a ShareGPT4V json (held out of training by default)")
    check.add_argument("--max-bad-fraction", type=float, default=0.01, help="fail above this fraction (default 0.01)")
    check.add_argument("--max-image-pixels", type=int, default=None, help="decompression-bomb limit in pixels")
    check.add_argument("--context-length", type=int, default=248, help="tokens before a caption counts as truncated")
    check.add_argument("--workers", type=int, default=0, help="decoding processes (default: up to 4)")
    check.add_argument("--limit", type=int, default=0, help="check only records numbered below this in CSV/json")
    check.add_argument("--show", type=int, default=20, help="bad records to list (default 20)")
    check.add_argument("--report", default="", help="write the full report (every event) to this JSON file")


def run(args) -> int:
    from ..data import DataConfig, DataError
    from ..data.check import check_dataset
    fields = dict(train=args.path, csv_image_key=args.csv_image_key, csv_caption_key=args.csv_caption_key,
                  csv_separator=args.csv_separator, image_roots=args.image_roots,
                  exclude_sharegpt4v_eval=not args.include_sharegpt4v_eval, max_bad_fraction=args.max_bad_fraction)
    if args.max_image_pixels is not None:
        fields["max_image_pixels"] = args.max_image_pixels
    try:
        cfg = DataConfig(**fields)
        report = check_dataset(cfg, workers=args.workers or None, context_length=args.context_length,
                               limit=args.limit)
    except (ValueError, DataError) as e:
        print(f"smartclip data check: {e}", file=sys.stderr)
        return 2
    print(report.summary(show=args.show))
    if args.report:
        with open(args.report, "w") as f:
            json.dump(report.as_dict(), f, indent=1)
        print(f"full report: {args.report}")
    return 0 if report.ok else 1
