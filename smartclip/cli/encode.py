"""``smartclip encode``: image or text embeddings to an embedding folder (.npy + ids)."""
from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("kind", choices=["images", "texts"], help="what to encode")
    parser.add_argument("source", help="images: a folder or a CSV with a path column; texts: a file, one text a line")
    parser.add_argument("--model", required=True, help="checkpoint path, model name, or NAME:TAG")
    parser.add_argument("--out", required=True, help="output folder: embeddings.npy, ids.txt, failed.tsv, meta.json")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--shard-size", type=int, default=1024,
                        help="images per resumable shard (a rerun continues after the last finished one)")
    parser.add_argument("--restart", action="store_true",
                        help="replace what --out holds when it is an unfinished run or embeddings of other "
                             "inputs or another model (without it, such a folder is refused)")
    parser.add_argument("--column", help="CSV column holding image paths (default: path, filepath, image...)")
    parser.add_argument("--id-column", help="CSV column holding ids (default: an 'id' column, else the path)")
    parser.add_argument("--parquet", action="store_true", help="also write embeddings.parquet (needs pyarrow)")
    parser.add_argument("--no-progress", action="store_true")


def _check_text_folder(out, source, model_hash: str, restart: bool) -> None:
    """Text embeddings are written in one go: the same texts with the same model are simply
    encoded again; anything else already in ``out`` is refused unless ``restart``."""
    meta_file = out / "meta.json"
    if restart or not meta_file.is_file():
        return
    import json
    meta = json.loads(meta_file.read_text())
    same = (meta.get("kind"), meta.get("source"), meta.get("model_hash")) == ("texts", source.description, model_hash)
    if not same:
        raise ValueError(f"{out} already holds {meta.get('kind', 'other')} embeddings of {meta.get('source')} "
                         f"(model {meta.get('model')} {meta.get('model_hash')}); choose another --out, or pass "
                         f"--restart to replace them")


def run(args) -> int:
    from pathlib import Path

    import smartclip
    from smartclip.checkpoint import CheckpointError
    from smartclip import search

    try:
        if args.kind == "images":
            source = search.list_images(args.source, column=args.column, id_column=args.id_column)
        else:
            source = search.read_text_lines(args.source)
        model, preprocess, tokenizer = smartclip.load(args.model, device=args.device)
        if args.kind == "images":
            result = search.encode_image_source(model, preprocess, source, args.out, batch_size=args.batch_size,
                                                shard_size=args.shard_size, device=args.device,
                                                progress=not args.no_progress, model_spec=args.model,
                                                restart=args.restart)
        else:
            _check_text_folder(Path(args.out), source, smartclip.state_dict_hash(model), args.restart)
            result = search.encode_text_source(model, tokenizer, source, args.out, batch_size=args.batch_size,
                                               device=args.device, progress=not args.no_progress,
                                               model_spec=args.model)
        if args.parquet:
            search.write_parquet(result, Path(args.out) / "embeddings.parquet")
    except (search.SourceError, search.EncodingError, CheckpointError, ValueError, FileNotFoundError,
            ImportError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    n, d = result.embeddings.shape
    print(f"{args.out}: {n} {args.kind} x {d} dims (model {result.meta['model']}, hash {result.meta['model_hash']})")
    if args.kind == "images":
        if source.ignored:
            print(f"  {len(source.ignored)} non-image files ignored (by extension), e.g. {source.ignored[0]}")
        if result.failed:
            print(f"  {len(result.failed)} unreadable images skipped (all in {Path(args.out) / 'failed.tsv'}):")
            for ident, reason in result.failed[:10]:
                print(f"    {ident}: {reason}")
    else:
        if source.blank_lines:
            shown = ", ".join(map(str, source.blank_lines[:10])) + (", ..." if len(source.blank_lines) > 10 else "")
            print(f"  {len(source.blank_lines)} blank lines skipped (line {shown})")
        if result.meta["truncated"]:
            print(f"  {result.meta['truncated']} texts longer than {result.meta['context_length']} tokens truncated")
    return 0
