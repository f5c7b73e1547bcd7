"""What the demo and the grid share: prepare the base, the data and the random-init checkpoint,
hand the runs to worker processes with a progress display (:func:`run_plan`), and summarise
the results over seeds."""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import numpy as np

from .base_model import logit_scale, random_init, shipped_base
from .finetune import RunResult, run_task
from .generator import write_dataset
from .plan import DemoConfig, DemoPaths, RunSpec, RunTask

__all__ = ["START_POINTS", "prepare", "run_plan", "summarise"]

START_POINTS = ("random init", "base")  # the columns evaluated without training


def prepare(cfg: DemoConfig, out: Path, log) -> DemoPaths:
    """The base (checked), the scene dataset and the random-init checkpoint under ``out``."""
    base = shipped_base() if cfg.base is None else Path(cfg.base)
    log(f"[demo] base model {base} (logit scale {logit_scale(base):.2f}); scene dataset in {out / 'data'}")
    data_dir = write_dataset(out / "data", seed=cfg.data_seed, num_train=cfg.num_train, num_test=cfg.num_test,
                             num_single=cfg.num_single, num_val=cfg.num_val, num_val_single=cfg.num_val_single,
                             image_size=cfg.image_size)
    return DemoPaths(out, data_dir, base, random_init(cfg.model, cfg.image_size, cfg.data_seed, out / "init"))


def run_plan(name: str, cfg: DemoConfig, out: Path, runs: Sequence[RunSpec], *, split: str,
             describe: Callable[[int], str], keep: Callable[[RunSpec], str], starts: bool,
             progress: bool, log) -> tuple[DemoPaths, Dict[str, RunResult]]:
    """Prepare ``out``, then (with ``starts``) evaluate the starting points and train and
    evaluate every run, in ``cfg.workers`` processes at most. ``describe(workers)`` is logged
    before the work; ``keep(run)`` says what of its checkpoints stays. Results by name."""
    import torch
    paths = prepare(cfg, out, log)
    start_tasks = [RunTask(cfg, paths, split, start=point) for point in START_POINTS] if starts else []
    run_tasks = [RunTask(cfg, paths, split, run=run, keep=keep(run)) for run in runs]
    workers = min(cfg.workers, len(run_tasks))
    log(describe(workers))
    done, bar = _progress(name, len(run_tasks) + len(start_tasks), progress, log)
    torch_threads = torch.get_num_threads()
    try:
        # the starting points first, in the same pool size; then every run
        results = _map_tasks(start_tasks, workers, done)
        results.update(_map_tasks(run_tasks, workers, done))
    finally:
        bar.close()
        torch.set_num_threads(torch_threads)
    return paths, results


def _map_tasks(tasks: List[RunTask], workers: int, on_done: Callable[[RunResult], None]) -> Dict[str, RunResult]:
    """:func:`run_task` over ``tasks`` in ``workers`` processes (in this one when 1); results by name."""
    results: Dict[str, RunResult] = {}
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            r = run_task(task)
            results[r.name] = r
            on_done(r)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(run_task, task) for task in tasks]
        for future in as_completed(futures):
            r = future.result()
            results[r.name] = r
            on_done(r)
    return results


def _progress(name: str, total: int, progress: bool, log):
    """``(on_done, bar)``: a bar on a terminal; elsewhere (a log file, CI) one line per finished run."""
    from tqdm.auto import tqdm
    on_terminal = progress and sys.stderr.isatty()
    bar = tqdm(total=total, desc=name, unit="run", disable=not on_terminal, dynamic_ncols=True)
    started, count = time.time(), [0]

    def on_done(result: RunResult):
        count[0] += 1
        if on_terminal:
            bar.set_postfix_str(f"done {result.name}")
            bar.update(1)
        elif progress:
            log(f"[{name}] {count[0]}/{total} done: {result.name} ({time.time() - started:.0f} s)")

    return on_done, bar


def summarise(per_seed: Dict[str, List[dict]]) -> Dict[str, Dict[str, dict]]:
    """``{group: {metric: {"mean", "std", "n", "values"}}}``; std is the sample std (ddof 1),
    0 for one seed."""
    out = {}
    for group, results in per_seed.items():
        keys = sorted({k for r in results for k in r})
        out[group] = {}
        for k in keys:
            values = [r[k] for r in results if k in r and r[k] is not None and math.isfinite(r[k])]
            if not values:
                continue
            out[group][k] = {"mean": float(np.mean(values)), "n": len(values), "values": values,
                             "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0}
    return out
