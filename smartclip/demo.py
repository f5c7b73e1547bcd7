"""``smartclip demo``: CLIP against SmartCLIP on the embedded scene benchmark, on a CPU.

The paper fine-tunes a pretrained CLIP; the demo does the same at toy scale:

1. write the scene dataset (``smartclip.scenes``) and a random tiny CLIP;
2. **pretrain** it with the standard CLIP objective on short captions (the analogue of
   web alt-text) and keep that checkpoint as everyone's starting point;
3. **fine-tune** from it, with the same data, steps, learning rates and seeds, under two
   caption regimes (``short``: partial captions; ``long``: long captions with the paper's
   sentence-prefix sampling): CLIP (learned temperature, the Long-CLIP analogue),
   SmartCLIP, and SmartCLIP's loss with the mask forced to all ones (the control that
   separates the mask from the fixed temperature);
4. optionally (``scratch=True``) train CLIP and SmartCLIP **from scratch** on long captions
   for as many steps as pretraining + fine-tuning (a documented control, not the headline);
5. evaluate every checkpoint with :class:`smartclip.scenes.evaluate.SceneBenchmark` and write
   ``results.json``, ``report.md`` and plots.

Every design choice and hyperparameter is fixed in :class:`DemoConfig` with its reason in
docs/demo.md; none depends on which model wins. Training goes through
``smartclip.train.train``; a run that is already complete in ``out_dir`` is reused, an
interrupted one is run again (from its latest checkpoint when it has one).
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

__all__ = ["DemoConfig", "RunSpec", "plan_runs", "run_demo", "DEMO_MODEL", "HEADLINE_METRICS"]

# smartclip-tiny (64 px, embedding 64, text width 64 x 3 layers) with a lighter image tower:
# the vision transformer is most of a training step's cost, and this one is ~5x cheaper.
DEMO_MODEL = {"base": "smartclip-tiny", "vision_cfg": {"width": 64, "layers": 2, "head_width": 32, "patch_size": 8}}

# (metric key, label, claim it tests)
HEADLINE_METRICS = [
    ("long_i2t@1", "long caption image->text R@1", "1, 2"),
    ("long_t2i@1", "long caption text->image R@1", "1, 2"),
    ("short_i2t@1", "short caption image->text R@1", "1"),
    ("short_t2i@1", "short caption text->image R@1", "1"),
    ("concept_map", "one-concept prompt mAP", "2"),
    ("single_acc", "one-object scene top-1", "2"),
    ("probe_map", "linear probe mAP", "1"),
    ("mask_jaccard_same", "mask Jaccard, same concept", "3"),
    ("mask_jaccard_diff", "mask Jaccard, different concepts", "3"),
    ("mask_algebra", "mask(A) & mask(B) vs shared concept", "3"),
    ("mask_algebra_control", "... vs a concept neither names", "3"),
    ("mask_active", "active mask dimensions (%)", "3"),
]


@dataclass
class DemoConfig:
    """Everything the demo does; see docs/demo.md for the reason behind each value."""
    # data
    data_seed: int = 0
    num_train: int = 4000
    num_test: int = 400
    num_single: int = 128
    image_size: int = 64
    # stage 1: shared pretraining (CLIP objective, learned temperature, short captions)
    pretrain_steps: int = 600
    pretrain_lr: float = 1e-3
    pretrain_weight_decay: float = 0.1
    pretrain_warmup: int = 30
    # stage 2: fine-tuning (identical for every method)
    finetune_steps: int = 100
    finetune_lr: float = 1e-4
    finetune_weight_decay: float = 0.01
    finetune_warmup: int = 10
    mask_lr: float = 1e-3
    align_weight: float = 10.0
    sparsity_weight: float = 2.0
    scale: float = 100.0
    batch_size: int = 64
    regimes: List[str] = field(default_factory=lambda: ["short", "long"])
    methods: List[str] = field(default_factory=lambda: ["clip", "smartclip", "smartclip_fullmask"])
    scratch: bool = False
    # evaluation
    probe_train_images: int = 2000
    eval_batch_size: int = 128
    # the model
    model: Dict = field(default_factory=lambda: copy.deepcopy(DEMO_MODEL))
    device: str = "cpu"
    # CPU threads for torch while the demo runs. The demo's tensors are tiny: with 2 threads on a
    # busy machine, OpenMP's synchronisation made a step ~20x slower than with 1 (measured).
    threads: int = 1

    @classmethod
    def quick(cls, **changes) -> "DemoConfig":
        """A few steps on a few images: checks the pipeline end to end (tests), measures nothing."""
        base = dict(num_train=64, num_test=24, num_single=16, pretrain_steps=3, pretrain_warmup=1,
                    finetune_steps=2, finetune_warmup=1, batch_size=16, probe_train_images=64,
                    eval_batch_size=64)
        base.update(changes)
        return cls(**base)

    def validate(self) -> "DemoConfig":
        for name in ("num_train", "num_test", "num_single", "pretrain_steps", "finetune_steps", "batch_size",
                     "probe_train_images", "eval_batch_size", "threads"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo config: {name} must be >= 1, got {getattr(self, name)}")
        bad = set(self.regimes) - {"short", "long"}
        if bad or not self.regimes:
            raise ValueError(f"demo config: regimes {sorted(bad) or self.regimes} not valid; use 'short' and/or 'long'")
        bad = set(self.methods) - set(METHODS)
        if bad or not self.methods:
            raise ValueError(f"demo config: methods {sorted(bad) or self.methods} not valid; choose from {list(METHODS)}")
        if self.batch_size > self.num_train:
            raise ValueError(f"demo config: batch_size {self.batch_size} exceeds num_train {self.num_train}")
        return self


# method -> (objective, full_mask, learned temperature, label)
METHODS = {
    "clip": ("clip", False, True, "CLIP"),
    "smartclip": ("smartclip", False, False, "SmartCLIP"),
    "smartclip_fullmask": ("smartclip", True, False, "SmartCLIP loss, mask = 1"),
}
REGIME_DATA = {"short": ("train_short.csv", "full"), "long": ("train_long.csv", "prefix")}


@dataclass
class RunSpec:
    """One training run of the demo."""
    name: str             # e.g. "long/smartclip/seed0"
    stage: str            # "pretrain" | "finetune" | "scratch"
    method: str           # key of METHODS
    regime: str           # "short" | "long"
    seed: int
    steps: int
    init: str             # "init" (random weights) or "pretrain"

    @property
    def mask_trained(self) -> bool:
        objective, full_mask, _, _ = METHODS[self.method]
        return objective == "smartclip" and not full_mask

    @property
    def group(self) -> str:
        """The row of the results table: the run name without its seed."""
        return self.name.rsplit("/seed", 1)[0]


def plan_runs(cfg: DemoConfig, seeds: int) -> List[RunSpec]:
    """Pretraining once (seed 0: a fixed starting checkpoint, like a released model), then every
    regime x method x seed fine-tune, then the optional from-scratch controls."""
    runs = [RunSpec("pretrain", "pretrain", "clip", "short", 0, cfg.pretrain_steps, "init")]
    for regime in cfg.regimes:
        for method in cfg.methods:
            for seed in range(seeds):
                runs.append(RunSpec(f"{regime}/{method}/seed{seed}", "finetune", method, regime, seed,
                                    cfg.finetune_steps, "pretrain"))
    if cfg.scratch:
        for method in ("clip", "smartclip"):
            for seed in range(seeds):
                runs.append(RunSpec(f"scratch-long/{method}/seed{seed}", "scratch", method, "long", seed,
                                    cfg.pretrain_steps + cfg.finetune_steps, "init"))
    return runs


def _demo_model_config(cfg: DemoConfig) -> dict:
    import smartclip
    model_cfg = smartclip.get_model_config(cfg.model["base"])
    for section in ("vision_cfg", "text_cfg"):
        model_cfg[section].update(cfg.model.get(section, {}))
    if "embed_dim" in cfg.model:
        model_cfg["embed_dim"] = cfg.model["embed_dim"]
    model_cfg["vision_cfg"]["image_size"] = cfg.image_size
    return model_cfg


def _train_config(cfg: DemoConfig, run: RunSpec, out: Path, data_dir: Path, init_ckpt: Path, pretrain_ckpt: Optional[Path]):
    from smartclip.train import TrainConfig
    from smartclip.train.config import config_from_dict
    objective, full_mask, learned, _ = METHODS[run.method]
    csv_name, caption_mode = REGIME_DATA[run.regime]
    from_scratch = run.init == "init"
    lr = cfg.pretrain_lr if from_scratch else cfg.finetune_lr
    wd = cfg.pretrain_weight_decay if from_scratch else cfg.finetune_weight_decay
    warmup = cfg.pretrain_warmup if from_scratch else cfg.finetune_warmup
    start = init_ckpt if from_scratch else pretrain_ckpt
    return config_from_dict(TrainConfig, {
        "run_dir": str(out / "runs" / run.name),
        "objective": objective,
        "seed": run.seed,
        "model": {"name": str(start)},
        "data": {"train": str(data_dir / csv_name), "caption_mode": caption_mode, "num_workers": 0},
        "loss": {"align_weight": cfg.align_weight, "sparsity_weight": cfg.sparsity_weight,
                 "scale": None if learned else cfg.scale, "full_mask": full_mask},
        "optim": {"clip": {"lr": lr, "weight_decay": wd, "warmup_steps": warmup, "schedule": "cosine"},
                  "mask": {"lr": cfg.mask_lr, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "cosine"}},
        "train": {"steps": run.steps, "global_batch": cfg.batch_size, "device": cfg.device, "progress": False,
                  "tensorboard": False, "plots": False, "log_every": 1},
        # final checkpoint only: a run is short, and each save writes the optimizer state too
        "checkpoint": {"every_steps": 0, "keep_last": 1},
    })


def _write_init_checkpoint(cfg: DemoConfig, path: Path) -> Path:
    import smartclip
    if (path / "smartclip_config.json").is_file():
        return path
    torch.manual_seed(cfg.data_seed)
    model = smartclip.build_model(_demo_model_config(cfg), {"mask_padding": True}, model_name="demo-tiny")
    model.mask_trained = False
    return smartclip.save_checkpoint(model, path)


def _run_training(cfg, run, out, data_dir, init_ckpt, pretrain_ckpt, on_step) -> Tuple[Path, bool]:
    """Train ``run``, or reuse it when ``done.json`` says it finished with this config.
    Returns (final checkpoint, reused)."""
    from smartclip.train import config_to_dict, latest_checkpoint, train
    tcfg = _train_config(cfg, run, out, data_dir, init_ckpt, pretrain_ckpt)
    run_dir = Path(tcfg.run_dir)
    done = run_dir / "done.json"
    wanted = json.loads(json.dumps(config_to_dict(tcfg), default=str))
    if done.is_file():
        record = json.loads(done.read_text())
        if record["config"] != wanted:
            raise FileExistsError(f"{run_dir} holds a finished run with another configuration; "
                                  f"use another output directory or delete {run_dir}")
        return Path(record["checkpoint"]), True
    if latest_checkpoint(run_dir) is not None:
        tcfg.resume = "latest"  # an interrupted demo continues exactly where it stopped
    result = train(tcfg, on_step=on_step)
    done.write_text(json.dumps({"config": wanted, "checkpoint": str(result.checkpoint), "steps": result.steps}))
    return Path(result.checkpoint), False


def _evaluate(cfg: DemoConfig, data_dir: Path, checkpoint: Path, mask_trained: bool, result_path: Path) -> dict:
    import smartclip
    from smartclip.scenes.evaluate import SceneBenchmark
    if result_path.is_file():
        record = json.loads(result_path.read_text())
        if record.get("checkpoint_hash") == smartclip.state_dict_hash(checkpoint):
            return record
    model, preprocess, tokenizer = smartclip.load(str(checkpoint), device=cfg.device)
    model.mask_trained = mask_trained  # the CLIP objective and the all-ones control never train it
    bench = SceneBenchmark(data_dir, probe_train_images=cfg.probe_train_images)
    result = bench.run(model, tokenizer=tokenizer, preprocess=preprocess, device=cfg.device,
                       batch_size=cfg.eval_batch_size, progress=False)
    result["checkpoint"] = str(checkpoint)
    result["checkpoint_hash"] = smartclip.state_dict_hash(model)
    result_path.write_text(json.dumps(result, indent=1))
    return result


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


def run_demo(out_dir: str, seeds: int = 1, *, config: Optional[DemoConfig] = None, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run the whole demo into ``out_dir`` and return the ``results.json`` content."""
    cfg = (config or DemoConfig()).validate()
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    from threadpoolctl import threadpool_limits
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        with threadpool_limits(limits=cfg.threads):  # BLAS / OpenMP outside torch (scikit-learn probes)
            return _run_demo(cfg, out, out_dir, seeds, started, progress, log)
    finally:
        torch.set_num_threads(previous_threads)


def _run_demo(cfg: DemoConfig, out: Path, out_dir: str, seeds: int, started: float, progress: bool, log) -> dict:
    from smartclip.scenes import write_dataset
    from .scenes import report as demo_report

    log(f"[demo] writing the scene dataset to {out / 'data'}")
    data_dir = write_dataset(out / "data", seed=cfg.data_seed, num_train=cfg.num_train, num_test=cfg.num_test,
                             num_single=cfg.num_single, image_size=cfg.image_size)
    init_ckpt = _write_init_checkpoint(cfg, out / "init")
    runs = plan_runs(cfg, seeds)
    evals = len(runs) + 1  # every run + the random init
    eval_cost = max(1, cfg.finetune_steps // 4)  # progress-bar units per evaluation
    total = sum(r.steps for r in runs) + evals * eval_cost

    from tqdm.auto import tqdm
    bar = tqdm(total=total, desc="demo", unit="step", disable=not progress, dynamic_ncols=True)
    timings: Dict[str, float] = {}
    results: Dict[str, dict] = {}
    checkpoints: Dict[str, str] = {}
    try:
        pretrain_ckpt: Optional[Path] = None
        for run in runs:
            bar.set_postfix_str(f"train {run.name}")

            def on_step(info, _run=run):
                bar.update(1)
                if info.metrics:
                    loss = info.metrics.get("loss")
                    if loss is not None:
                        bar.set_postfix_str(f"train {_run.name} loss {loss:.3f}")

            t0 = time.time()
            ckpt, reused = _run_training(cfg, run, out, data_dir, init_ckpt, pretrain_ckpt, on_step)
            if reused:
                bar.update(run.steps)
            timings[f"train {run.name}"] = round(time.time() - t0, 1)
            if run.stage == "pretrain":
                pretrain_ckpt = ckpt
            checkpoints[run.name] = str(ckpt)
        (out / "evals").mkdir(exist_ok=True)
        for name, ckpt, mask_trained in ([("random init", init_ckpt, False)]
                                         + [(r.name, Path(checkpoints[r.name]), r.mask_trained) for r in runs]):
            bar.set_postfix_str(f"evaluate {name}")
            t0 = time.time()
            slug = name.replace("/", "_").replace(" ", "_")
            results[name] = _evaluate(cfg, data_dir, ckpt, mask_trained, out / "evals" / f"{slug}.json")
            timings[f"eval {name}"] = round(time.time() - t0, 1)
            bar.update(eval_cost)
    finally:
        bar.close()

    groups: Dict[str, List[dict]] = {"random init": [results["random init"]["metrics"]]}
    for run in runs:
        groups.setdefault(run.group, []).append(results[run.name]["metrics"])
    summary = summarise(groups)
    record = {
        "command": f"smartclip demo --out {out_dir} --seeds {seeds}",
        "config": dataclasses.asdict(cfg),
        "seeds": seeds,
        "model_config": _demo_model_config(cfg),
        "protocol": next(iter(results.values()))["protocol"],
        "counts": results["random init"]["counts"],
        "runs": {r.name: {"stage": r.stage, "method": r.method, "regime": r.regime, "seed": r.seed,
                          "steps": r.steps, "checkpoint": checkpoints[r.name],
                          "metrics": results[r.name]["metrics"]} for r in runs},
        "summary": summary,
        "timings_s": timings,
        "wall_time_s": round(time.time() - started, 1),
    }
    record["comparisons"] = demo_report.compare(summary, cfg)
    (out / "results.json").write_text(json.dumps(record, indent=1))
    demo_report.write_report(out, record, runs, data_dir, checkpoints, log=log)
    log(demo_report.summary_table(record))
    log(f"[demo] {out / 'report.md'} and {out / 'results.json'} written in {record['wall_time_s']:.0f} s")
    return record
