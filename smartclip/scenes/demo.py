"""``smartclip demo``: CLIP against SmartCLIP on the embedded scene benchmark, on a CPU.

The paper fine-tunes a pretrained CLIP at that model's own temperature; the demo does the same
at toy scale:

1. write the scene dataset (``smartclip.scenes``);
2. start from the **base model**: a tiny CLIP pretrained with the standard CLIP objective on
   short captions of separate pretraining scenes (the analogue of the OpenAI checkpoint).
   It ships with the package (``smartclip/scenes/base``, fp16, its SHA-256 checked before
   use) and :func:`build_base` rebuilds it (``smartclip demo --build-base DIR``);
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
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import report as demo_report

__all__ = ["DemoConfig", "BaseRecipe", "RunSpec", "METHODS", "plan_runs", "run_demo", "build_base",
           "shipped_base", "BASE_DIR", "BASE_SHA256", "DEMO_MODEL", "summarise", "parse_grid", "plan_grid",
           "run_grid", "summarise_grids"]

# smartclip-tiny's text side (width 64 x 3 layers, 248 tokens, embedding 64) with a small ResNet
# image tower (open_clip's ModifiedResNet, width 16, one block per stage). At this size a ViT
# barely learns the objects: supervised on concept presence for 600 steps, the demo's earlier
# ViT (width 64, 2 layers, patch 8) reached 48 mAP, this ResNet 99 (docs/demo.md).
DEMO_MODEL = {"base": "smartclip-tiny", "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16}}

# the shipped base model and the SHA-256 of its model.safetensors (rebuild: docs/demo.md)
BASE_DIR = Path(__file__).parent / "base"
BASE_SHA256 = "ffc956b8fc94b047ee3bb7b6c5f168ece7424363145632c6b17d05e5fd882bb9"


@dataclass
class BaseRecipe:
    """How the base model is pretrained (:func:`build_base`); see docs/demo.md."""
    data_seed: int = 0
    num_pretrain: int = 8000        # pretraining scenes, a separate stream from the fine-tuning scenes
    num_pretrain_single: int = 2000  # one-object pretraining scenes
    steps: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: int = 30
    batch_size: int = 64
    seed: int = 0
    probe_images: int = 2000  # training scenes for the linear probe of the base's validation score


@dataclass
class DemoConfig:
    """Everything the demo does; see docs/demo.md for the reason behind each value."""
    # data
    data_seed: int = 0
    num_train: int = 4000
    num_test: int = 400
    num_single: int = 128
    num_val: int = 400
    num_val_single: int = 128
    image_size: int = 64
    # the starting point: None = the shipped base (hash checked), else a checkpoint directory
    base: Optional[str] = None
    # fine-tuning (identical for every method)
    finetune_steps: int = 100
    finetune_lr: float = 1e-4
    finetune_weight_decay: float = 0.01
    finetune_warmup: int = 10
    mask_lr: float = 1e-3
    align_weight: float = 10.0
    sparsity_weight: float = 2.0
    scale: Union[str, float] = "model"  # the base's own logit_scale.exp(), as the paper (OpenAI's is 100)
    ablation_scale: float = 100.0        # the smartclip_scale100 control
    batch_size: int = 64
    regimes: List[str] = field(default_factory=lambda: ["short", "long"])
    methods: List[str] = field(default_factory=lambda: ["clip", "smartclip", "smartclip_fullmask",
                                                        "smartclip_scale100"])
    # the two controls (mask = 1, scale 100) run in these regimes only: the long-caption regime is
    # the paper's setting, and the default demo must fit in its time budget
    control_regimes: List[str] = field(default_factory=lambda: ["long"])
    # from scratch (--scratch, a control): the base recipe's optimiser on long captions, for as many
    # steps as the base's pretraining plus a fine-tune
    scratch: bool = False
    scratch_steps: int = BaseRecipe.steps + 100
    scratch_lr: float = BaseRecipe.lr
    scratch_weight_decay: float = BaseRecipe.weight_decay
    scratch_warmup: int = BaseRecipe.warmup
    # evaluation
    probe_train_images: int = 2000
    eval_batch_size: int = 128
    curve_every: int = 10  # mask metrics every N fine-tuning steps (0: only at the end)
    # the model of the random-init column and of --scratch (the base's architecture)
    model: Dict = field(default_factory=lambda: copy.deepcopy(DEMO_MODEL))
    device: str = "cpu"
    # runs in parallel processes, each with `threads` CPU threads. The tensors are tiny: on a busy
    # 2-core machine two threads in one process made a step ~20x slower than one (measured), so
    # the cores are used by running two runs at once instead.
    workers: int = 2
    threads: int = 1

    @classmethod
    def quick(cls, **changes) -> "DemoConfig":
        """A few steps on a few images: checks the pipeline end to end (tests), measures nothing."""
        base = dict(num_train=64, num_test=24, num_single=16, num_val=24, num_val_single=16, finetune_steps=2,
                    finetune_warmup=1, scratch_steps=3, scratch_warmup=1, batch_size=16, probe_train_images=64,
                    eval_batch_size=64, curve_every=1)
        base.update(changes)
        return cls(**base)

    def validate(self) -> "DemoConfig":
        for name in ("num_train", "num_test", "num_single", "finetune_steps", "batch_size", "probe_train_images",
                     "eval_batch_size", "threads", "workers", "scratch_steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"demo config: {name} must be >= 1, got {getattr(self, name)}")
        if self.curve_every < 0:
            raise ValueError(f"demo config: curve_every must be >= 0, got {self.curve_every}")
        bad = set(self.regimes) - set(REGIME_DATA)
        if bad or not self.regimes:
            raise ValueError(f"demo config: regimes {sorted(bad) or self.regimes} not valid; use 'short' and/or 'long'")
        bad = set(self.control_regimes) - set(REGIME_DATA)
        if bad:
            raise ValueError(f"demo config: control_regimes {sorted(bad)} not valid; use 'short' and/or 'long'")
        bad = set(self.methods) - set(METHODS)
        if bad or not self.methods:
            raise ValueError(f"demo config: methods {sorted(bad) or self.methods} not valid; choose from {list(METHODS)}")
        if self.batch_size > self.num_train:
            raise ValueError(f"demo config: batch_size {self.batch_size} exceeds num_train {self.num_train}")
        if not (self.scale == "model" or (isinstance(self.scale, (int, float)) and self.scale > 0)):
            raise ValueError(f"demo config: scale must be 'model' or a number > 0, got {self.scale!r}")
        return self


@dataclass(frozen=True)
class Method:
    objective: str
    full_mask: bool
    scale: str   # "learned" (CLIP's temperature), "config" (DemoConfig.scale) or "ablation" (ablation_scale)
    label: str


METHODS = {
    "clip": Method("clip", False, "learned", "CLIP"),
    "smartclip": Method("smartclip", False, "config", "SmartCLIP"),
    "smartclip_fullmask": Method("smartclip", True, "config", "mask=1"),
    "smartclip_scale100": Method("smartclip", False, "ablation", "SmartCLIP, scale 100"),
}
REGIME_DATA = {"short": ("train_short.csv", "full"), "long": ("train_long.csv", "prefix")}


@dataclass
class RunSpec:
    """One training run of the demo."""
    name: str             # e.g. "long/smartclip/seed0"
    stage: str            # "finetune" | "scratch"
    method: str           # key of METHODS
    regime: str           # "short" | "long"
    seed: int
    steps: int
    overrides: Tuple[str, ...] = ()  # dotted training settings, "key=value" (the grid's)

    @property
    def mask_trained(self) -> bool:
        m = METHODS[self.method]
        return m.objective == "smartclip" and not m.full_mask

    @property
    def group(self) -> str:
        """The column of the results table: the run name without its seed."""
        return self.name.rsplit("/seed", 1)[0]


def plan_runs(cfg: DemoConfig, seeds: int) -> List[RunSpec]:
    """Every regime x method x seed fine-tune from the base, then the optional from-scratch
    controls."""
    runs = [RunSpec(f"{regime}/{method}/seed{seed}", "finetune", method, regime, seed, cfg.finetune_steps)
            for regime in cfg.regimes for method in cfg.methods for seed in range(seeds)
            if method in ("clip", "smartclip") or regime in cfg.control_regimes]
    if cfg.scratch:
        runs += [RunSpec(f"scratch-long/{method}/seed{seed}", "scratch", method, "long", seed, cfg.scratch_steps)
                 for method in ("clip", "smartclip") for seed in range(seeds)]
    return runs


# --------------------------------------------------------------------------- the base model
def demo_model_config(model: Dict, image_size: int = 64) -> dict:
    """The open_clip-style config of the demo's architecture."""
    from smartclip import get_model_config
    model_cfg = get_model_config(model["base"])
    for section in ("vision_cfg", "text_cfg"):
        model_cfg[section].update(model.get(section, {}))
    if "embed_dim" in model:
        model_cfg["embed_dim"] = model["embed_dim"]
    model_cfg["vision_cfg"]["image_size"] = image_size
    return model_cfg


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shipped_base() -> Path:
    """The shipped base model's directory, after checking its weights' SHA-256."""
    from smartclip.checkpoint import WEIGHTS_NAME
    weights = BASE_DIR / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"the demo's base model is missing ({weights}); reinstall smartclip, or rebuild it "
                                "with `smartclip demo --build-base DIR` and pass --base DIR")
    digest = file_sha256(weights)
    if digest != BASE_SHA256:
        raise ValueError(f"{weights} has SHA-256 {digest}, not the published {BASE_SHA256}: the shipped base was "
                         "modified or damaged; reinstall smartclip, or pass --base DIR to use another one")
    return BASE_DIR


def _random_init(cfg: DemoConfig, path: Path) -> Path:
    """The base's architecture with random weights (the random-init column, --scratch)."""
    import torch
    import smartclip
    if (path / "smartclip_config.json").is_file():
        return path
    torch.manual_seed(cfg.data_seed)
    model = smartclip.build_model(demo_model_config(cfg.model, cfg.image_size), {"mask_padding": True},
                                  model_name="demo-tiny")
    model.mask_trained = False
    return smartclip.save_checkpoint(model, path)


def pretraining_captions(data_dir: Path) -> Path:
    """The pretraining CSV: every short caption of the pretraining scenes, each scene's objects
    named by kind alone, each object alone with and without its colour, and one-object scenes
    named with and without colour: single- and multi-object short captions, the alt-text
    analogue (docs/demo.md says why each is there)."""
    import csv
    from .generator import SceneObject, load_labels, object_phrase, short_caption
    labels = load_labels(data_dir)
    rng = np.random.default_rng(0)
    rows = []

    def kind_only(o):
        return SceneObject(o.concept, None, o.size, o.position)

    for rec in labels["splits"]["pretrain"]:
        objects = [SceneObject(**o) for o in rec["objects"]]
        rows += [(rec["filepath"], c) for c in rec["short_captions"]]
        order = rng.permutation(len(objects))
        rows.append((rec["filepath"], short_caption([kind_only(objects[i]) for i in order])))
        rows += [(rec["filepath"], object_phrase(kind_only(o), size=False, position=False)) for o in objects]
    for rec in labels["splits"].get("pretrain_single", []):
        (o,) = [SceneObject(**x) for x in rec["objects"]]
        rows += [(rec["filepath"], object_phrase(o, size=False, position=False)),
                 (rec["filepath"], object_phrase(kind_only(o), size=False, position=False))]
    path = data_dir / "pretrain_captions.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)
    return path


def build_base(out_dir, recipe: Optional[BaseRecipe] = None, *, model: Optional[Dict] = None, image_size: int = 64,
               progress: bool = True, log: Callable[[str], None] = print, command: Optional[str] = None) -> dict:
    """Pretrain the demo's base model as ``recipe`` says and write it to ``out_dir`` in fp16
    (``smartclip_config.json``, ``model.safetensors``) with ``base.json`` (recipe, SHA-256,
    ``command`` that rebuilds it, and its scene-benchmark scores on the validation split);
    the pretraining data and run stay in ``out_dir/work``. Returns ``base.json``.

    The CLIP objective with a learned temperature, from random weights, on
    :func:`pretraining_captions`. Deterministic for a given recipe on one machine (one thread).
    """
    import torch
    import smartclip
    from smartclip.checkpoint import WEIGHTS_NAME
    from smartclip.train import TrainConfig, train
    from smartclip.train.config import config_from_dict
    from .evaluate import SceneBenchmark
    from .generator import write_dataset

    recipe = recipe or BaseRecipe()
    model = model or DEMO_MODEL
    out = Path(out_dir)
    work = out / "work"
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = work / "data"
        log(f"[base] writing {recipe.num_pretrain} + {recipe.num_pretrain_single} pretraining scenes to {data}")
        # the fine-tuning scenes' generator and seed: its pretraining streams, plus the validation
        # split the base is scored on and training scenes for that score's linear probe
        write_dataset(data, seed=recipe.data_seed, num_train=recipe.probe_images, num_test=0, num_single=0,
                      image_size=image_size, num_val=400, num_val_single=128, num_pretrain=recipe.num_pretrain,
                      num_pretrain_single=recipe.num_pretrain_single)
        captions = pretraining_captions(data)
        init = _random_init(DemoConfig(data_seed=recipe.seed, model=model, image_size=image_size), work / "init")
        tcfg = config_from_dict(TrainConfig, {
            "run_dir": str(work / "run"), "objective": "clip", "seed": recipe.seed,
            "model": {"name": str(init)},
            "data": {"train": str(captions), "caption_mode": "full", "num_workers": 0},
            "loss": {"scale": None},
            "optim": {"clip": {"lr": recipe.lr, "weight_decay": recipe.weight_decay, "warmup_steps": recipe.warmup,
                               "schedule": "cosine"},
                      # frozen under the CLIP objective; its settings are the recipe's defaults
                      "mask": {"lr": 1e-3, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "cosine"}},
            "train": {"steps": recipe.steps, "global_batch": recipe.batch_size, "device": "cpu",
                      "progress": progress, "tensorboard": False, "plots": False, "log_every": 50},
            "checkpoint": {"every_steps": 500, "keep_last": 1},
        })
        from smartclip.train import latest_checkpoint
        if latest_checkpoint(tcfg.run_dir) is not None:
            tcfg.resume = "latest"
        result = train(tcfg)
        trained = smartclip.load_checkpoint(result.checkpoint).eval()  # eval: the ResNet's batch norm
        trained.mask_trained = False  # the CLIP objective never trains the mask network
        bench = SceneBenchmark(data, split="val", probe_train_images=recipe.probe_images)
        scores = bench.run(trained, tokenizer=smartclip.get_tokenizer(trained), batch_size=128, progress=False,
                           preprocess=smartclip.image_transform(trained))
        trained.model_name = "demo-base"
        smartclip.save_checkpoint(trained.half(), out, overwrite=True)  # --build-base rebuilds
    finally:
        torch.set_num_threads(previous_threads)
    record = {"sha256": file_sha256(out / WEIGHTS_NAME), "recipe": dataclasses.asdict(recipe), "model": model,
              "image_size": image_size, "logit_scale": float(trained.logit_scale.detach().float().exp()),
              "val_metrics": {k: round(v, 2) for k, v in scores["metrics"].items()},
              "command": command or f"smartclip demo --build-base {out_dir}", "torch": torch.__version__}
    (out / "base.json").write_text(json.dumps(record, indent=1))
    log(f"[base] {out} written: SHA-256 {record['sha256']}, logit scale {record['logit_scale']:.3f}, "
        f"validation concept mAP {scores['metrics']['concept_map']:.1f}, "
        f"one-object top-1 {scores['metrics']['single_acc']:.1f}")
    return record


# --------------------------------------------------------------------------- one run
def _train_config(cfg: DemoConfig, run: RunSpec, out: Path, data_dir: Path, base: Path, init: Path):
    from smartclip.train import TrainConfig
    from smartclip.train.config import apply_overrides, config_from_dict
    method = METHODS[run.method]
    csv_name, caption_mode = REGIME_DATA[run.regime]
    scratch = run.stage == "scratch"
    scale = {"learned": None, "config": cfg.scale, "ablation": cfg.ablation_scale}[method.scale]
    settings = {
        "run_dir": str(out / "runs" / run.name),
        "objective": method.objective,
        "seed": run.seed,
        "model": {"name": str(init if scratch else base)},
        "data": {"train": str(data_dir / csv_name), "caption_mode": caption_mode, "num_workers": 0},
        "loss": {"align_weight": cfg.align_weight, "sparsity_weight": cfg.sparsity_weight, "scale": scale,
                 "full_mask": method.full_mask},
        "optim": {"clip": {"lr": cfg.scratch_lr if scratch else cfg.finetune_lr,
                           "weight_decay": cfg.scratch_weight_decay if scratch else cfg.finetune_weight_decay,
                           "warmup_steps": cfg.scratch_warmup if scratch else cfg.finetune_warmup,
                           "schedule": "cosine"},
                  "mask": {"lr": cfg.mask_lr, "weight_decay": 0.0, "warmup_steps": 0, "schedule": "cosine"}},
        # channels-last order: no real CPU saving (benchmarks/bench_channels_last.py), but the
        # published demo figures were made with it
        "train": {"steps": run.steps, "global_batch": cfg.batch_size, "device": cfg.device, "progress": False,
                  "tensorboard": False, "plots": False, "log_every": 1, "channels_last": True},
        # final checkpoint only: a run is short, and each save writes the optimizer state too
        "checkpoint": {"every_steps": 0, "keep_last": 1},
    }
    return config_from_dict(TrainConfig, apply_overrides(settings, run.overrides))


def _mask_point(model, tokenizer, bench, records, step: int, device) -> dict:
    metrics, _ = bench.mask_metrics(model, tokenizer, records, device=device)
    return {"step": step, "mask_active": metrics["mask_active"],
            "jaccard_gap": metrics["mask_jaccard_same"] - metrics["mask_jaccard_diff"],
            "algebra_gap": metrics.get("mask_algebra", math.nan) - metrics.get("mask_algebra_control", math.nan)}


def _run_one(task: dict) -> dict:
    """Train one run (or reuse it), follow its mask metrics, evaluate it. Runs in a worker."""
    import torch
    from threadpoolctl import threadpool_limits
    torch.set_num_threads(task["threads"])
    with threadpool_limits(limits=task["threads"]):
        return _run_one_inner(task)


def _eval_path(out: Path, name: str, split: str) -> Path:
    slug = name.replace("/", "_").replace(" ", "_")
    return out / "evals" / (f"{slug}.json" if split == "test" else f"{split}/{slug}.json")


def _run_one_inner(task: dict) -> dict:
    import smartclip
    from smartclip.train import config_to_dict, latest_checkpoint, train
    from .evaluate import EVAL_SPLITS, SceneBenchmark
    from .generator import load_labels
    cfg, run, split = task["cfg"], task["run"], task.get("split", "test")
    out, data_dir = Path(task["out"]), Path(task["data_dir"])
    started = time.time()
    tcfg = _train_config(cfg, run, out, data_dir, Path(task["base"]), Path(task["init"]))
    run_dir = Path(tcfg.run_dir)
    done, curve_path = run_dir / "done.json", run_dir / "mask_curve.json"
    wanted = json.loads(json.dumps(config_to_dict(tcfg), default=str))
    if done.is_file():
        record = json.loads(done.read_text())
        if record["config"] != wanted:
            raise FileExistsError(f"{run_dir} holds a finished run with another configuration; "
                                  f"use another output directory or delete {run_dir}")
        checkpoint, reused = Path(record["checkpoint"]), True
    else:
        # the mask metrics during training, on the captions of the split this task scores
        curves: Dict[str, List[dict]] = {}
        if run.mask_trained and cfg.curve_every:
            records = load_labels(data_dir)["splits"][EVAL_SPLITS[split][0]]
            followed = {split: (SceneBenchmark(data_dir, split=split), records)}
            start, _, tok = smartclip.load(str(tcfg.model.name))
            start.mask_trained = True

            def follow(model, step):
                for name, (bench, records) in followed.items():
                    curves.setdefault(name, []).append(_mask_point(model, tok, bench, records, step, cfg.device))

            follow(start, 0)

            def on_step(info):
                if info.step % cfg.curve_every == 0 or info.step == info.total_steps:
                    info.model.eval()
                    follow(info.model, info.step)
                    info.model.train()
        else:
            on_step = None
        if latest_checkpoint(run_dir) is not None:
            tcfg.resume = "latest"  # an interrupted demo continues exactly where it stopped
        result = train(tcfg, on_step=on_step)
        curve_path.write_text(json.dumps(curves))
        checkpoint, reused = Path(result.checkpoint), False
        done.write_text(json.dumps({"config": wanted, "checkpoint": str(checkpoint), "steps": result.steps}))
    trained_s = time.time() - started
    bench = SceneBenchmark(data_dir, split=split, probe_train_images=cfg.probe_train_images)
    metrics = _evaluate(cfg, bench, checkpoint, run.mask_trained, _eval_path(out, run.name, split))
    curves = json.loads(curve_path.read_text()) if curve_path.is_file() else {}
    return {"name": run.name, "checkpoint": str(checkpoint), "reused": reused, "metrics": metrics["metrics"],
            "protocol": metrics["protocol"], "counts": metrics["counts"], "curve": curves.get(split, []),
            "train_s": round(trained_s, 1), "eval_s": round(time.time() - started - trained_s, 1)}


def _evaluate(cfg: DemoConfig, bench, checkpoint: Path, mask_trained: bool, result_path: Path) -> dict:
    import smartclip
    if result_path.is_file():
        record = json.loads(result_path.read_text())
        if record.get("checkpoint_hash") == smartclip.state_dict_hash(checkpoint):
            return record
    model, preprocess, tokenizer = smartclip.load(str(checkpoint), device=cfg.device)
    model.mask_trained = mask_trained  # the CLIP objective and the all-ones control never train it
    result = bench.run(model, tokenizer=tokenizer, preprocess=preprocess, device=cfg.device,
                       batch_size=cfg.eval_batch_size, progress=False)
    result["checkpoint"] = str(checkpoint)
    result["checkpoint_hash"] = smartclip.state_dict_hash(checkpoint)
    result_path.parent.mkdir(parents=True, exist_ok=True)
    result_path.write_text(json.dumps(result, indent=1))
    return result


def _evaluate_start(task: dict) -> dict:
    """The random-init and base columns (no training)."""
    import torch
    from threadpoolctl import threadpool_limits
    from .evaluate import SceneBenchmark
    torch.set_num_threads(task["threads"])
    cfg = task["cfg"]
    with threadpool_limits(limits=task["threads"]):
        bench = SceneBenchmark(task["data_dir"], split=task.get("split", "test"),
                               probe_train_images=cfg.probe_train_images)
        result = _evaluate(cfg, bench, Path(task["checkpoint"]), False, Path(task["result"]))
    return {"name": task["name"], "checkpoint": task["checkpoint"], "metrics": result["metrics"],
            "protocol": result["protocol"], "counts": result["counts"]}


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


# --------------------------------------------------------------------------- the whole demo
def _map_tasks(fn, tasks: List[dict], workers: int, on_done: Callable[[dict], None]) -> Dict[str, dict]:
    """``fn`` over ``tasks`` in ``workers`` processes (in this one when 1); results by name."""
    results: Dict[str, dict] = {}
    if workers <= 1 or len(tasks) <= 1:
        for task in tasks:
            r = fn(task)
            results[r["name"]] = r
            on_done(r)
        return results
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = [pool.submit(fn, task) for task in tasks]
        for future in as_completed(futures):
            r = future.result()
            results[r["name"]] = r
            on_done(r)
    return results


def run_demo(out_dir: str, seeds: int = 3, *, config: Optional[DemoConfig] = None, progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Run the whole demo into ``out_dir`` and return the ``results.json`` content."""
    import torch
    from smartclip.checkpoint import WEIGHTS_NAME
    cfg = (config or DemoConfig()).validate()
    if seeds < 1:
        raise ValueError(f"seeds must be >= 1, got {seeds}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    base, data_dir, init = _prepare(cfg, out, log)
    base_sha, base_scale = file_sha256(base / WEIGHTS_NAME), _logit_scale(base)
    runs = plan_runs(cfg, seeds)
    common = {"cfg": cfg, "out": str(out), "data_dir": str(data_dir), "base": str(base), "init": str(init),
              "threads": cfg.threads}
    start_tasks = [{**common, "name": name, "checkpoint": str(ckpt), "result": str(_eval_path(out, name, "test"))}
                   for name, ckpt in (("random init", init), ("base", base))]
    run_tasks = [{**common, "run": run} for run in runs]
    workers = min(cfg.workers, len(run_tasks))
    log(f"[demo] {len(runs)} runs ({', '.join(cfg.regimes)} captions x {', '.join(cfg.methods)} x {seeds} "
        f"seed{'s' if seeds > 1 else ''}{' + from scratch' if cfg.scratch else ''}) in {workers} process(es)")
    done, bar = _progress("demo", len(run_tasks) + len(start_tasks), progress, log)

    torch_threads = torch.get_num_threads()
    try:
        # the two evaluations first, in the same pool size; then every run
        starts = _map_tasks(_evaluate_start, start_tasks, workers, done)
        finished = _map_tasks(_run_one, run_tasks, workers, done)
    finally:
        bar.close()
        torch.set_num_threads(torch_threads)

    groups: Dict[str, List[dict]] = {name: [starts[name]["metrics"]] for name in ("random init", "base")}
    for run in runs:
        groups.setdefault(run.group, []).append(finished[run.name]["metrics"])
    summary = summarise(groups)
    record = {
        "command": f"smartclip demo --out {out_dir} --seeds {seeds}" + (" --scratch" if cfg.scratch else ""),
        "config": dataclasses.asdict(cfg),
        "seeds": seeds,
        "base": {"path": str(base), "sha256": base_sha, "logit_scale": base_scale,
                 "shipped": cfg.base is None},
        "model_config": demo_model_config(cfg.model, cfg.image_size),
        "protocol": starts["base"]["protocol"],
        "counts": starts["base"]["counts"],
        "runs": {r.name: {"stage": r.stage, "method": r.method, "regime": r.regime, "seed": r.seed,
                          "steps": r.steps, "checkpoint": finished[r.name]["checkpoint"],
                          "metrics": finished[r.name]["metrics"], "curve": finished[r.name]["curve"],
                          "train_s": finished[r.name]["train_s"], "eval_s": finished[r.name]["eval_s"],
                          "reused": finished[r.name]["reused"]} for r in runs},
        "summary": summary,
        "wall_time_s": round(time.time() - started, 1),
    }
    record["comparisons"] = demo_report.compare(summary, cfg.regimes + (["scratch-long"] if cfg.scratch else []))
    (out / "results.json").write_text(json.dumps(record, indent=1))
    demo_report.write_report(out, record, runs, data_dir)
    log(demo_report.summary_table(record))
    for line in demo_report.console_summary(record):
        log(line)
    log(f"[demo] {out / 'report.md'} and {out / 'results.json'} written in {record['wall_time_s']:.0f} s")
    return record


def _progress(name: str, total: int, progress: bool, log):
    """``(on_done, bar)``: a bar on a terminal; elsewhere (a log file, CI) one line per finished run."""
    import sys
    from tqdm.auto import tqdm
    on_terminal = progress and sys.stderr.isatty()
    bar = tqdm(total=total, desc=name, unit="run", disable=not on_terminal, dynamic_ncols=True)
    started, count = time.time(), [0]

    def on_done(result):
        count[0] += 1
        if on_terminal:
            bar.set_postfix_str(f"done {result['name']}")
            bar.update(1)
        elif progress:
            log(f"[{name}] {count[0]}/{total} done: {result['name']} ({time.time() - started:.0f} s)")

    return on_done, bar


def _prepare(cfg: DemoConfig, out: Path, log) -> Tuple[Path, Path, Path]:
    """The base (checked), the scene dataset and the random-init checkpoint under ``out``."""
    from .generator import write_dataset
    base = shipped_base() if cfg.base is None else Path(cfg.base)
    log(f"[demo] base model {base} (logit scale {_logit_scale(base):.2f}); scene dataset in {out / 'data'}")
    data_dir = write_dataset(out / "data", seed=cfg.data_seed, num_train=cfg.num_train, num_test=cfg.num_test,
                             num_single=cfg.num_single, num_val=cfg.num_val, num_val_single=cfg.num_val_single,
                             image_size=cfg.image_size)
    return base, data_dir, _random_init(cfg, out / "init")


def _logit_scale(checkpoint: Path) -> float:
    from smartclip.checkpoint import read_weights
    state, _ = read_weights(checkpoint)
    return float(state["logit_scale"].float().exp())


# --------------------------------------------------------------------------- the ablation grid
def parse_grid(items: Sequence[str]) -> Dict[str, List[str]]:
    """``["loss.sparsity_weight=0,2,8", "loss.scale=model,100"]`` -> ``{key: [value, ...]}``
    (values stay strings, read as YAML by the training config, so its errors name the key)."""
    grid: Dict[str, List[str]] = {}
    for item in items:
        key, eq, values = item.partition("=")
        key = key.strip()
        if not eq or not key or not values.strip():
            raise ValueError(f"--grid {item!r}: expected KEY=V1,V2,..., e.g. loss.sparsity_weight=0,2,8")
        if key in grid:
            raise ValueError(f"--grid: {key} given twice")
        grid[key] = _split_top_level(values)
        if any(not v for v in grid[key]):
            raise ValueError(f"--grid {item!r}: an empty value")
    if not grid:
        raise ValueError("--grid: give at least one KEY=V1,V2,...")
    return grid


def _split_top_level(values: str) -> List[str]:
    """``"0.1,[0.67,0.1],x"`` -> ``["0.1", "[0.67,0.1]", "x"]``: commas inside brackets stay."""
    parts, depth, current = [], 0, ""
    for ch in values:
        depth += {"[": 1, "{": 1, "]": -1, "}": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    return parts + [current.strip()]


def _combinations(grid: Dict[str, List[str]]) -> List[Tuple[str, ...]]:
    keys = list(grid)
    return [tuple(f"{k}={v}" for k, v in zip(keys, values)) for values in itertools.product(*grid.values())]


def grid_label(overrides: Sequence[str]) -> str:
    return " ".join(overrides)


def plan_grid(cfg: DemoConfig, grid: Dict[str, List[str]], seeds: int, regime: str = "long",
              method: str = "smartclip") -> List[RunSpec]:
    """CLIP and SmartCLIP as released (the demo's own runs, reused when present), then every
    combination of the grid's settings on top of ``method``, all from the base with the same
    seeds."""
    runs = [RunSpec(f"{regime}/{m}/seed{s}", "finetune", m, regime, s, cfg.finetune_steps)
            for m in ("clip", "smartclip") for s in range(seeds)]
    for combo in _combinations(grid):
        slug = ",".join(combo).replace("/", "_").replace(" ", "")
        runs += [RunSpec(f"grid/{regime}/{method}/{slug}/seed{s}", "finetune", method, regime, s, cfg.finetune_steps,
                         combo) for s in range(seeds)]
    return runs


def run_grid(out_dir: str, grid: Dict[str, List[str]], seeds: int = 3, *, config: Optional[DemoConfig] = None,
             regime: str = "long", split: str = "val", progress: bool = True,
             log: Callable[[str], None] = print) -> dict:
    """Fine-tune every combination of ``grid`` (dotted training keys -> values) from the demo's
    base with the same seeds, evaluate on ``split`` (``val`` to choose settings, ``test`` for the
    final table), and write ``grid_<split>_<keys>.json`` / ``.md`` and plots against each key
    into ``out_dir``. Finished runs are reused (also the demo's own, in the same folder)."""
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
        _train_config(cfg, run, out, out / "data", out / "base", out / "init")
    base, data_dir, init = _prepare(cfg, out, log)
    tasks = [{"cfg": cfg, "out": str(out), "data_dir": str(data_dir), "base": str(base), "init": str(init),
              "threads": cfg.threads, "split": split, "run": run} for run in runs]
    log(f"[grid] {len(runs)} runs ({len(_combinations(grid))} combinations x {seeds} seeds + CLIP and SmartCLIP as "
        f"released), {regime} captions, scored on the {split} split")
    done, bar = _progress("grid", len(tasks), progress, log)

    try:
        finished = _map_tasks(_run_one, tasks, min(cfg.workers, len(tasks)), done)
    finally:
        bar.close()
    groups: Dict[str, List[dict]] = {}
    labels: Dict[str, str] = {}
    for run in runs:
        group = grid_label(run.overrides) if run.overrides else METHODS[run.method].label
        labels[run.group] = group
        groups.setdefault(run.group, []).append(_with_gaps(finished[run.name]["metrics"]))
    record = {
        "command": "smartclip demo --out {} --grid {} --grid-split {} --seeds {}".format(
            out_dir, " ".join(f"{k}={','.join(v)}" for k, v in grid.items()), split, seeds),
        "grid": grid, "regime": regime, "split": split, "seeds": seeds, "config": dataclasses.asdict(cfg),
        "base": {"path": str(base), "sha256": file_sha256(base / WEIGHTS_NAME), "logit_scale": _logit_scale(base)},
        "labels": labels,
        "overrides": {run.group: list(run.overrides) for run in runs},
        "runs": {r.name: {"group": r.group, "seed": r.seed, "method": r.method, "stage": r.stage,
                          "metrics": finished[r.name]["metrics"], "curve": finished[r.name]["curve"],
                          "checkpoint": finished[r.name]["checkpoint"]} for r in runs},
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
