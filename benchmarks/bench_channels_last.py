"""What ``train.channels_last`` saves on the demo's fine-tuning step.

The demo fine-tunes its shipped base model (a ResNet image tower, 64 px) at batch 64. This times
one training step (forward, loss, backward, AdamW) of that model for ``objective=clip`` and
``objective=smartclip``, with convolution weights and images in the default (contiguous) memory
order and in channels-last order. Every configuration runs in its own fresh process, all of them
interleaved round by round; the least of all timed steps counts. On a CPU the ratio is of the
process's CPU time with one thread (the step's own work, which other jobs on a shared machine
do not inflate the way they inflate wall time).

    python benchmarks/bench_channels_last.py --rounds 3
"""
from __future__ import annotations

import argparse
import json
import sys

from bench_train import caption_tokens, in_fresh_process, time_step


def measure(objective: str, channels_last: bool, batch: int, steps: int, threads: int) -> dict:
    """One configuration, in this process: the fastest step's wall and CPU seconds."""
    import torch
    import smartclip
    from smartclip.scenes.demo import BASE_DIR

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = smartclip.create_model(str(BASE_DIR)).float().train()
    images = torch.randn(batch, 3, *model.image_size)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    tokens = caption_tokens(smartclip.get_tokenizer(model), batch, "long")
    r = time_step(model, objective, images, tokens, None, steps)
    return {"objective": objective, "channels_last": channels_last, "batch": batch,
            "s_per_step": min(r["times"]), "cpu_s_per_step": min(r["cpu_times"]), "threads": threads}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64, help="images per step (the demo's is 64)")
    p.add_argument("--steps", type=int, default=3, help="timed steps per process (after one warm-up)")
    p.add_argument("--rounds", type=int, default=2, help="fresh processes per configuration, interleaved")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the demo's workers use 1)")
    p.add_argument("--json", help="also write the rows to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(measure(**json.loads(args.child))))
        return 0
    configs = [(objective, cl) for objective in ("clip", "smartclip") for cl in (False, True)]
    best: dict = {}
    for _ in range(args.rounds):  # interleaved, so a busy spell on a shared machine hits all alike
        for objective, cl in configs:
            r = in_fresh_process(__file__, {"objective": objective, "channels_last": cl, "batch": args.batch,
                                            "steps": args.steps, "threads": args.threads})
            if (objective, cl) in best:
                r.update({k: min(r[k], best[objective, cl][k]) for k in ("s_per_step", "cpu_s_per_step")})
            best[objective, cl] = r
    print(f"demo base model, batch {args.batch}, CPU, {args.threads} thread(s), best of {args.rounds} x "
          f"{args.steps} steps; ratio of CPU s/step to the default memory order")
    print(f"{'objective':<11}{'memory order':<15}{'s/step':>8}{'CPU s/step':>12}{'ratio':>7}")
    for (objective, cl), r in best.items():
        ratio = r["cpu_s_per_step"] / best[objective, False]["cpu_s_per_step"]
        print(f"{objective:<11}{'channels-last' if cl else 'default':<15}{r['s_per_step']:>8.3f}"
              f"{r['cpu_s_per_step']:>12.3f}{ratio:>7.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(list(best.values()), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
