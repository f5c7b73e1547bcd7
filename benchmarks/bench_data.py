"""Data-loading throughput per worker on ShareGPT4V's image mix: originals, prepared shards, draft decode.

    .venv/bin/python benchmarks/bench_data.py                          # 200 images, 3 rounds
    .venv/bin/python benchmarks/bench_data.py --images 100 --rounds 1  # quicker

Writes ``--images`` JPEGs made from scikit-image's sample photographs in ShareGPT4V's mix
(issue 19): 45.8 % SAM-size (2,250 x 1,500, quality 95, about 0.5 MB), 44.8 % LLaVA LCS-size
(336 to 600 px on a side), 9.5 % COCO-size (640 x 480), with a CSV of 8-sentence captions.
Then, in this one process (``num_workers=0``: the work of one DataLoader worker), with ViT-B/16's
preprocessing as training uses it with ``train.augment: false`` (resize the shorter side to 224,
bicubic, centre crop, normalise), prefix caption sampling and 248-token tokenisation, each
round times:

- ``originals``: ``build_train_data`` over the CSV (the exact decode of every JPEG);
- ``originals, data.decode=draft``: the same with JPEG DCT-domain reduction (reducing gap 2);
- ``prepare``: ``smartclip.data.prepare.prepare_dataset`` with one worker, for each storage
  candidate (PPM of the resized image, PNG of it, PPM of the centre crop): images/s, disk;
- ``prepared``: ``build_train_data`` over each prepared folder.

Reported: the median samples/s over ``--rounds`` and the ratio to ``originals`` in the same
run (the machine may be shared; ratios carry over), disk per 1,000 samples, and the pixel
difference of the draft decode from the exact one (preprocessed tensors, in 0-255 steps).

    .venv/bin/python benchmarks/bench_data.py --scan-records 200000

times the up-front scan of a ShareGPT4V json instead (records are read once per rank at start).
"""
from __future__ import annotations

import argparse
import csv
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MIX = (("sam", 0.458), ("lcs", 0.448), ("coco", 0.095))
LCS_SIZES = ((336, 336), (500, 375), (600, 500), (448, 336), (375, 500), (336, 448))
STORES = (("ppm, resized", "ppm", "resized"), ("png, resized", "png", "resized"), ("ppm, crop", "ppm", "crop"))


def _photos():
    from skimage import data
    names = ["astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "hubble_deep_field"]
    return [Image.fromarray(getattr(data, nm)()).convert("RGB") for nm in names]


def make_mix(folder: str, n: int):
    """``n`` JPEGs in ShareGPT4V's mix and ``pairs.csv``; returns ``(csv path, {class: count})``."""
    photos = _photos()
    counts = {c: int(round(f * n)) for c, f in MIX}
    counts["lcs"] += n - sum(counts.values())
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    rows, i = [], 0
    for cls, _ in MIX:
        for j in range(counts[cls]):
            base = photos[i % len(photos)]
            if cls == "sam":
                size, quality = (2250, 1500), 95
            elif cls == "coco":
                size, quality = (640, 480), 90
            else:
                size, quality = LCS_SIZES[j % len(LCS_SIZES)], 90
            # a different crop of the photo per image, then the target size
            w, h = base.size
            dx, dy = (i * 37) % (w // 5), (i * 53) % (h // 5)
            img = base.crop((dx, dy, dx + w * 4 // 5, dy + h * 4 // 5)).resize(size, Image.BICUBIC)
            arr = np.asarray(img).astype(np.int16)
            # sensor-like noise: upscaled sample photos are smoother than real 1,500 px photographs
            noise = np.random.default_rng(i).normal(0, 3 if cls == "sam" else 2, arr.shape)
            img = Image.fromarray(np.clip(arr + noise, 0, 255).astype(np.uint8))
            path = os.path.join("images", f"{cls}_{i:05d}.jpg")
            img.save(os.path.join(folder, path), quality=quality)
            caption = ". ".join(f"Sentence {s} about {cls} photo {i} and its many visible details" for s in range(8)) + "."
            rows.append((path, caption))
            i += 1
    csv_path = os.path.join(folder, "pairs.csv")
    with open(csv_path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        w.writerows(rows)
    return csv_path, counts


def time_loader(train, preprocess, tokenizer, batch_size, preprocess_cfg, decode="exact"):
    from smartclip.data import DataConfig, build_train_data
    data = build_train_data(DataConfig(train=train, num_workers=0, decode=decode), preprocess=preprocess,
                            tokenizer=tokenizer, batch_size=batch_size, preprocess_cfg=preprocess_cfg)
    start, cpu = time.perf_counter(), time.process_time()
    n = sum(len(b["images"]) for b in data)
    return n / (time.perf_counter() - start), n / (time.process_time() - cpu)


def time_prepare(train, out, preprocess_cfg, image_format, store):
    from smartclip.data.prepare import prepare_dataset
    shutil.rmtree(out, ignore_errors=True)
    start, cpu = time.perf_counter(), time.process_time()
    result = prepare_dataset(train, out, preprocess_cfg=preprocess_cfg, workers=1, shard_size=10_000,
                             store=store, image_format=image_format, progress=False)
    n = result.manifest["written"]
    rate = (n / (time.perf_counter() - start), n / (time.process_time() - cpu))
    disk = sum(s["bytes"] for s in result.manifest["shards"]) / n * 1000
    return rate, disk


def draft_difference(csv_path, preprocess, preprocess_cfg):
    """Mean and max absolute difference (0-255 steps) between draft and exact decodes after the
    model's preprocessing, and the share of images the draft decode changed at all."""
    from smartclip.data import load_image
    from smartclip.data.prepared import image_recipe
    recipe = image_recipe(preprocess_cfg)
    std = np.asarray(preprocess_cfg["std"], dtype=np.float64).reshape(3, 1, 1) * 255
    root = os.path.dirname(csv_path)
    diffs, changed, total = [], 0, 0
    with open(csv_path) as f:
        for row in list(csv.reader(f))[1:]:
            path = os.path.join(root, row[0])
            exact = preprocess(load_image(path)).double().numpy()
            draft = preprocess(load_image(path, draft=(recipe["size"], recipe["resize_mode"]))).double().numpy()
            d = np.abs(exact - draft) * std
            diffs.append(d)
            changed += bool(d.max() > 0)
            total += 1
    all_d = np.concatenate([d.ravel() for d in diffs])
    return float(all_d.mean()), float(all_d.max()), changed, total


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
    ap.add_argument("--images", type=int, default=200)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
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
    preprocess_cfg = dict(model.preprocess_cfg)
    preprocess = smartclip.image_transform(model, train=False)  # what train.augment: false trains with
    tokenizer = smartclip.get_tokenizer(model)
    del model
    with tempfile.TemporaryDirectory() as tmp:
        csv_path, counts = make_mix(tmp, args.images)
        source_bytes = sum(os.path.getsize(os.path.join(tmp, "images", f)) for f in os.listdir(os.path.join(tmp, "images")))
        runs = {"originals": [], "originals, data.decode=draft": []}
        disk = {}
        for label, _, _ in STORES:
            runs[f"prepare ({label}), 1 worker"] = []
            runs[f"prepared ({label})"] = []
        for _ in range(args.rounds):
            runs["originals"].append(time_loader(csv_path, preprocess, tokenizer, args.batch_size, preprocess_cfg))
            runs["originals, data.decode=draft"].append(
                time_loader(csv_path, preprocess, tokenizer, args.batch_size, preprocess_cfg, decode="draft"))
            for label, fmt, store in STORES:
                out = os.path.join(tmp, f"prepared_{fmt}_{store}")
                rate, disk[label] = time_prepare(csv_path, out, preprocess_cfg, fmt, store)
                runs[f"prepare ({label}), 1 worker"].append(rate)
                runs[f"prepared ({label})"].append(
                    time_loader(out, preprocess, tokenizer, args.batch_size, preprocess_cfg))
        mean_d, max_d, changed, total = draft_difference(csv_path, preprocess, preprocess_cfg)
    base = statistics.median(r[0] for r in runs["originals"])
    base_cpu = statistics.median(r[1] for r in runs["originals"])
    print(f"{args.images} JPEGs ({counts['sam']} SAM 2250x1500, {counts['lcs']} LCS 336-600 px, {counts['coco']} COCO "
          f"640x480; {source_bytes / args.images * 1000 / 2**20:.0f} MiB per 1,000) -> {args.model} eval transform "
          f"({preprocess_cfg['size']} px), 248 tokens, batch {args.batch_size}, {args.rounds} round(s), one process, "
          f"torch threads 1, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}")
    print("| path | samples/s (wall) | samples per CPU-second | ratio to originals (CPU) | disk per 1,000 samples |\n"
          "|---|---|---|---|---|")
    for name, values in runs.items():
        wall = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        label = next((lb for lb, _, _ in STORES if f"({lb})" in name), None)
        size = f"{disk[label] / 2**20:.0f} MiB" if label and name.startswith("prepared") else (
            f"{source_bytes / args.images * 1000 / 2**20:.0f} MiB" if name == "originals" else "")
        ratio = f"{cpu / base_cpu:.2f}" if not name.startswith("prepare (") else ""
        print(f"| {name} | {wall:.0f} | {cpu:.0f} | {ratio} | {size} |")
    print(f"data.decode=draft vs exact, after preprocessing: mean |difference| {mean_d:.3f}, max {max_d:.0f} "
          f"(0-255 steps); {changed} of {total} images differ at all")


if __name__ == "__main__":
    sys.exit(main())
