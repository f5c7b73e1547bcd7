"""Data-loading throughput: images/s per worker through smartclip.data against bare PIL.

    .venv/bin/python benchmarks/bench_data.py                 # 384 JPEGs, 3 repeats
    .venv/bin/python benchmarks/bench_data.py --images 128 --repeats 1   # quicker

Writes ``--images`` JPEG files (640x480, quality 90, like COCO photos) made from
scikit-image's sample photos, a CSV and WebDataset shards of the same files, then times,
in this one process (num_workers=0, i.e. the work of one DataLoader worker):

- ``baseline``: ``PIL.Image.open(path).convert("RGB")`` + the model's train transform, per file;
- ``baseline + tokenize``: the same plus tokenising the full caption (the floor for a loader
  that also delivers tokens);
- ``csv``: ``build_train_data`` over the CSV: decode with bad-input checks, preprocess with
  per-sample seeded augmentation, prefix caption sampling, tokenisation at 248, collation;
- ``shards``: the same from WebDataset tar shards (streamed).

Preprocessing is ViT-B/16's (224 px). Reported: median images/s over ``--repeats`` and the
ratio to the baseline measured in the same run (the machine is shared; ratios are what
carry over). ``--workers N`` adds a run of the CSV loader with N worker processes.

    .venv/bin/python benchmarks/bench_data.py --scan-records 200000

times the up-front scan of a ShareGPT4V json instead (records are read once per rank at start).
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import tarfile
import tempfile
import time

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def make_files(folder: str, n: int, size=(640, 480)):
    from skimage import data
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    photos = [Image.fromarray(getattr(data, nm)()).convert("RGB").resize(size, Image.BICUBIC) for nm in names]
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows = []
    for i in range(n):
        arr = np.roll(np.asarray(photos[i % len(photos)]), i, axis=1)
        path = os.path.join("images", f"{i:06d}.jpg")
        Image.fromarray(arr).save(os.path.join(folder, path), quality=90)
        caption = ". ".join(f"Sentence {s} about photo {i} and its many details" for s in range(8)) + "."
        rows.append((path, caption))
    csv_path = os.path.join(folder, "pairs.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows(rows)
    shard_dir = os.path.join(folder, "shards")
    os.makedirs(shard_dir)
    per_shard = 64
    for s in range(0, n, per_shard):
        with tarfile.open(os.path.join(shard_dir, f"{s // per_shard:04d}.tar"), "w") as tar:
            for i in range(s, min(n, s + per_shard)):
                for ext, payload in (("jpg", open(os.path.join(folder, rows[i][0]), "rb").read()),
                                     ("txt", rows[i][1].encode())):
                    info = tarfile.TarInfo(f"{i:06d}.{ext}")
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    last = (n - 1) // per_shard
    return (csv_path, os.path.join(shard_dir, f"{{0000..{last:04d}}}.tar"), [os.path.join(folder, r[0]) for r in rows],
            [r[1] for r in rows])


def time_baseline(paths, preprocess):
    start = time.perf_counter()
    for p in paths:
        preprocess(Image.open(p).convert("RGB"))
    return len(paths) / (time.perf_counter() - start)


def time_baseline_tokenize(paths, captions, preprocess, tokenizer):
    start = time.perf_counter()
    for p, c in zip(paths, captions):
        preprocess(Image.open(p).convert("RGB"))
        tokenizer([c])
    return len(paths) / (time.perf_counter() - start)


def time_loader(train, preprocess, tokenizer, batch_size, workers):
    from smartclip.data import DataConfig, build_train_data
    data = build_train_data(DataConfig(train=train, num_workers=workers), preprocess=preprocess,
                            tokenizer=tokenizer, batch_size=batch_size)
    start = time.perf_counter()
    n = sum(len(b["images"]) for b in data)
    return n / (time.perf_counter() - start)


def bench_scan(records: int):
    """Time the up-front scan of a synthetic ShareGPT4V json (captions ~800 characters) in a
    fresh process, and its peak memory growth."""
    import json
    import subprocess
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sharegpt4v.json")
        caption = "The image shows a busy street with many people walking.\n" * 14
        with open(path, "w") as f:
            json.dump([{"id": str(i), "image": f"coco/train2017/{i:012d}.jpg",
                        "conversations": [{"from": "human", "value": "<image>\nDescribe the image."},
                                          {"from": "gpt", "value": f"{caption}Record {i}."}]}
                       for i in range(records)], f)
        code = ("import resource, time\n"
                "from smartclip.data.readers import scan_sharegpt4v\n"
                "from smartclip.data.records import RecordTable\n"
                "r0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
                "t = time.perf_counter()\n"
                f"good, bad = scan_sharegpt4v({path!r}, check_files=False)\n"
                f"table = RecordTable({path!r}, good)\n"
                "dt = time.perf_counter() - t\n"
                "peak = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - r0) / 1024\n"
                "size = (table.captions.buffer.nbytes + table.images.buffer.nbytes) / 2**20\n"
                "print(f'{len(table)} records: {dt:.1f} s, peak memory growth {peak:.0f} MiB, table {size:.0f} MiB')\n")
        print(f"ShareGPT4V json of {records} records, {os.path.getsize(path) / 2**20:.0f} MiB (check_files=False):")
        subprocess.run([sys.executable, "-c", code], check=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=384)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=0, help="also time the CSV loader with this many workers")
    ap.add_argument("--model", default="ViT-B-16")
    ap.add_argument("--scan-records", type=int, default=0,
                    help="instead, time the up-front scan of a synthetic ShareGPT4V json of this many records")
    args = ap.parse_args(argv)
    if args.scan_records:
        return bench_scan(args.scan_records)
    import torch
    import smartclip
    torch.set_num_threads(1)
    model = smartclip.create_model(args.model)
    preprocess = smartclip.image_transform(model, train=True)
    tokenizer = smartclip.get_tokenizer(model)
    del model
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, shards, paths, captions = make_files(tmp, args.images)
        runs = {"baseline": [], "baseline + tokenize": [], "csv": [], "shards": []}
        if args.workers:
            runs[f"csv, {args.workers} workers"] = []
        for _ in range(args.repeats):
            runs["baseline"].append(time_baseline(paths, preprocess))
            runs["baseline + tokenize"].append(time_baseline_tokenize(paths, captions, preprocess, tokenizer))
            runs["csv"].append(time_loader(csv_path, preprocess, tokenizer, args.batch_size, 0))
            runs["shards"].append(time_loader(shards, preprocess, tokenizer, args.batch_size, 0))
            if args.workers:
                runs[f"csv, {args.workers} workers"].append(
                    time_loader(csv_path, preprocess, tokenizer, args.batch_size, args.workers))
    base = statistics.median(runs["baseline"])
    print(f"{args.images} JPEGs 640x480 -> {args.model} train transform (224 px), batch {args.batch_size}, "
          f"{args.repeats} repeat(s), torch threads 1, {os.cpu_count()} CPUs")
    print(f"| pipeline | images/s | ratio to baseline |\n|---|---|---|")
    for name, values in runs.items():
        med = statistics.median(values)
        print(f"| {name} | {med:.1f} | {med / base:.2f} |")


if __name__ == "__main__":
    sys.exit(main())
