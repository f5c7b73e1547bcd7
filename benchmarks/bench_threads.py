"""Training steps of configs/tiny.yaml under three thread settings, on a quiet machine and with
one busy background process, as ratios within one run.

    python benchmarks/bench_threads.py --steps 60

Settings (each run in a fresh process, so the OpenMP runtime reads its environment anew):

- ``default``: torch's own choice (one thread per logical CPU, OpenMP's default wait policy);
  ``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY`` and ``KMP_BLOCKTIME`` removed from the environment;
- ``omp1``: ``OMP_NUM_THREADS=1``, the README's old advice;
- ``smartclip``: what the ``smartclip`` command now chooses (``smartclip.threads.configure``).

Conditions: ``quiet`` (nothing else started by the benchmark) and ``busy`` (one background
process spinning on a core, like another job on a shared laptop). Runs are interleaved by
round, so a busy spell of the machine hits every setting alike; each setting's time is the
median over ``--rounds``. Each time is the wall time of ``smartclip.train.train`` (the
dataset written once beforehand, the model built inside), ``--steps`` steps with the
config's two DataLoader workers, no periodic evaluation, one final checkpoint.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = ("default", "omp1", "smartclip")
THREAD_VARIABLES = ("OMP_NUM_THREADS", "OMP_WAIT_POLICY", "KMP_BLOCKTIME", "MKL_NUM_THREADS")


def child(setting: str, steps: int, data: str, run_dir: str) -> dict:
    """One measurement, in this (fresh) process."""
    chosen = None
    if setting == "smartclip":
        from smartclip import threads
        chosen = threads.configure().describe()
    import torch
    from smartclip.train import load_config, train

    cfg = load_config(ROOT / "configs" / "tiny.yaml", [
        f"train.steps={steps}", f"run_dir={run_dir}", f"data.train={data}/train_long.csv", "eval.specs=[]",
        "eval.every_steps=0", "eval.at_end=false", "checkpoint.every_steps=0", f"train.log_every={steps}"])
    started = time.perf_counter()
    train(cfg)
    seconds = time.perf_counter() - started
    return {"setting": setting, "seconds": seconds, "torch_threads": torch.get_num_threads(),
            "chosen": chosen, "wait_policy": os.environ.get("OMP_WAIT_POLICY")}


def run_setting(setting: str, steps: int, data: str, work: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    env["HF_HUB_OFFLINE"] = "1"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    if setting == "omp1":
        env["OMP_NUM_THREADS"] = "1"
    run_dir = tempfile.mkdtemp(dir=work, prefix=f"run_{setting}_")
    out = subprocess.run([sys.executable, __file__, "--child", json.dumps([setting, steps, data, run_dir])],
                         capture_output=True, text=True, env=env, cwd=work)
    if out.returncode:
        raise RuntimeError(f"{setting}: exit {out.returncode}\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=60, help="training steps per measurement (default 60)")
    p.add_argument("--rounds", type=int, default=1, help="measurements per setting and condition (median counts)")
    p.add_argument("--conditions", nargs="+", default=["quiet", "busy"], choices=["quiet", "busy"])
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=SETTINGS)
    p.add_argument("--json", help="also write the measurements to this file")
    p.add_argument("--child", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(*json.loads(args.child))))
        return 0

    sys.path.insert(0, str(ROOT))
    from smartclip.scenes import write_dataset
    from smartclip.threads import available_cores, physical_cores

    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_threads_") as tmp:
        work = Path(tmp)
        data = str(work / "scenes")
        write_dataset(data)
        for condition in args.conditions:
            busy = None
            if condition == "busy":
                busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                for round_ in range(args.rounds):
                    for setting in args.settings:
                        row = run_setting(setting, args.steps, data, work)
                        row.update(condition=condition, round=round_)
                        rows.append(row)
                        print(f"{condition:>5} {setting:>9}: {row['seconds']:7.1f} s  "
                              f"({row['torch_threads']} torch threads, wait policy {row['wait_policy']})", flush=True)
            finally:
                if busy is not None:
                    busy.kill()
                    busy.wait()

    def median(condition, setting):
        times = [r["seconds"] for r in rows if r["condition"] == condition and r["setting"] == setting]
        return statistics.median(times) if times else None

    base = median(args.conditions[0], "default") if "default" in args.settings else None
    print(f"\n{args.steps} steps of configs/tiny.yaml; {available_cores()} cores available, "
          f"{physical_cores()} physical; median of {args.rounds} round(s)")
    print("| condition | setting | seconds | / default, same condition |" + (" / quiet default |" if base else ""))
    print("|---|---|---|---|" + ("---|" if base else ""))
    for condition in args.conditions:
        same = median(condition, "default")
        for setting in args.settings:
            t = median(condition, setting)
            cells = [condition, setting, f"{t:.1f}", f"{t / same:.2f}" if same else "-"]
            if base:
                cells.append(f"{t / base:.2f}")
            print("| " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
