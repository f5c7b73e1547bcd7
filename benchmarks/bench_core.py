"""Benchmark of the core library: the modular loss and trimmed text encoding.

    .venv/bin/python benchmarks/bench_core.py            # all of it (a few minutes on 2 CPU cores)
    .venv/bin/python benchmarks/bench_core.py --quick    # N = 256 only

1. Loss forward + backward at global batch N and embedding size d, one process:
   ``ours``  smartclip.loss.modular_contrastive_loss (matrix products),
   ``direct`` docs/method.md §3 written literally with the [N, N, d] tensor (what the released code does),
   ``clip``  open_clip's ClipLoss (the floor: one N x N similarity matrix).
   Each configuration runs in a fresh subprocess; memory is that process's peak resident set
   growth during the step (ru_maxrss), time is the median of repeats. On CUDA the script
   reports torch.cuda.max_memory_allocated instead.
2. Text encoding of short prompts at context 248 with and without trimming (ViT-B/16 text
   tower, random weights).

Results are ratios inside one run: the machine is shared and absolute times are noisy.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch

DIRECT_LIMIT = 300_000_000  # N * N * d elements above which the direct formula is not run here


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _direct(z, t, m, scale=100.0, eps=1e-6):
    tn = t / t.norm(dim=-1, keepdim=True)
    zm = z[:, None, :] * m[None, :, :]
    u = zm / zm.norm(dim=-1, keepdim=True).clamp_min(eps)
    labels = torch.arange(z.shape[0], device=z.device)
    sidm = scale * (u * tn[None]).sum(-1)
    dism = scale * (u.transpose(0, 1) * tn[:, None]).sum(-1)
    return torch.nn.functional.cross_entropy(sidm, labels) + torch.nn.functional.cross_entropy(dism, labels)


def run_loss_case(method: str, n: int, d: int, repeats: int, device: str) -> dict:
    from open_clip.loss import ClipLoss
    from smartclip.loss import modular_contrastive_loss
    from smartclip.model import straight_through_mask

    g = torch.Generator().manual_seed(0)
    z0, t0, l0 = (torch.randn(n, d, generator=g).to(device) for _ in range(3))
    clip_loss = ClipLoss()

    def step():
        z, t, logits = (x.clone().requires_grad_(True) for x in (z0, t0, l0))
        if method == "clip":
            zn, tn = torch.nn.functional.normalize(z, dim=-1), torch.nn.functional.normalize(t, dim=-1)
            loss = 2 * clip_loss(zn, tn, logit_scale=torch.tensor(100.0, device=device))
        else:
            m = straight_through_mask(torch.sigmoid(logits))
            if method == "ours":
                out = modular_contrastive_loss(z, t, m)
                loss = out["sidm"] + out["dism"]
            else:
                loss = _direct(z, t, m)
        loss.backward()
        return loss

    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    rss_before = _rss_mb()  # inputs exist; everything above this is the step's working memory
    step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        if device == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = max(0.0, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss_before)
    times.sort()
    return {"method": method, "N": n, "d": d, "seconds": times[len(times) // 2], "peak_mb": peak}


def loss_table(sizes, dims, repeats, device):
    rows = []
    for d in dims:
        for n in sizes:
            for method in ("clip", "ours", "direct"):
                if method == "direct" and n * n * d > DIRECT_LIMIT:
                    gb = 4 * n * n * d / 2**30
                    rows.append({"method": method, "N": n, "d": d, "seconds": None, "peak_mb": None,
                                 "note": f"not run: each [N,N,d] float32 tensor is {gb:.1f} GiB"})
                    continue
                cmd = [sys.executable, __file__, "--threads", str(torch.get_num_threads()),
                       "--case", f"{method},{n},{d},{repeats},{device}"]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
                print(f"  {method:>6} N={n:<5} d={d:<4} {rows[-1]['seconds']:.4f}s  {rows[-1]['peak_mb']:.0f} MB",
                      file=sys.stderr)
    return rows


def text_encoding(batch: int, repeats: int):
    import smartclip
    torch.manual_seed(0)
    model = smartclip.create_model("ViT-B-16").eval()
    tok = smartclip.get_tokenizer(model)
    classes = ["cat", "dog", "golden retriever", "fire truck", "goldfish", "tabby cat", "sports car", "tree frog"]
    tokens = tok([f"a photo of a {classes[i % len(classes)]}." for i in range(batch)])
    result = {}
    with torch.no_grad():
        for trim in (False, True):
            model.encode_text(tokens, trim=trim)
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                model.encode_text(tokens, trim=trim)
                times.append(time.perf_counter() - start)
            result["trimmed" if trim else "full_248"] = sorted(times)[len(times) // 2]
        diff = (model.encode_text(tokens, trim=True) - model.encode_text(tokens, trim=False)).abs().max().item()
    result.update(batch=batch, max_abs_difference=diff, speedup=result["full_248"] / result["trimmed"],
                  trimmed_length=int(tokens.argmax(-1).max()) + 1)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="N = 256 only")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--out", default=None, help="write the results as JSON here")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is steadiest on a shared machine)")
    p.add_argument("--case", help=argparse.SUPPRESS)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    if args.case:
        method, n, d, repeats, device = args.case.split(",")
        print(json.dumps(run_loss_case(method, int(n), int(d), int(repeats), device)))
        return
    sizes = [256] if args.quick else [256, 512, 1024]
    rows = loss_table(sizes, [512, 768], args.repeats, args.device)
    text = text_encoding(batch=32, repeats=args.repeats)

    print(f"\nLoss forward+backward, one process, device={args.device} (time: median of {args.repeats}; "
          "memory: peak growth during the step)\n")
    print("| N | d | ClipLoss s | ours s | direct s | ours / ClipLoss time | ClipLoss MB | ours MB | direct MB |")
    print("|---|---|---|---|---|---|---|---|---|")
    by = {(r["method"], r["N"], r["d"]): r for r in rows}
    for d in (512, 768):
        for n in sizes:
            c, o, x = by[("clip", n, d)], by[("ours", n, d)], by[("direct", n, d)]
            xs = f"{x['seconds']:.4f}" if x["seconds"] is not None else "not run"
            xm = f"{x['peak_mb']:.0f}" if x["peak_mb"] is not None else x["note"].split(": ")[1]
            print(f"| {n} | {d} | {c['seconds']:.4f} | {o['seconds']:.4f} | {xs} | "
                  f"{o['seconds'] / c['seconds']:.2f} | {c['peak_mb']:.0f} | {o['peak_mb']:.0f} | {xm} |")
    print(f"\nText encoding, ViT-B/16 text tower, {text['batch']} short prompts at context 248: "
          f"full {text['full_248']:.3f}s, trimmed to {text['trimmed_length']} tokens {text['trimmed']:.3f}s, "
          f"speed-up {text['speedup']:.1f}x, max |difference| {text['max_abs_difference']:.1e}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"loss": rows, "text_encoding": text, "device": args.device}, f, indent=2)


if __name__ == "__main__":
    main()
