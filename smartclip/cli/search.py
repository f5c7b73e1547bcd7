"""``smartclip search``: build an image index, query it with text or an image."""
from __future__ import annotations

import argparse
import json
import sys


def add_arguments(parser: argparse.ArgumentParser):
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    build = sub.add_parser("build", help="encode a folder / CSV of images into an index folder")
    build.add_argument("source", help="a folder of images or a CSV with a path column")
    build.add_argument("--index", required=True, help="index folder (created)")
    build.add_argument("--model", required=True, help="checkpoint path, model name, or NAME:TAG")
    build.add_argument("--batch-size", type=int, default=64)
    build.add_argument("--shard-size", type=int, default=1024, help="images per resumable shard")
    build.add_argument("--device", default="cpu")
    build.add_argument("--restart", action="store_true", help="discard an unfinished or different run")
    build.add_argument("--column", help="CSV column holding image paths")
    build.add_argument("--no-progress", action="store_true")

    query = sub.add_parser("query", help="top-k images for a text or an image")
    query.add_argument("--index", required=True)
    what = query.add_mutually_exclusive_group(required=True)
    what.add_argument("--text", help="text query")
    what.add_argument("--image", help="image file query")
    query.add_argument("-k", type=int, default=10, help="number of results (default 10)")
    query.add_argument("--masked", action="store_true",
                       help="rank by masked scores: only the embedding dimensions the text query's mask selects "
                            "count (SmartCLIP's masked similarity)")
    query.add_argument("--backend", default="exact", choices=["exact", "faiss", "faiss-hnsw"],
                       help="exact (default); faiss: flat FAISS index, same results; faiss-hnsw: approximate, "
                            "faster on large collections (needs faiss-cpu)")
    query.add_argument("--model", help="the model to query with (default: the one recorded in the index)")
    query.add_argument("--device", default="cpu")
    query.add_argument("--json", action="store_true", help="print the result as JSON")


def _model_for(index, spec, device):
    import smartclip
    spec = spec or index.model_spec
    if not spec:
        raise ValueError(f"{index.folder} does not record its model; pass --model")
    return smartclip.load(spec, device=device)


def run(args) -> int:
    from smartclip import search
    from smartclip.checkpoint import CheckpointError
    from smartclip.data.errors import BadImage

    try:
        if args.action == "build":
            import smartclip
            source = search.list_images(args.source, column=args.column)
            model, preprocess, _ = smartclip.load(args.model, device=args.device)
            index = search.build_index(model, preprocess, source, args.index, model_spec=args.model,
                                       batch_size=args.batch_size, shard_size=args.shard_size, device=args.device,
                                       progress=not args.no_progress, restart=args.restart)
            print(f"{args.index}: {len(index)} images indexed (model {index.data.meta['model']}, "
                  f"hash {index.model_hash})")
            if index.data.failed:
                print(f"  {len(index.data.failed)} unreadable images skipped, listed in {args.index}/failed.tsv")
            return 0
        if args.k < 1:
            raise ValueError(f"-k must be >= 1, got {args.k}")
        index = search.ImageIndex.load(args.index)
        model, preprocess, tokenizer = _model_for(index, args.model, args.device)
        searcher = index.searcher(model, preprocess, tokenizer, device=args.device, backend=args.backend)
        if args.text is not None:
            result = searcher.text(args.text, k=args.k, masked=args.masked)
        else:
            if args.masked:
                raise ValueError("--masked needs a text query: an image has no mask")
            result = searcher.image(args.image, k=args.k)
    except (search.SourceError, search.EncodingError, search.IndexModelMismatch, CheckpointError, BadImage,
            ValueError, FileNotFoundError, ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
        return 0
    for note in result.notes:
        print(f"note: {note}")
    if result.mask is not None:
        print(f"query mask: {int(result.mask.sum())} of {result.mask.shape[0]} dimensions"
              + (" (masked scoring)" if result.masked else ""))
    for hit in result.hits:
        print(f"{hit.rank:>3}  {hit.score:+.4f}  {index.image_path(hit.row)}")
    return 0
