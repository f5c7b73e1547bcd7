"""Benchmark of evaluation: encoding throughput and chunked Recall@K at Flickr30k-full scale.

    .venv/bin/python benchmarks/bench_eval.py            # everything (about 10 min on 2 busy CPU cores)
    .venv/bin/python benchmarks/bench_eval.py --quick    # smaller recall sizes, smaller model

1. Image encoding, images/s through ``smartclip.eval.encode_images`` (preprocessing from
   in-memory PIL images included), random weights.
2. Zero-shot prompt encoding (class names x OpenAI's 80 templates) at context 248:
   ``encode_texts`` (length-sorted batches, trimmed padding) against encoding every
   prompt at all 248 positions (``trim=False``), both timed with tokenisation, batches of
   256. Also reports the largest difference between the two.
3. Recall@1/5/10 at Flickr30k-full scale (158,915 captions x 31,783 images, 512-d random
   features): ``retrieval_recall`` (chunked), time and peak memory beyond the inputs. The
   full-matrix reference ``retrieval_recall_dense`` is run at a size that fits, next to
   the chunked version at that size.

Each recall measurement runs in a fresh subprocess; memory is the growth of the process's
resident-set high-water mark (VmHWM, reset after the features are built) during the call.
Results are ratios within one run: the machine is shared and absolute times are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import torch

FLICKR_FULL = (31_783, 158_915)


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm() -> int:
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM")).split()[1]) * 1024


def recall_child(kind: str, n_images: int, n_texts: int, dim: int) -> dict:
    from smartclip.eval import retrieval_recall, retrieval_recall_dense
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_images, dim, generator=g)
    t2i = torch.arange(n_texts) % n_images
    texts = torch.randn(n_texts, dim, generator=g).mul_(4.0).add_(images[t2i])
    base = _rss()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    start = time.perf_counter()
    fn = retrieval_recall if kind == "chunked" else retrieval_recall_dense
    result = fn(images, texts, t2i)
    seconds = time.perf_counter() - start
    return {"kind": kind, "images": n_images, "texts": n_texts, "dim": dim, "seconds": seconds,
            "extra_mib": (_hwm() - base) / 2**20, "inputs_mib": (images.numel() + texts.numel()) * 4 / 2**20,
            "t2i@1": result["t2i@1"], "i2t@10": result["i2t@10"]}


def run_child(*args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", *map(str, args)], capture_output=True, text=True,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_encoding(model_name: str, n_images: int, n_classes: int) -> dict:
    import smartclip
    from smartclip.eval import encode_images, encode_texts
    from smartclip.eval.zeroshot import format_prompts, imagenet_classnames, openai_templates
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from conftest import real_images
    torch.manual_seed(0)
    model = smartclip.create_model(model_name).eval()
    preprocess, tokenizer = smartclip.image_transform(model), smartclip.get_tokenizer(model)
    images = real_images(n_images, 256)
    encode_images(model, preprocess, images[:8], batch_size=8)  # warm-up
    start = time.perf_counter()
    encode_images(model, preprocess, images, batch_size=32)
    image_rate = n_images / (time.perf_counter() - start)

    prompts = format_prompts(imagenet_classnames()[:n_classes], openai_templates())
    start = time.perf_counter()
    trimmed = encode_texts(model, tokenizer, prompts, batch_size=256)  # tokenises inside
    t_trim = time.perf_counter() - start
    start = time.perf_counter()
    tokens = tokenizer(prompts)  # both timings include tokenisation
    with torch.no_grad():
        full = torch.cat([model.encode_text(tokens[i:i + 256], trim=False) for i in range(0, len(prompts), 256)])
    t_full = time.perf_counter() - start
    return {"model": model_name, "image_size": model.image_size[0], "images_per_s": image_rate,
            "prompts": len(prompts), "prompts_per_s_trimmed": len(prompts) / t_trim,
            "prompts_per_s_full": len(prompts) / t_full, "trim_speedup": t_full / t_trim,
            "max_abs_diff": float((trimmed - full).abs().max()),
            "mean_tokens": float((tokens != 0).sum(1).float().mean())}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--child", nargs=4, metavar=("KIND", "IMAGES", "TEXTS", "DIM"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, n_i, n_t, dim = args.child
        print(json.dumps(recall_child(kind, int(n_i), int(n_t), int(dim))))
        return
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    model_name = "smartclip-tiny" if args.quick else "smartclip-small"
    enc = bench_encoding(model_name, 64 if args.quick else 256, 10 if args.quick else 50)
    print("## Encoding\n")
    print(f"model {enc['model']} ({enc['image_size']} px), random weights, {torch.get_num_threads()} threads\n")
    print("| measure | value |\n|---|---|")
    print(f"| images/s (encode_images, preprocessing included) | {enc['images_per_s']:.1f} |")
    print(f"| zero-shot prompts/s, trimmed + length-sorted ({enc['prompts']} prompts, mean "
          f"{enc['mean_tokens']:.1f} tokens) | {enc['prompts_per_s_trimmed']:.1f} |")
    print(f"| zero-shot prompts/s, all 248 positions | {enc['prompts_per_s_full']:.1f} |")
    print(f"| speed-up from trimming | {enc['trim_speedup']:.1f}x (max abs diff {enc['max_abs_diff']:.1e}) |")

    dim = 512
    small = (4_000, 20_000) if not args.quick else (2_000, 10_000)
    full = FLICKR_FULL if not args.quick else (8_000, 40_000)
    rows = [run_child("dense", *small, dim), run_child("chunked", *small, dim), run_child("chunked", *full, dim)]
    print("\n## Recall@1/5/10, 512-d random features\n")
    print("| method | images x texts | inputs MiB | time s | peak extra MiB | full score matrix would be MiB |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        matrix = r["images"] * r["texts"] * 4 / 2**20
        print(f"| {r['kind']} | {r['images']:,} x {r['texts']:,} | {r['inputs_mib']:.0f} | {r['seconds']:.1f} | "
              f"{r['extra_mib']:.0f} | {matrix:,.0f} |")
    d, c = rows[0], rows[1]
    assert d["t2i@1"] == c["t2i@1"] and d["i2t@10"] == c["i2t@10"], "chunked and dense disagree"
    print(f"\nat {d['images']:,} x {d['texts']:,}: chunked / dense time {c['seconds'] / d['seconds']:.2f}, "
          f"memory {c['extra_mib'] / max(d['extra_mib'], 1):.2f} (same metrics)")


if __name__ == "__main__":
    main()
