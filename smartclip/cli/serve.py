"""``smartclip serve``: a search page over an index, on loopback."""
from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("--index", required=True, help="index folder (smartclip search build)")
    parser.add_argument("--model", help="the model to query with (default: the one recorded in the index)")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address only (127.0.0.1, ::1, localhost)")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-upload-mb", type=float, default=8.0, help="largest image upload accepted")
    parser.add_argument("-k", type=int, default=12, help="default number of results")
    parser.add_argument("--backend", default="exact", choices=["exact", "faiss", "faiss-hnsw"],
                        help="see smartclip search query --help")
    parser.add_argument("--device", default="cpu")


def run(args) -> int:
    import smartclip
    from smartclip import search
    from smartclip.checkpoint import CheckpointError
    from smartclip.serve import SearchApp, is_loopback, serve

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        if not is_loopback(args.host):
            raise ValueError(f"--host {args.host!r} is not a loopback address; the page listens on loopback only")
        index = search.ImageIndex.load(args.index)
        spec = args.model or index.model_spec
        if not spec:
            raise ValueError(f"{args.index} does not record its model; pass --model")
        model, preprocess, tokenizer = smartclip.load(spec, device=args.device)
        searcher = index.searcher(model, preprocess, tokenizer, device=args.device, backend=args.backend)
        app = SearchApp(searcher, max_upload_bytes=int(args.max_upload_mb * 2**20), default_k=args.k)
    except (search.IndexModelMismatch, search.EncodingError, CheckpointError, ValueError, FileNotFoundError,
            ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    serve(app, args.host, args.port)
    return 0
