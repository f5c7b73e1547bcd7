"""One run of the demo, in a worker process: train it (or reuse it when it finished before),
follow its mask metrics while it trains, evaluate it with the scene benchmark, and keep of its
checkpoints only what was asked for (:attr:`~smartclip.scenes.plan.RunTask.keep`).

A finished run leaves ``done.json`` (its training config and checkpoint) in its run directory;
an evaluation is kept in ``evals/`` under the hash of the checkpoint it scored, so a run whose
checkpoint was deleted after its evaluation is still reused, and trained again only when a score
it lacks (another split) is asked for.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from .plan import DemoConfig, RunTask, eval_path, train_config

__all__ = ["RunResult", "run_task", "evaluate_checkpoint"]


@dataclass
class RunResult:
    """What a worker returns for one task."""
    name: str
    checkpoint: str
    metrics: Dict[str, float]
    protocol: str
    counts: Dict[str, int]
    curve: List[dict] = field(default_factory=list)  # mask metrics during training, on the task's split
    reused: bool = False
    train_s: float = 0.0
    eval_s: float = 0.0
    checkpoint_kept: bool = True


def run_task(task: RunTask) -> RunResult:
    """A worker's entry point: with ``cfg.threads`` threads, evaluate the starting checkpoint
    ``task.start`` or train (or reuse) and evaluate ``task.run``."""
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(task.cfg.threads)
    with threadpool_limits(limits=task.cfg.threads):
        return _evaluate_start(task) if task.run is None else _run(task)


def _evaluate_start(task: RunTask) -> RunResult:
    """The random-init and base columns (no training)."""
    from .evaluate import SceneBenchmark
    checkpoint = task.paths.init if task.start == "random init" else task.paths.base
    bench = SceneBenchmark(task.paths.data_dir, split=task.split, probe_train_images=task.cfg.probe_train_images)
    result = evaluate_checkpoint(task.cfg, bench, checkpoint, False, eval_path(task.paths.out, task.name, task.split))
    return RunResult(task.name, str(checkpoint), result["metrics"], result["protocol"], result["counts"])


def _run(task: RunTask) -> RunResult:
    from smartclip.train import config_to_dict
    from .evaluate import SceneBenchmark
    cfg, run, paths = task.cfg, task.run, task.paths
    started = time.time()
    tcfg = train_config(cfg, run, paths)
    run_dir = Path(tcfg.run_dir)
    wanted = json.loads(json.dumps(config_to_dict(tcfg), default=str))
    result_path = eval_path(paths.out, run.name, task.split)
    record = _finished(run_dir, wanted, result_path)
    reused = record is not None
    if record is None:
        record = _train(task, tcfg, wanted)
    trained_s = time.time() - started
    bench = SceneBenchmark(paths.data_dir, split=task.split, probe_train_images=cfg.probe_train_images)
    metrics = evaluate_checkpoint(cfg, bench, Path(record["checkpoint"]), run.mask_trained, result_path,
                                  record.get("checkpoint_hash"))
    _keep(run_dir, record, task.keep)
    curve_path = run_dir / "mask_curve.json"
    curves = json.loads(curve_path.read_text()) if curve_path.is_file() else {}
    return RunResult(run.name, record["checkpoint"], metrics["metrics"], metrics["protocol"], metrics["counts"],
                     curves.get(task.split, []), reused, round(trained_s, 1),
                     round(time.time() - started - trained_s, 1), Path(record["checkpoint"]).is_dir())


def _finished(run_dir: Path, wanted: dict, result_path: Path) -> Optional[dict]:
    """The ``done.json`` of a run that finished with the config ``wanted`` and can be scored
    (its checkpoint is there, or its score is on file), else None; refuses a finished run of
    another config."""
    done = run_dir / "done.json"
    if not done.is_file():
        return None
    record = json.loads(done.read_text())
    if record["config"] != wanted:
        raise FileExistsError(f"{run_dir} holds a finished run with another configuration; "
                              f"use another output directory or delete {run_dir}")
    if Path(record["checkpoint"]).is_dir() or _on_file(result_path, record.get("checkpoint_hash")) is not None:
        return record
    return None  # its checkpoint was deleted after an evaluation on another split: train it again


def _train(task: RunTask, tcfg, wanted: dict) -> dict:
    """Train the run (continuing an interrupted one) and write its ``done.json``."""
    from smartclip.train import latest_checkpoint, train
    run_dir = Path(tcfg.run_dir)
    curves: Dict[str, List[dict]] = {}
    on_step = _mask_follower(task, tcfg, curves) if task.run.mask_trained and task.cfg.curve_every else None
    if latest_checkpoint(run_dir) is not None:
        tcfg.resume = "latest"  # an interrupted demo continues exactly where it stopped
    result = train(tcfg, on_step=on_step)
    (run_dir / "mask_curve.json").write_text(json.dumps(curves))
    record = {"config": wanted, "checkpoint": str(Path(result.checkpoint)), "steps": result.steps}
    (run_dir / "done.json").write_text(json.dumps(record))
    return record


def _mask_follower(task: RunTask, tcfg, curves: Dict[str, List[dict]]):
    """An ``on_step`` callback that appends the mask metrics, on the captions of the split the
    task scores, to ``curves[split]`` every ``curve_every`` steps (and at step 0, now)."""
    import smartclip
    from .evaluate import EVAL_SPLITS, SceneBenchmark
    from .generator import load_labels
    cfg, split = task.cfg, task.split
    records = load_labels(task.paths.data_dir)["splits"][EVAL_SPLITS[split][0]]
    bench = SceneBenchmark(task.paths.data_dir, split=split)
    start, _, tokenizer = smartclip.load(str(tcfg.model.name))
    start.mask_trained = True

    def follow(model, step):
        curves.setdefault(split, []).append(_mask_point(model, tokenizer, bench, records, step, cfg.device))

    follow(start, 0)

    def on_step(info):
        if info.step % cfg.curve_every == 0 or info.step == info.total_steps:
            info.model.eval()
            follow(info.model, info.step)
            info.model.train()

    return on_step


def _mask_point(model, tokenizer, bench, records, step: int, device) -> dict:
    metrics, _ = bench.mask_metrics(model, tokenizer, records, device=device)
    return {"step": step, "mask_active": metrics["mask_active"],
            "jaccard_gap": metrics["mask_jaccard_same"] - metrics["mask_jaccard_diff"],
            "algebra_gap": metrics.get("mask_algebra", math.nan) - metrics.get("mask_algebra_control", math.nan)}


def _on_file(result_path: Path, checkpoint_hash: Optional[str]) -> Optional[dict]:
    """The evaluation kept at ``result_path`` when it scored the checkpoint of that hash."""
    if checkpoint_hash is None or not result_path.is_file():
        return None
    record = json.loads(result_path.read_text())
    return record if record.get("checkpoint_hash") == checkpoint_hash else None


def evaluate_checkpoint(cfg: DemoConfig, bench, checkpoint: Path, mask_trained: bool, result_path: Path,
                        checkpoint_hash: Optional[str] = None) -> dict:
    """``bench``'s result for ``checkpoint``, from ``result_path`` when it scored the same
    weights (``checkpoint_hash``: theirs, when the checkpoint itself is gone), else computed and
    written there."""
    import smartclip
    if result_path.is_file():
        kept = _on_file(result_path, checkpoint_hash or smartclip.state_dict_hash(checkpoint))
        if kept is not None:
            return kept
    model, preprocess, tokenizer = smartclip.load(str(checkpoint), device=cfg.device)
    model.mask_trained = mask_trained  # the CLIP objective and the all-ones control never train it
    result = bench.run(model, tokenizer=tokenizer, preprocess=preprocess, device=cfg.device,
                       batch_size=cfg.eval_batch_size, progress=False)
    result["checkpoint"] = str(checkpoint)
    result["checkpoint_hash"] = smartclip.state_dict_hash(checkpoint)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    return result


def _keep(run_dir: Path, record: dict, keep: str):
    """Delete what ``keep`` does not ask for of the run's checkpoints: ``"weights"`` drops the
    optimizer and RNG state (needed only to continue training), ``"none"`` everything, after
    writing the checkpoint's hash into ``done.json`` so its evaluations stay usable."""
    from smartclip.train.checkpoints import CHECKPOINTS, TRAINER_STATE
    import smartclip
    root = run_dir / CHECKPOINTS
    if keep == "all" or not root.is_dir():
        return
    if keep == "none":
        if "checkpoint_hash" not in record:
            record["checkpoint_hash"] = smartclip.state_dict_hash(record["checkpoint"])
            (run_dir / "done.json").write_text(json.dumps(record))
        shutil.rmtree(root)
        return
    for checkpoint in root.iterdir():
        for path in [checkpoint / TRAINER_STATE, *checkpoint.glob("rank_*.pt")]:
            path.unlink(missing_ok=True)
