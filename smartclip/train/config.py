"""Typed training configuration: dataclasses, YAML files and dotted command-line overrides.

An experiment is one YAML file in ``configs/``; every key can be overridden with
``section.key=value``. Unknown keys, wrong types and impossible values raise
:class:`ConfigError` naming the key and what would be valid, before any work starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional, Sequence, Union

import yaml

from smartclip.configlib import (ConfigError, apply_overrides, check_types, config_from_dict, config_to_dict,
                                 non_negative)

__all__ = ["ConfigError", "ModelConfig", "LossConfig", "OptimGroupConfig", "OptimConfig", "LoopConfig",
           "CheckpointConfig", "EvalConfig", "TrainConfig", "load_config", "apply_overrides",
           "config_to_dict", "config_from_dict", "dump_config"]

def _data_config_class():
    try:
        from smartclip.data import DataConfig
    except ImportError as e:  # the data package is a separate part of the project
        raise ConfigError(f"data: smartclip.data.DataConfig is not importable ({e})") from e
    return DataConfig


def _default_data_config():
    return _data_config_class()()


# ----------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """Which model to train. ``options``: keep, ratio, soft_mask, mask_padding (see
    ``smartclip.create_model``)."""
    name: str = "smartclip-micro"
    pretrained: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)

    def validate(self, prefix="model"):
        from smartclip.model import DEFAULT_OPTIONS
        unknown = sorted(set(self.options) - set(DEFAULT_OPTIONS))
        if unknown:
            raise ConfigError(f"{prefix}.options: unknown option(s) {unknown}; valid: {sorted(DEFAULT_OPTIONS)}")
        if not self.name:
            raise ConfigError(f"{prefix}.name: empty; give a name from `smartclip models` or a checkpoint path")


@dataclass
class LossConfig:
    """Loss weights. ``scale``: the fixed logit scale (docs/method.md §3: 100, which is OpenAI CLIP's own
    learned ``logit_scale.exp()``); ``model``: the starting checkpoint's own learned
    ``logit_scale.exp()``, read once when the run starts and written as a number into the run's
    ``config.yaml`` (so a resume uses the same value); ``null`` learns CLIP's temperature
    (``objective=clip`` only). ``full_mask`` forces the mask to all ones: SmartCLIP's loss with
    m = 1, a control.

    Opt-in mask variants beyond the released recipe (docs/architecture.md, "Mask variants"):
    ``sparsity_target`` (a fraction in (0, 1)) turns ``sparsity_weight`` into the starting value of
    a Lagrange multiplier raised or lowered by dual ascent (step ``dual_lr``) until the active
    fraction meets the target; ``union_weight`` / ``exclusive_weight`` weigh the sentence-structure
    terms (a caption's mask is the union of its sentences' masks; sentences of one caption select
    different dimensions); ``gate_temperature`` ``[start, end]`` anneals the hard-concrete gates of
    ``model.options.mask_gate=hard_concrete`` geometrically over the run."""
    align_weight: float = 10.0
    sparsity_weight: float = 2.0
    scale: Union[float, Literal["model"], None] = 100.0
    full_mask: bool = False
    local_loss: bool = True
    sparsity_target: Optional[float] = None
    dual_lr: float = 10.0
    union_weight: float = 0.0
    exclusive_weight: float = 0.0
    gate_temperature: List[float] = field(default_factory=lambda: [2 / 3, 2 / 3])

    def validate(self, prefix="loss"):
        non_negative(self.align_weight, f"{prefix}.align_weight")
        non_negative(self.sparsity_weight, f"{prefix}.sparsity_weight")
        if isinstance(self.scale, float) and not (self.scale > 0 and math.isfinite(self.scale)):
            raise ConfigError(f"{prefix}.scale: must be a number > 0, 'model' (the starting checkpoint's own "
                              f"logit_scale.exp()) or null (learned), got {self.scale}")
        if self.sparsity_target is not None and not 0 < self.sparsity_target < 1:
            raise ConfigError(f"{prefix}.sparsity_target: a fraction of active dimensions in (0, 1) or null, "
                              f"got {self.sparsity_target}")
        non_negative(self.dual_lr, f"{prefix}.dual_lr")
        non_negative(self.union_weight, f"{prefix}.union_weight")
        non_negative(self.exclusive_weight, f"{prefix}.exclusive_weight")
        if len(self.gate_temperature) != 2 or not all(t > 0 and math.isfinite(t) for t in self.gate_temperature):
            raise ConfigError(f"{prefix}.gate_temperature: [start, end], two numbers > 0, got {self.gate_temperature}")

    @property
    def uses_variants(self) -> bool:
        return self.sparsity_target is not None or self.union_weight > 0 or self.exclusive_weight > 0


@dataclass
class OptimGroupConfig:
    """AdamW settings and learning-rate schedule of one parameter group."""
    lr: float = 1e-6
    weight_decay: float = 0.01
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8

    def validate(self, prefix):
        non_negative(self.lr, f"{prefix}.lr")
        non_negative(self.weight_decay, f"{prefix}.weight_decay")
        non_negative(self.warmup_steps, f"{prefix}.warmup_steps")
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise ConfigError(f"{prefix}.betas: need two numbers in [0, 1), got {self.betas}")
        if not self.eps > 0:
            raise ConfigError(f"{prefix}.eps: must be > 0, got {self.eps}")


@dataclass
class OptimConfig:
    """Two AdamW groups (docs/method.md §4): the CLIP weights and ``model.mask_net``."""
    clip: OptimGroupConfig = field(default_factory=lambda: OptimGroupConfig(1e-6, 0.01, 200, "cosine"))
    mask: OptimGroupConfig = field(default_factory=lambda: OptimGroupConfig(1e-3, 0.0, 0, "cosine"))
    grad_clip: Optional[float] = None

    def validate(self, prefix="optim"):
        self.clip.validate(f"{prefix}.clip")
        self.mask.validate(f"{prefix}.mask")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"{prefix}.grad_clip: must be > 0 or null, got {self.grad_clip}")


@dataclass
class LoopConfig:
    """Length, batch and numerics of the run.

    ``global_batch``: images per optimizer step over all processes. ``micro_batch``: images
    per forward pass within a process (gradient caching: same negatives and gradients as the
    whole batch); ``null`` = the whole local batch at once.
    """
    steps: Optional[int] = None
    epochs: Optional[int] = None
    global_batch: int = 1024
    micro_batch: Optional[int] = None
    precision: Literal["fp32", "fp16", "bf16"] = "fp32"
    grad_checkpointing: bool = False
    # convolution weights and image batches in channels-last memory order (ResNet image towers;
    # a ViT's patch embedding): the same values up to float rounding, speed depends on the device
    channels_last: bool = False
    augment: bool = False
    device: str = "auto"
    nonfinite_limit: int = 5
    log_every: int = 1
    progress: bool = True
    plots: bool = True
    tensorboard: bool = True

    def validate(self, prefix="train"):
        if (self.steps is None) == (self.epochs is None):
            raise ConfigError(f"{prefix}.steps / {prefix}.epochs: set exactly one of them "
                              f"(got steps={self.steps}, epochs={self.epochs})")
        for name in ("steps", "epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ConfigError(f"{prefix}.{name}: must be >= 1, got {value}")
        if self.global_batch < 1:
            raise ConfigError(f"{prefix}.global_batch: must be >= 1, got {self.global_batch}")
        if self.micro_batch is not None and self.micro_batch < 1:
            raise ConfigError(f"{prefix}.micro_batch: must be >= 1 or null, got {self.micro_batch}")
        if self.nonfinite_limit < 1:
            raise ConfigError(f"{prefix}.nonfinite_limit: must be >= 1, got {self.nonfinite_limit}")
        if self.log_every < 1:
            raise ConfigError(f"{prefix}.log_every: must be >= 1, got {self.log_every}")
        if not (self.device in ("auto", "cpu", "cuda", "mps") or self.device.startswith("cuda:")):
            raise ConfigError(f"{prefix}.device: {self.device!r} is not valid; use auto, cpu, cuda, cuda:N or mps")

    def check_world(self, world_size: int, prefix="train"):
        """Batch sizes that must divide evenly once the number of processes is known."""
        if self.global_batch % world_size:
            raise ConfigError(f"{prefix}.global_batch={self.global_batch} is not divisible by the "
                              f"{world_size} processes; use a multiple of {world_size}")
        local = self.global_batch // world_size
        if self.micro_batch is not None and (self.micro_batch > local or local % self.micro_batch):
            divisors = [d for d in range(1, local + 1) if local % d == 0]
            raise ConfigError(f"{prefix}.micro_batch={self.micro_batch} must divide the local batch of {local} "
                              f"images (global_batch {self.global_batch} / {world_size} processes); "
                              f"valid: {divisors} or null")


@dataclass
class CheckpointConfig:
    """``every_steps``: 0 writes only the final checkpoint. ``keep_last``: older ones are deleted."""
    every_steps: int = 500
    keep_last: int = 3

    def validate(self, prefix="checkpoint"):
        non_negative(self.every_steps, f"{prefix}.every_steps")
        if self.keep_last < 1:
            raise ConfigError(f"{prefix}.keep_last: must be >= 1, got {self.keep_last}")


@dataclass
class EvalConfig:
    """Periodic evaluation with ``smartclip.eval.evaluate``: ``specs`` are benchmark specs,
    run every ``every_steps`` (0: never periodically) and at the end when ``at_end``."""
    specs: List[str] = field(default_factory=list)
    every_steps: int = 0
    at_end: bool = True
    root: Optional[str] = None
    batch_size: int = 64

    def validate(self, prefix="eval"):
        non_negative(self.every_steps, f"{prefix}.every_steps")
        if self.batch_size < 1:
            raise ConfigError(f"{prefix}.batch_size: must be >= 1, got {self.batch_size}")


@dataclass
class TrainConfig:
    """One training run. Compose in code or load with :func:`load_config`."""
    run_dir: str = "runs/train"
    objective: Literal["smartclip", "clip"] = "smartclip"
    seed: int = 0
    resume: Optional[str] = None
    # refuse to resume when a setting that changes the computation differs from the checkpoint's
    resume_check: bool = True
    model: ModelConfig = field(default_factory=ModelConfig)
    data: Any = field(default_factory=_default_data_config, metadata={"type": _data_config_class})
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: LoopConfig = field(default_factory=LoopConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def validate(self, check_data: bool = True) -> "TrainConfig":
        """Check every section (``data`` only when ``check_data``: printing a config needs no
        data); raises :class:`ConfigError`. Returns ``self``."""
        check_types(self)
        if not self.run_dir:
            raise ConfigError("run_dir: empty; give the directory the run writes to")
        if self.loss.scale is None and self.objective != "clip":
            raise ConfigError("loss.scale: null (a learned temperature) needs objective=clip; "
                              "the modular loss uses a fixed scale (100 in the paper)")
        if self.loss.full_mask and self.objective != "smartclip":
            raise ConfigError("loss.full_mask: only meaningful with objective=smartclip")
        if self.loss.uses_variants and (self.objective != "smartclip" or self.loss.full_mask):
            raise ConfigError("loss.sparsity_target / union_weight / exclusive_weight: mask variants need "
                              "objective=smartclip with a predicted mask (loss.full_mask=false)")
        self.model.validate()
        self.loss.validate()
        self.optim.validate()
        self.train.validate()
        self.checkpoint.validate()
        self.eval.validate()
        validate_data = getattr(self.data, "validate", None) if check_data else None
        if validate_data is not None:
            try:
                validate_data()
            except ConfigError:
                raise
            except ValueError as e:
                raise ConfigError(str(e)) from e
        return self


# ------------------------------------------------------------------------ resume
# settings a resumed run may change: where and how it reports, not what it computes
RESUME_FREE_KEYS = ("run_dir", "resume", "resume_check", "train.progress", "train.plots", "train.tensorboard",
                    "train.log_every", "train.device", "data.num_workers", "checkpoint.", "eval.")


def _flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and value and key != "options":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def resume_differences(saved: Dict[str, Any], cfg) -> List[str]:
    """Settings of ``cfg`` that differ from the ``saved`` config of a checkpoint and would change
    what is computed, as ``"key: checkpoint X, now Y"``."""
    old, new = _flatten(saved), _flatten(config_to_dict(cfg))
    diffs = []
    for key in sorted(set(old) | set(new)):
        if any(key == free or (free.endswith(".") and key.startswith(free)) for free in RESUME_FREE_KEYS):
            continue
        if old.get(key) != new.get(key):
            diffs.append(f"{key}: checkpoint {old.get(key)!r}, now {new.get(key)!r}")
    return diffs


def dump_config(cfg, path) -> Path:
    """Write the resolved config as YAML (what ``config.yaml`` in a run directory holds)."""
    path = Path(path)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path


# ------------------------------------------------------------------------- loading
def load_config(path=None, overrides: Sequence[str] = (), *, check_data: bool = True) -> TrainConfig:
    """A validated :class:`TrainConfig` from a YAML file (or defaults when ``path`` is None)
    with dotted ``key=value`` overrides applied (``check_data=False``: the data need not exist)."""
    data: Dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: no such config file")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from e
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of sections at the top level, got {type(data).__name__}")
    try:
        data = apply_overrides(data, overrides)
        cfg = config_from_dict(TrainConfig, data)
        return cfg.validate(check_data=check_data)
    except ConfigError as e:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{e}") from e
