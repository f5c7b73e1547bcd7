"""``smartclip demo``: CLIP against SmartCLIP on the embedded scene benchmark, on a CPU.

The paper fine-tunes a pretrained CLIP at that model's own temperature; the demo does the same
at toy scale:

1. write the scene dataset (``smartclip.scenes``);
2. start from the **base model**: a tiny CLIP pretrained with the standard CLIP objective on
   short captions of separate pretraining scenes (the analogue of the OpenAI checkpoint).
   It ships with the package (``smartclip/scenes/base``, fp16, its SHA-256 checked before
   use) and :func:`~smartclip.scenes.base_model.build_base` rebuilds it
   (``smartclip demo --build-base DIR``);
3. **fine-tune** it, with the same data, steps, learning rates and seeds, under two caption
   regimes (``short``: partial captions; ``long``: long captions with the paper's
   sentence-prefix sampling): CLIP (learned temperature, the Long-CLIP analogue), SmartCLIP
   (the modular loss with the released sparsity term, at the base's own temperature), and two
   controls: the modular loss with the mask forced to all ones, and SmartCLIP at the fixed
   scale 100 (what the paper's number does to a model trained at another temperature);
4. optionally (``scratch=True``) train CLIP and SmartCLIP **from scratch** on long captions;
5. evaluate every checkpoint with :class:`smartclip.scenes.evaluate.SceneBenchmark`, follow
   the mask metrics during fine-tuning, and write ``results.json``, ``report.md`` and plots.

Runs are independent processes (``workers``, one thread each: two on a 2-core machine). A run
already complete in ``out_dir`` is reused; an interrupted one is run again (from its latest
checkpoint when it has one). Every value is fixed in :class:`DemoConfig`, with its reason in
docs/demo.md.

The rooms: :mod:`.plan` (settings, runs, training configs), :mod:`.base_model` (the shipped
base), :mod:`.finetune` (one run in a worker), :mod:`.runner` (what the demo and the grid
share), this module (the demo) and :mod:`.grid` (the ablation grid). The names below are
importable from here.
"""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from smartclip.fileio import sha256_file

from . import report as demo_report
from .base_model import BASE_DIR, BASE_SHA256, build_base, logit_scale, pretraining_captions, shipped_base
from .finetune import RunResult
from .grid import run_grid, summarise_grids
from .plan import (DEMO_MODEL, METHODS, BaseRecipe, DemoConfig, DemoPaths, RunSpec, RunTask, demo_model_config,
                   parse_grid, plan_grid, plan_runs)
from .runner import run_plan, summarise

__all__ = ["DemoConfig", "BaseRecipe", "RunSpec", "RunTask", "METHODS", "plan_runs", "run_demo", "demo_command",
           "build_base", "shipped_base", "pretraining_captions", "BASE_DIR", "BASE_SHA256", "DEMO_MODEL",
           "demo_model_config", "summarise", "parse_grid", "plan_grid", "run_grid", "summarise_grids"]


def demo_command(out_dir, seeds: int, cfg: DemoConfig) -> str:
    """The command line a Python call to :func:`run_demo` corresponds to (the CLI passes its own)."""
    return f"smartclip demo --out {out_dir} --seeds {seeds}" + (" --scratch" if cfg.scratch else "")


def run_demo(out_dir: str, seeds: int = 3, *, config: Optional[DemoConfig] = None, progress: bool = True,
             log: Callable[[str], None] = print, command: Optional[str] = None) -> dict:
    """Run the whole demo into ``out_dir`` and return the ``results.json`` content. ``command``:
    the command line that ``results.json`` and ``report.md`` name (default :func:`demo_command`).

    After its evaluation a run keeps only what the report needs: the weights of the runs the
    plots load, no other checkpoint (``config.keep_checkpoints`` keeps them all)."""
    cfg = (config or DemoConfig()).validate()
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = plan_runs(cfg, seeds)
    plotted = demo_report.plotted_runs(runs)
    paths, results = run_plan(
        "demo", cfg, out, runs, split="test", starts=True, progress=progress, log=log,
        keep=lambda run: "all" if cfg.keep_checkpoints else "weights" if run.name in plotted else "none",
        describe=lambda workers: f"[demo] {len(runs)} runs ({', '.join(cfg.regimes)} captions x "
                                 f"{', '.join(cfg.methods)} x {seeds} seed{'s' if seeds > 1 else ''}"
                                 f"{' + from scratch' if cfg.scratch else ''}) in {workers} process(es)")
    record = _record(cfg, seeds, paths, runs, results, command or demo_command(out_dir, seeds, cfg))
    record["wall_time_s"] = round(time.time() - started, 1)
    record["comparisons"] = demo_report.compare(record["summary"],
                                                cfg.regimes + (["scratch-long"] if cfg.scratch else []))
    (out / "results.json").write_text(json.dumps(record, indent=1))
    demo_report.write_report(out, record, runs, paths.data_dir)
    log(demo_report.summary_table(record))
    for line in demo_report.console_summary(record):
        log(line)
    log(f"[demo] {out / 'report.md'} and {out / 'results.json'} written in {record['wall_time_s']:.0f} s")
    return record


def _record(cfg: DemoConfig, seeds: int, paths: DemoPaths, runs: List[RunSpec], results: Dict[str, RunResult],
            command: str) -> dict:
    """``results.json`` without its wall time and comparisons."""
    from smartclip.checkpoint import WEIGHTS_NAME
    groups: Dict[str, List[dict]] = {name: [results[name].metrics] for name in ("random init", "base")}
    for run in runs:
        groups.setdefault(run.group, []).append(results[run.name].metrics)
    base = results["base"]
    return {
        "command": command,
        "config": dataclasses.asdict(cfg),
        "seeds": seeds,
        "base": {"path": str(paths.base), "sha256": sha256_file(paths.base / WEIGHTS_NAME),
                 "logit_scale": logit_scale(paths.base), "shipped": cfg.base is None},
        "model_config": demo_model_config(cfg.model, cfg.image_size),
        "protocol": base.protocol,
        "counts": base.counts,
        "runs": {r.name: {"stage": r.stage, "method": r.method, "regime": r.regime, "seed": r.seed,
                          "steps": r.steps, "checkpoint": results[r.name].checkpoint,
                          "checkpoint_kept": results[r.name].checkpoint_kept,
                          "metrics": results[r.name].metrics, "curve": results[r.name].curve,
                          "train_s": results[r.name].train_s, "eval_s": results[r.name].eval_s,
                          "reused": results[r.name].reused} for r in runs},
        "summary": summarise(groups),
    }
