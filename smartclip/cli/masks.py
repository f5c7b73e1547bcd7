"""``smartclip masks``: the embedding dimensions captions select, overlaps, mask algebra, a plot."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("captions", nargs="*", help="captions (numbered 1, 2, ... in the output)")
    parser.add_argument("--file", help="more captions, one a line")
    parser.add_argument("--model", required=True, help="checkpoint path, model name, or NAME:TAG")
    parser.add_argument("--expr", action="append", default=[],
                        help="mask algebra over caption numbers: '1 & 2', '1 | 2', '1 - 2', '1 ^ 2', '~1' (repeatable)")
    parser.add_argument("--plot", help="write a PNG of the masks and their overlaps")
    parser.add_argument("--json", help="write the full report (every selected dimension) to this JSON file")
    parser.add_argument("--device", default="cpu")


def _ranges(dims) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2,5,7-8'."""
    out, start = [], None
    for i, d in enumerate(dims):
        if start is None:
            start = d
        if i + 1 == len(dims) or dims[i + 1] != d + 1:
            out.append(str(start) if start == d else f"{start}-{d}")
            start = None
    return ",".join(out) or "-"


def run(args) -> int:
    from pathlib import Path

    import smartclip
    from smartclip import search
    from smartclip.checkpoint import CheckpointError

    captions = list(args.captions)
    try:
        if args.file:
            captions += search.read_text_lines(args.file).texts
        if not captions:
            raise ValueError("no captions: give them as arguments or with --file")
        model, _, tokenizer = smartclip.load(args.model, device=args.device)
        report = search.caption_masks(model, tokenizer, captions, device=args.device)
        for e in args.expr:
            report.evaluate(e)  # validate before printing anything
    except (search.SourceError, search.MaskExpressionError, CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not report.mask_trained:
        print("note: this model's mask network is untrained (fresh initialisation): masks are not meaningful")
    d = report.embed_dim
    for i, caption in enumerate(report.captions):
        flag = " [truncated]" if report.truncated[i] else ""
        print(f"{i + 1}. {int(report.counts[i])}/{d} dims{flag}  {caption}")
        print(f"   {_ranges(report.selected(i))}")
    if len(report.captions) > 1:
        n = len(report.captions)
        print("shared dimensions (row & column):")
        print("      " + "".join(f"{j + 1:>6}" for j in range(n)))
        for i in range(n):
            print(f"{i + 1:>6}" + "".join(f"{report.overlap[i, j]:>6}" for j in range(n)))
    for e in args.expr:
        dims = [int(x) for x in report.evaluate(e).nonzero()[0]]
        print(f"{e}: {len(dims)}/{d} dims  {_ranges(dims)}")
    if args.plot:
        print(f"plot: {search.plot_masks(report, args.plot, args.expr)}")
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(args.expr), indent=2))
        print(f"report: {args.json}")
    return 0
