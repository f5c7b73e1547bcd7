"""The ablation grid (``smartclip demo --grid KEY=V1,V2 ...``): SmartCLIP fine-tuned from the
demo's base for every combination of some training settings, with CLIP and SmartCLIP as released
for reference, scored on the validation (or test) scenes; and one table of every grid run into a
folder (``--grid-summary``)."""
from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

from smartclip.fileio import sha256_file

from . import report as demo_report
from .base_model import logit_scale
from .plan import METHODS, REGIME_DATA, DemoConfig, DemoPaths, combinations, grid_label, plan_grid, train_config
from .runner import run_plan, summarise

__all__ = ["run_grid", "summarise_grids", "grid_command"]


def grid_command(out_dir, grid: Dict[str, List[str]], split: str, seeds: int) -> str:
    return "smartclip demo --out {} --grid {} --grid-split {} --seeds {}".format(
        out_dir, " ".join(f"{k}={','.join(v)}" for k, v in grid.items()), split, seeds)


def run_grid(out_dir: str, grid: Dict[str, List[str]], seeds: int = 3, *, config: Optional[DemoConfig] = None,
             regime: str = "long", split: str = "val", progress: bool = True,
             log: Callable[[str], None] = print, command: Optional[str] = None) -> dict:
    """Fine-tune every combination of ``grid`` (dotted training keys -> values) from the demo's
    base with the same seeds, evaluate on ``split`` (``val`` to choose settings, ``test`` for the
    final table), and write ``grid_<split>_<keys>.json`` / ``.md`` and plots against each key
    into ``out_dir``. Finished runs are reused (also the demo's own, in the same folder); their
    weights are kept, so the other split only evaluates. ``command``: the command line the
    record names (default: the one :func:`grid_command` writes)."""
    from smartclip.checkpoint import WEIGHTS_NAME
    from .evaluate import EVAL_SPLITS
    cfg = (config or DemoConfig()).validate()
    if regime not in REGIME_DATA:
        raise ValueError(f"grid regime must be one of {list(REGIME_DATA)}, got {regime!r}")
    if split not in EVAL_SPLITS:
        raise ValueError(f"grid split must be one of {list(EVAL_SPLITS)}, got {split!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    runs = plan_grid(cfg, grid, seeds, regime)
    # every combination is checked before any work: a typo in a key fails now, naming it
    for run in runs:
        train_config(cfg, run, DemoPaths(out, out / "data", out / "base", out / "init"))
    paths, finished = run_plan(
        "grid", cfg, out, runs, split=split, starts=False, progress=progress, log=log,
        keep=lambda run: "all" if cfg.keep_checkpoints else "weights",
        describe=lambda workers: f"[grid] {len(runs)} runs ({len(combinations(grid))} combinations x {seeds} seeds "
                                 f"+ CLIP and SmartCLIP as released), {regime} captions, scored on the {split} split")
    groups: Dict[str, List[dict]] = {}
    labels: Dict[str, str] = {}
    for run in runs:
        labels[run.group] = grid_label(run.overrides) if run.overrides else METHODS[run.method].label
        groups.setdefault(run.group, []).append(_with_gaps(finished[run.name].metrics))
    record = {
        "command": command or grid_command(out_dir, grid, split, seeds),
        "grid": grid, "regime": regime, "split": split, "seeds": seeds, "config": dataclasses.asdict(cfg),
        "base": {"path": str(paths.base), "sha256": sha256_file(paths.base / WEIGHTS_NAME),
                 "logit_scale": logit_scale(paths.base)},
        "labels": labels,
        "overrides": {run.group: list(run.overrides) for run in runs},
        "runs": {r.name: {"group": r.group, "seed": r.seed, "method": r.method, "stage": r.stage,
                          "metrics": finished[r.name].metrics, "curve": finished[r.name].curve,
                          "checkpoint": finished[r.name].checkpoint} for r in runs},
        "summary": summarise(groups),
        "wall_time_s": round(time.time() - started, 1),
    }
    record["reference"] = f"{regime}/clip"
    record["name"] = "grid_{}_{}".format(split, "+".join(k.replace(".", "-") for k in grid))
    (out / f"{record['name']}.json").write_text(json.dumps(record, indent=1))
    path = demo_report.write_grid_report(out, record)
    log(demo_report.grid_table(record))
    log(f"[grid] {path} and {out / record['name']}.json written in {record['wall_time_s']:.0f} s")
    return record


def _with_gaps(metrics: dict) -> dict:
    """The metrics plus the two mask-specificity gaps, per run (so their spread over seeds is known)."""
    out = dict(metrics)
    if "mask_jaccard_same" in metrics:
        out["mask_jaccard_gap"] = metrics["mask_jaccard_same"] - metrics["mask_jaccard_diff"]
    if "mask_algebra" in metrics:
        out["mask_algebra_gap"] = metrics["mask_algebra"] - metrics["mask_algebra_control"]
    return out


def summarise_grids(out_dir, split: str = "val", log: Callable[[str], None] = print) -> Path:
    """One table of every grid run into ``out_dir`` on ``split`` (``grid_<split>_*.json``): the
    shared CLIP and SmartCLIP rows once, then every combination of every grid, in the order the
    grids were run. Written to ``grids_<split>.md``."""
    out = Path(out_dir)
    files = sorted(out.glob(f"grid_{split}_*.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        raise FileNotFoundError(f"no grid results for the {split} split in {out} (run smartclip demo --grid first)")
    records = [json.loads(p.read_text()) for p in files]
    if len({(r["regime"], r["seeds"]) for r in records}) > 1:
        raise ValueError(f"the grids in {out} differ in regime or seeds; summarise them separately")
    merged = dict(records[0], summary={}, labels={}, overrides={}, grid={}, name=f"grids_{split}",
                  command="; ".join(r["command"] for r in records),
                  wall_time_s=sum(r["wall_time_s"] for r in records))
    for record in records:
        for group, stats in record["summary"].items():
            merged["summary"].setdefault(group, stats)
            merged["labels"].setdefault(group, record["labels"][group])
    path = out / f"grids_{split}.md"
    path.write_text("\n".join([f"# Ablation grids ({split} split)", "", f"Commands: `{merged['command']}`", "",
                               demo_report.grid_table(merged), ""]))
    log(demo_report.grid_table(merged))
    return path
