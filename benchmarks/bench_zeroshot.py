"""Zero-shot classification: `smartclip eval` against CLIP_benchmark's own command, same model
and data, in one run.

    .venv/bin/python benchmarks/bench_zeroshot.py                   # 3,000 images, smartclip-tiny, CPU
    .venv/bin/python benchmarks/bench_zeroshot.py --model smartclip-small --device cuda --images 5000

The fixture is CLIP_benchmark's WebDataset layout (``wds_country211``: 4 shards,
``classnames.txt`` with country211's 211 class names, its 5 templates) holding real images
that ship in wheels (scikit-learn's digits and scikit-image's photos, cropped and resized to
several sizes; labels cycle through the 211 classes). The model is a random-weight
``smartclip`` model saved as a checkpoint and exported with ``smartclip export --format
open_clip``, so both tools load the same weights:

- ours: ``smartclip eval --model CKPT --benchmarks clip_benchmark/wds/country211:DIR``;
- CLIP_benchmark: ``clip_benchmark eval --dataset wds/country211 --dataset_root DIR
  --model local-dir:EXPORT --pretrained '' --no_amp`` (fp32 like ours). Its ``accuracy``
  helper fails under numpy 2 after all the work is done, so the command runs with that one
  helper replaced by a numpy-2-safe one of the same definition.

Both run as fresh processes (start-up, model loading, dataset construction, prompt and
image encoding, metrics), with the same batch size, loader workers and torch threads,
alternating, ``--repeats`` times each; the ratio of the medians is reported, and the two
top-1 accuracies are checked to agree. Results go to ``benchmarks/results_zeroshot_<device>.json``.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

# CLIP_benchmark's `clip_benchmark eval` with its numpy-2-breaking top-k helper swapped for one of
# the same definition (top-k of the logits, fraction of targets among them)
CLIP_BENCHMARK_COMMAND = """
import sys
import clip_benchmark.metrics.zeroshot_classification as zc
def accuracy(output, target, topk=(1,)):
    pred = output.topk(max(topk), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]
zc.accuracy = accuracy
from clip_benchmark.cli import main
sys.argv = ["clip_benchmark"] + sys.argv[1:]
main()
"""


def _images(n: int):
    """``n`` real images: digits at 3 sizes and photo crops, cycling."""
    import numpy as np
    from PIL import Image
    from skimage import data
    from sklearn.datasets import load_digits
    digits = load_digits().images
    photos = [getattr(data, name)() for name in ("astronaut", "coffee", "chelsea", "rocket")]
    for i in range(n):
        if i % 4 == 3:
            photo = photos[(i // 4) % len(photos)]
            h, w = photo.shape[:2]
            k = (i // 16) % 8
            crop = photo[k * h // 16: h - k * h // 32, k * w // 16: w - k * w // 32]
            yield Image.fromarray(np.ascontiguousarray(crop)).resize((96, 96))
        else:
            pixels = (digits[i % len(digits)] * (255 / 16)).astype("uint8")
            yield Image.fromarray(pixels).resize((32 * (1 + i % 3),) * 2, Image.BICUBIC).convert("RGB")


def write_fixture(root: Path, n: int, shards: int = 4) -> None:
    import clip_benchmark.datasets
    package = Path(clip_benchmark.datasets.__file__).parent
    classnames = json.loads((package / "en_classnames.json").read_text())["country211"]
    templates = json.loads((package / "en_zeroshot_classification_templates.json").read_text())["country211"]
    (root / "test").mkdir(parents=True)
    (root / "classnames.txt").write_text("\n".join(classnames) + "\n")
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    tars = [tarfile.open(root / "test" / f"{s}.tar", "w") for s in range(shards)]
    for i, image in enumerate(_images(n)):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        for name, payload in ((f"{i:06d}.jpg", buffer.getvalue()), (f"{i:06d}.cls", str(i % len(classnames)).encode())):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tars[i * shards // n].addfile(info, io.BytesIO(payload))
    for tar in tars:
        tar.close()


def _timed(command, env) -> float:
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smartclip-tiny", help="model config (random weights)")
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1, help="image-loading processes, both tools")
    parser.add_argument("--threads", type=int, default=2, help="torch threads, both tools")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", default=None, help="folder for fixture, model and outputs (default: a temp dir)")
    args = parser.parse_args(argv)

    import torch
    import smartclip
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-zeroshot-"))
    data = work / "wds_country211"
    if not data.exists():
        write_fixture(data, args.images)
    torch.manual_seed(0)
    model = smartclip.create_model(args.model).eval()
    checkpoint = smartclip.save_checkpoint(model, work / "model", overwrite=True)  # --work is reused
    export = smartclip.export(model, work / "open_clip", format="open_clip")

    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads),
           "HF_HUB_OFFLINE": "1", "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")])}
    if args.device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""  # CLIP_benchmark picks CUDA whenever it sees one
    spec = f"clip_benchmark/wds/country211:{data}"
    ours = [sys.executable, "-m", "smartclip", "eval", "--model", str(checkpoint), "--benchmarks", spec,
            "--set", f"{spec}.expected_images=null", "--batch-size", str(args.batch_size),
            "--workers", str(args.workers), "--device", args.device, "--no-progress", "--out", str(work / "ours"),
            "--overwrite"]  # each repeat writes the same results file
    theirs = [sys.executable, "-c", CLIP_BENCHMARK_COMMAND, "eval", "--dataset", "wds/country211",
              "--dataset_root", str(data), "--model", f"local-dir:{export}", "--pretrained", "",
              "--task", "zeroshot_classification", "--batch_size", str(args.batch_size),
              "--num_workers", str(args.workers), "--no_amp", "--quiet", "--output", str(work / "theirs.json")]
    times = {"smartclip eval": [], "clip_benchmark eval": []}
    for _ in range(args.repeats):
        times["clip_benchmark eval"].append(_timed(theirs, env))
        times["smartclip eval"].append(_timed(ours, env))
    our_result = json.loads(next((work / "ours").glob("eval_*.json")).read_text())["results"][spec]
    their_result = json.loads((work / "theirs.json").read_text())["metrics"]
    median = {k: statistics.median(v) for k, v in times.items()}
    ratio = median["smartclip eval"] / median["clip_benchmark eval"]
    report = {"model": args.model, "device": args.device, "images": our_result["counts"]["images"],
              "classes": our_result["counts"]["classes"], "templates": our_result["counts"]["templates"],
              "batch_size": args.batch_size, "workers": args.workers, "threads": args.threads,
              "seconds": times, "median_seconds": median, "ratio_ours_over_clip_benchmark": ratio,
              "top1_ours": our_result["metrics"]["top1"], "top1_clip_benchmark": 100 * their_result["acc1"],
              "command": "python benchmarks/bench_zeroshot.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    if abs(report["top1_ours"] - report["top1_clip_benchmark"]) > 1e-4:
        raise RuntimeError(f"the two tools disagree: {report}")
    lines = [f"#### Zero-shot classification, {report['images']} images, {report['classes']} classes x "
             f"{report['templates']} templates ({args.model}, {args.device}, batch {args.batch_size}, "
             f"{args.workers} loader worker(s), {args.threads} threads)", "",
             "| command | runs (s) | median (s) |", "|---|---|---|"]
    for name, values in times.items():
        lines.append(f"| {name} | {', '.join(f'{v:.1f}' for v in values)} | {median[name]:.1f} |")
    lines += ["", f"smartclip eval / clip_benchmark eval: {ratio:.2f} (top-1 {report['top1_ours']:.2f} % in both)"]
    print("\n".join(lines))
    out = HERE / f"results_zeroshot_{args.device.split(':')[0]}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
