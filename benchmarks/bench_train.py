"""What SmartCLIP's training step costs against CLIP's, and what gradient caching saves.

For each model and batch size, one training step (forward, loss, backward, AdamW) is timed
for ``objective=clip`` and ``objective=smartclip`` at identical settings, plus
``smartclip`` with gradient caching (``micro_batch = batch / 4``). Every configuration runs
in its own fresh process so peak memory is its own: ``torch.cuda.max_memory_allocated`` on a
GPU, the growth of the peak resident set (``ru_maxrss``) over the state before the first
step on a CPU. Results are ratios against ``clip`` measured in the same run: of wall time on a
GPU, of the process's CPU time on a CPU (one thread by default, so CPU time is the step's own
work, which other jobs on a shared machine do not inflate the way they inflate wall time).

Two kinds of caption (``--captions``), because CLIP's text tower stops at the batch's longest
caption while SmartCLIP's, as released, reads all 248 positions (its mask network attends to
padding):

* ``short``: one 63-token caption for every row (CLIP runs 63 positions);
* ``long``: ShareGPT4V-like lengths, drawn uniformly from 100 to 240 tokens (seed 0), so the
  batch's longest caption, and CLIP's text length, is close to SmartCLIP's 248.

    python benchmarks/bench_train.py --model smartclip-tiny --batch 32 --model ViT-B-16 --batch 8
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

CAPTION = ("A wooden desk by a window holds an open laptop, a white mug of coffee and a stack of books. "
           "A green plant in a clay pot stands on the left, and a black cat sleeps on a folded blanket. "
           "Sunlight falls across the floor, and a bicycle leans against the wall behind the desk.")
# words for long captions; each row is a window of this text at its own offset and length
SCENE = ("The photograph shows a busy street market at dusk under strings of warm yellow lights. "
         "In the foreground a woman in a red coat holds a paper bag of oranges and talks to a vendor. "
         "The vendor wears a grey apron and stands behind a wooden stall stacked with apples, pears and lemons. "
         "To the left a boy on a blue bicycle waits beside a striped umbrella with a small brown dog on a leash. "
         "Behind them a row of brick buildings has tall windows, green shutters and flower boxes full of geraniums. "
         "A tram with a white roof passes in the background, and its headlights reflect on the wet cobblestones. "
         "On the right an old man sits on a bench reading a newspaper, with a cup of tea on the seat beside him. "
         "Two pigeons peck at crumbs near his feet, and a chalkboard sign advertises fresh bread and cheese. "
         "The sky is deep blue with a few pink clouds, and the top of a church tower is visible above the roofs. "
         "Overall the scene feels lively and cosy, with many small details of everyday city life.")
LONG_LENGTHS = (100, 240)  # tokens per caption, start and end tokens included
CAPTION_KINDS = ("short", "long")


def caption_tokens(tokenizer, n: int, kind: str, seed: int = 0):
    """Tokens [n, context] for ``n`` captions: ``short`` (CAPTION in every row) or ``long``
    (ShareGPT4V-like: lengths uniform in LONG_LENGTHS, each row a different window of SCENE)."""
    import torch
    if kind == "short":
        return tokenizer([CAPTION] * n)
    if kind != "long":
        raise ValueError(f"caption kind must be one of {CAPTION_KINDS}, got {kind!r}")
    ids = tokenizer.encode(SCENE)
    lengths = torch.randint(LONG_LENGTHS[0], LONG_LENGTHS[1] + 1, (n,), generator=torch.Generator().manual_seed(seed))
    tokens = torch.zeros(n, tokenizer.context_length, dtype=torch.long)
    for row, length in enumerate(lengths.tolist()):
        length = min(length, tokenizer.context_length)
        start = (37 * row) % len(ids)
        body = (ids[start:] + ids)[:length - 2]
        tokens[row, :length] = torch.tensor([tokenizer.sot_token_id, *body, tokenizer.eot_token_id])
    return tokens


def _rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def time_step(model, objective: str, images, tokens, micro_batch, steps: int, autocast=None) -> dict:
    """Seconds of ``steps`` training steps (after one warm-up) and the peak memory they need above
    what exists before the first: the model and the batch (GPU: ``max_memory_allocated``; CPU: the
    peak resident set, meaningful only in a fresh process). ``model`` is trained in place."""
    import contextlib
    import torch
    from smartclip.train import ContrastiveStep, LossConfig, OptimConfig, build_loss, build_optimizer

    device = images.device
    model.mask_net.requires_grad_(objective == "smartclip")
    model.logit_scale.requires_grad_(False)
    index = torch.arange(images.shape[0], device=device)
    opt = build_optimizer(model, OptimConfig())
    step = ContrastiveStep(model, build_loss(objective, LossConfig()), objective=objective, micro_batch=micro_batch,
                           autocast=autocast or contextlib.nullcontext)
    cuda = device.type == "cuda"
    sync = (lambda: torch.cuda.synchronize(device)) if cuda else (lambda: None)

    def one():
        opt.zero_grad(set_to_none=True)
        step(images, tokens, index)
        opt.step()

    if cuda:
        sync()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = _rss_mib()
    one()  # warm-up; also allocates the optimizer state, part of a step's real footprint
    sync()
    times, cpu_times = [], []
    for _ in range(steps):
        start, cpu_start = time.perf_counter(), time.process_time()
        one()
        sync()
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
    out = {"times": times, "cpu_times": cpu_times, "text_positions": int(tokens.argmax(-1).max()) + 1}
    if cuda:
        peak = torch.cuda.max_memory_allocated(device)
        out.update(peak_mib=(peak - base) / 2 ** 20, peak_total_mib=peak / 2 ** 20)
    else:
        out["peak_mib"] = _rss_mib() - base
    opt.zero_grad(set_to_none=True)
    return out


def measure(model_name: str, batch: int, objective: str, micro_batch, steps: int, device: str,
            captions: str = "short", threads: int = 1) -> dict:
    """One configuration, in this process: seconds per step and peak memory of the step."""
    import torch
    import smartclip

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = smartclip.create_model(model_name, device=device).train()
    tokens = caption_tokens(smartclip.get_tokenizer(model), batch, captions).to(device)
    images = torch.randn(batch, 3, *model.image_size, device=device)
    r = time_step(model, objective, images, tokens, micro_batch, steps)
    seconds = min(r["times"])  # the least disturbed step: other processes only ever add time
    return {"model": model_name, "batch": batch, "objective": objective, "micro_batch": micro_batch,
            "captions": captions, "text_positions": r["text_positions"], "s_per_step": seconds,
            "cpu_s_per_step": min(r["cpu_times"]), "samples_per_s": batch / seconds, "peak_mib": r["peak_mib"],
            "threads": torch.get_num_threads(), "device": device}


def in_fresh_process(script: str, args: dict) -> dict:
    """``python script --child ARGS`` (a benchmark measuring one configuration), its last output
    line read as JSON: each configuration gets a process of its own, so its peak memory is its own."""
    cmd = [sys.executable, script, "--child", json.dumps(args)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="model name (repeat, paired with --batch)")
    p.add_argument("--batch", action="append", type=int, help="images per step for the --model at the same position")
    p.add_argument("--captions", nargs="+", choices=CAPTION_KINDS, default=list(CAPTION_KINDS),
                   help="caption lengths to measure (default: both)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per configuration (after one warm-up); the fastest counts")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per configuration, interleaved")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 is steadiest on a shared machine: idle threads of a busy one spin)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    models = args.model or ["smartclip-tiny"]
    batches = args.batch or [32] * len(models)
    if len(batches) != len(models):
        p.error("give one --batch per --model")
    for batch in batches:
        if batch % 4:
            p.error(f"--batch {batch}: must be divisible by 4 (gradient caching uses batch / 4)")
    rows = []
    for model, batch in zip(models, batches):
        common = {"model_name": model, "batch": batch, "steps": args.steps, "device": args.device,
                  "threads": args.threads}
        configs = {(captions, name): (captions, objective, micro) for captions in args.captions
                   for name, objective, micro in (("clip", "clip", None), ("smartclip", "smartclip", None),
                                                  (f"smartclip, micro_batch={batch // 4}", "smartclip", batch // 4))}
        best = {}
        for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits all alike
            for key, (captions, objective, micro) in configs.items():
                r = in_fresh_process(__file__, {**common, "captions": captions, "objective": objective, "micro_batch": micro})
                if key in best:  # the least disturbed of all rounds, for each measure on its own
                    r.update({k: min(r[k], best[key][k]) for k in ("s_per_step", "cpu_s_per_step", "peak_mib")})
                    r["samples_per_s"] = batch / r["s_per_step"]
                best[key] = r
        rows += list(best.values())
        # on a CPU the ratios use the process's CPU time: with one thread it is the step's own work,
        # which other processes on a shared machine cannot inflate the way they inflate wall time
        cost = "cpu_s_per_step" if args.device == "cpu" else "s_per_step"
        for captions in args.captions:
            (_, clip), (_, smart), (_, cached) = [(k, r) for k, r in best.items() if k[0] == captions]
            print(f"\n{model}, batch {batch}, {captions} captions (text positions: clip {clip['text_positions']}, "
                  f"smartclip 248), {args.device} ({clip['threads']} threads), best of {args.rounds} x "
                  f"{args.steps} steps; ratios of {cost}")
            print(f"{'configuration':<34}{'samples/s':>10}{'s/step':>9}{'CPU s/step':>11}{'peak MiB':>10}"
                  f"{'time vs clip':>14}{'memory vs clip':>16}")
            for (_, name), r in ((k, r) for k, r in best.items() if k[0] == captions):
                print(f"{name:<34}{r['samples_per_s']:>10.2f}{r['s_per_step']:>9.3f}{r['cpu_s_per_step']:>11.3f}"
                      f"{r['peak_mib']:>10.0f}{r[cost] / clip[cost]:>14.2f}{r['peak_mib'] / clip['peak_mib']:>16.2f}")
            print(f"gradient caching: peak memory {cached['peak_mib'] / smart['peak_mib']:.2f}x and time "
                  f"{cached[cost] / smart[cost]:.2f}x of the full-batch smartclip step")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
