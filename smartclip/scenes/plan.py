"""The demo's plan: its settings (:class:`DemoConfig`, :class:`BaseRecipe`), the methods it
compares, the runs it trains (:class:`RunSpec`), the jobs it hands to worker processes
(:class:`RunTask`) and the training config of each run, read from the recipe files shipped in
``smartclip/scenes/recipes`` (``base.yaml`` for the base model, ``finetune.yaml`` for every run
of the demo and the grid) with the run's own values filled in.
"""
from __future__ import annotations

import copy
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple, Union

import yaml

from smartclip.configlib import ConfigError, apply_overrides, check_types, config_from_dict, set_dotted

__all__ = ["DEMO_MODEL", "BaseRecipe", "DemoConfig", "Method", "METHODS", "REGIME_DATA", "RunSpec", "DemoPaths",
           "RunTask", "RECIPES", "load_recipe", "train_config", "demo_model_config", "eval_path", "plan_runs",
           "parse_grid", "plan_grid", "grid_label", "combinations"]

# smartclip-tiny's text side (width 64 x 3 layers, 248 tokens, embedding 64) with a small ResNet
# image tower (open_clip's ModifiedResNet, width 16, one block per stage). At this size a ViT
# barely learns the objects: supervised on concept presence for 600 steps, the demo's earlier
# ViT (width 64, 2 layers, patch 8) reached 48 mAP, this ResNet 99 (docs/demo.md).
DEMO_MODEL = {"base": "smartclip-tiny", "vision_cfg": {"layers": [1, 1, 1, 1], "width": 16}}

# the training recipes every run of the demo starts from (TrainConfig YAML, package data)
RECIPES = Path(__file__).parent / "recipes"

Regime = Literal["short", "long"]
MethodName = Literal["clip", "smartclip", "smartclip_fullmask", "smartclip_scale100"]


@dataclass
class BaseRecipe:
    """How the base model is pretrained (:func:`smartclip.scenes.base_model.build_base`, with
    ``recipes/base.yaml``); see docs/demo.md."""
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
    """Everything the demo does; see docs/demo.md for the reason behind each value. Checked
    by :mod:`smartclip.configlib` (types, choices, did-you-mean) and :meth:`validate`."""
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
    scale: Union[float, Literal["model"]] = "model"  # the base's own logit_scale.exp(), as the paper (OpenAI's is 100)
    ablation_scale: float = 100.0        # the smartclip_scale100 control
    batch_size: int = 64
    regimes: List[Regime] = field(default_factory=lambda: ["short", "long"])
    methods: List[MethodName] = field(default_factory=lambda: ["clip", "smartclip", "smartclip_fullmask",
                                                               "smartclip_scale100"])
    # the two controls (mask = 1, scale 100) run in these regimes only: the long-caption regime is
    # the paper's setting, and the default demo must fit in its time budget
    control_regimes: List[Regime] = field(default_factory=lambda: ["long"])
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
    model: Dict[str, Any] = field(default_factory=lambda: copy.deepcopy(DEMO_MODEL))
    device: str = "cpu"
    # runs in parallel processes, each with `threads` CPU threads. The tensors are tiny: on a busy
    # 2-core machine two threads in one process made a step ~20x slower than one (measured), so
    # the cores are used by running two runs at once instead.
    workers: int = 2
    threads: int = 1
    # keep every run's checkpoints (with the optimizer state) after evaluation; by default only the
    # weights of the runs the report's plots load are kept (docs/demo.md, "Outputs")
    keep_checkpoints: bool = False

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "DemoConfig":
        """A DemoConfig from ``{field: value}``; an unknown field is named with the close ones."""
        return config_from_dict(cls, values, prefix="demo")

    @classmethod
    def quick(cls, **changes) -> "DemoConfig":
        """A few steps on a few images, for tests and a first look: it checks the pipeline end to
        end; its numbers and verdicts measure nothing about the methods."""
        base = dict(num_train=64, num_test=24, num_single=16, num_val=24, num_val_single=16, finetune_steps=2,
                    finetune_warmup=1, scratch_steps=3, scratch_warmup=1, batch_size=16, probe_train_images=64,
                    eval_batch_size=64, curve_every=1)
        base.update(changes)
        return cls.from_dict(base)

    def validate(self) -> "DemoConfig":
        """Types and choices (:func:`smartclip.configlib.check_types`), then the values; raises
        :class:`~smartclip.configlib.ConfigError` naming the field. Returns ``self``."""
        check_types(self, "demo")
        for name in ("num_train", "num_test", "num_single", "finetune_steps", "batch_size", "probe_train_images",
                     "eval_batch_size", "threads", "workers", "scratch_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"demo.{name}: must be >= 1, got {getattr(self, name)}")
        if self.curve_every < 0:
            raise ConfigError(f"demo.curve_every: must be >= 0, got {self.curve_every}")
        for name in ("regimes", "methods"):
            if not getattr(self, name):
                raise ConfigError(f"demo.{name}: empty; give at least one")
        if self.batch_size > self.num_train:
            raise ConfigError(f"demo.batch_size: {self.batch_size} exceeds num_train {self.num_train}")
        if self.scale != "model" and not self.scale > 0:
            raise ConfigError(f"demo.scale: must be 'model' or a number > 0, got {self.scale!r}")
        return self


@dataclass(frozen=True)
class Method:
    objective: str
    full_mask: bool
    # the DemoConfig field that holds the fixed loss scale ("scale" or "ablation_scale"); None:
    # CLIP's learned temperature (loss.scale=null)
    scale_setting: Optional[str]
    label: str


METHODS = {
    "clip": Method("clip", False, None, "CLIP"),
    "smartclip": Method("smartclip", False, "scale", "SmartCLIP"),
    "smartclip_fullmask": Method("smartclip", True, "scale", "mask=1"),
    "smartclip_scale100": Method("smartclip", False, "ablation_scale", "SmartCLIP, scale 100"),
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


@dataclass(frozen=True)
class DemoPaths:
    """Where a demo's inputs and outputs are."""
    out: Path       # the output directory
    data_dir: Path  # the scene dataset
    base: Path      # the base model every fine-tune starts from
    init: Path      # the random-init checkpoint (its column, and --scratch runs)


@dataclass(frozen=True)
class RunTask:
    """One job for a worker process: train and evaluate ``run``, or, without a run, evaluate the
    starting checkpoint named ``start`` (``"random init"`` or ``"base"``) on ``split``.
    ``keep``: what of the run's checkpoints stays after evaluation: ``"all"``, ``"weights"``
    (the model, without the optimizer state) or ``"none"``."""
    cfg: DemoConfig
    paths: DemoPaths
    split: str = "test"
    run: Optional[RunSpec] = None
    start: Optional[str] = None
    keep: str = "all"

    @property
    def name(self) -> str:
        return self.run.name if self.run is not None else self.start


# ----------------------------------------------------------------------- configs
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


def load_recipe(name: str, settings: Dict[str, Any], overrides: Sequence[str] = ()):
    """The TrainConfig of ``recipes/<name>.yaml`` with the dotted ``settings`` (typed values)
    and then ``overrides`` (``key=value`` strings, read as YAML) set; not yet validated."""
    from smartclip.train import TrainConfig
    data = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    for key, value in settings.items():
        set_dotted(data, key, value)
    return config_from_dict(TrainConfig, apply_overrides(data, overrides))


def train_config(cfg: DemoConfig, run: RunSpec, paths: DemoPaths):
    """The TrainConfig of one run: ``recipes/finetune.yaml`` with the run's values."""
    method = METHODS[run.method]
    csv_name, caption_mode = REGIME_DATA[run.regime]
    scratch = run.stage == "scratch"
    return load_recipe("finetune", {
        "run_dir": str(paths.out / "runs" / run.name),
        "objective": method.objective,
        "seed": run.seed,
        "model.name": str(paths.init if scratch else paths.base),
        "data.train": str(paths.data_dir / csv_name),
        "data.caption_mode": caption_mode,
        "loss.align_weight": cfg.align_weight,
        "loss.sparsity_weight": cfg.sparsity_weight,
        "loss.scale": None if method.scale_setting is None else getattr(cfg, method.scale_setting),
        "loss.full_mask": method.full_mask,
        "optim.clip.lr": cfg.scratch_lr if scratch else cfg.finetune_lr,
        "optim.clip.weight_decay": cfg.scratch_weight_decay if scratch else cfg.finetune_weight_decay,
        "optim.clip.warmup_steps": cfg.scratch_warmup if scratch else cfg.finetune_warmup,
        "optim.mask.lr": cfg.mask_lr,
        "train.steps": run.steps,
        "train.global_batch": cfg.batch_size,
        "train.device": cfg.device,
    }, run.overrides)


def eval_path(out: Path, name: str, split: str) -> Path:
    """Where the evaluation of run (or starting point) ``name`` on ``split`` is kept."""
    slug = name.replace("/", "_").replace(" ", "_")
    return out / "evals" / (f"{slug}.json" if split == "test" else f"{split}/{slug}.json")


# -------------------------------------------------------------------------- runs
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


def combinations(grid: Dict[str, List[str]]) -> List[Tuple[str, ...]]:
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
    for combo in combinations(grid):
        slug = ",".join(combo).replace("/", "_").replace(" ", "")
        runs += [RunSpec(f"grid/{regime}/{method}/{slug}/seed{s}", "finetune", method, regime, s, cfg.finetune_steps,
                         combo) for s in range(seeds)]
    return runs
