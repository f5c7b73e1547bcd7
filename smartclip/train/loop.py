"""``train(cfg)``: the training loop, on one CPU or many GPUs under torchrun / SLURM.

The loop itself (:func:`_train`) reads top to bottom; its parts live with what they serve:
:class:`~smartclip.train.step.ContrastiveStep` computes a step's gradients and applies the
optimiser update, :class:`~smartclip.train.checkpoints.TrainState` holds the counters and the
objects a checkpoint saves and restores, and :class:`~smartclip.train.monitor.RunMonitor`
records each step with its throughput.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import smartclip
from smartclip.distributed import WorldInfo, detect_launch_env, world_info

from . import checkpoints as ckpt
from .config import ConfigError, TrainConfig, dump_config
from .monitor import RunMonitor, plot_metrics
from .optim import build_optimizer, build_scheduler
from .step import ContrastiveStep, StepOutput, build_loss

__all__ = ["train", "TrainResult", "TrainingStopped", "StepInfo"]

log = logging.getLogger("smartclip.train")


class TrainingStopped(RuntimeError):
    """The run stopped before its end (too many non-finite losses in a row); a checkpoint
    was written first. ``checkpoint`` is its path."""

    def __init__(self, message: str, checkpoint: Optional[Path] = None):
        super().__init__(message)
        self.checkpoint = checkpoint


@dataclass
class TrainResult:
    run_dir: Path
    checkpoint: Path                    # final checkpoint directory (``smartclip.load`` reads it)
    steps: int
    metrics: Dict[str, float] = field(default_factory=dict)     # the last training record
    eval: Dict[str, dict] = field(default_factory=dict)         # the last evaluation results
    nonfinite_skipped: int = 0
    data_stats: Dict[str, int] = field(default_factory=dict)

    def __getitem__(self, key):  # dict-style access for scripts
        return getattr(self, key)


@dataclass
class StepInfo:
    """Passed to ``on_step`` after every optimizer step (and its checkpoint, if any)."""
    step: int
    total_steps: int
    epoch: int
    metrics: Dict[str, float]
    model: torch.nn.Module


# ---------------------------------------------------------------------- environment
def _setup_distributed(train_cfg) -> tuple[WorldInfo, bool]:
    """Join the process group torchrun or SLURM describes. Returns (world, created_here)."""
    if dist.is_available() and dist.is_initialized():
        return world_info(), False
    env = detect_launch_env()
    if env is None or env.world_size == 1:
        return WorldInfo(), False
    if "MASTER_ADDR" not in os.environ:
        raise RuntimeError(
            f"{env.world_size} processes detected (rank {env.rank}) but MASTER_ADDR is not set; under SLURM "
            "export MASTER_ADDR=<first node> and MASTER_PORT before srun (see docs/training.md), or use torchrun")
    os.environ.setdefault("MASTER_PORT", "29500")
    use_cuda = torch.cuda.is_available() and train_cfg.device in ("auto", "cuda")
    backend = "nccl" if use_cuda else "gloo"
    if use_cuda:
        torch.cuda.set_device(env.local_rank % torch.cuda.device_count())
    from torch.distributed.rendezvous import rendezvous
    store, _, _ = next(rendezvous("env://", env.rank, env.world_size))
    # torchrun keeps one key-value store across restarts: a fresh prefix per attempt stops a
    # restarted rank from reading its peers' addresses from the attempt that died
    store = dist.PrefixStore(f"smartclip/attempt_{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}", store)
    dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size)
    return WorldInfo(env.rank, env.world_size, env.local_rank), True


def _device(train_cfg, world: WorldInfo) -> torch.device:
    if train_cfg.device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", world.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    if train_cfg.device == "cuda":
        return torch.device("cuda", world.local_rank % torch.cuda.device_count())
    return torch.device(train_cfg.device)


def _autocast_factory(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def _restarted_by_torchrun() -> bool:
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


# ------------------------------------------------------------------------------ model
def _build_model(cfg: TrainConfig, device: torch.device):
    model = smartclip.create_model(cfg.model.name, pretrained=cfg.model.pretrained, **cfg.model.options)
    # parameters the objective never uses are frozen, so DDP need not search for unused ones
    uses_mask = cfg.objective == "smartclip" and not cfg.loss.full_mask
    model.mask_net.requires_grad_(uses_mask)
    if uses_mask:  # its checkpoints carry a trained mask network; otherwise keep what was loaded
        model.mask_trained = True
    model.logit_scale.requires_grad_(cfg.objective == "clip" and cfg.loss.scale is None)
    if cfg.train.grad_checkpointing:
        model.set_grad_checkpointing(True)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)  # 4-D (convolution) weights only
    return model.to(device).train()


def _resolve_scale(cfg: TrainConfig, model) -> tuple[TrainConfig, str]:
    """``loss.scale=model`` becomes the starting checkpoint's own ``logit_scale.exp()``, read once
    before any step (and before resume weights load: the start is what defines it), so the run's
    ``config.yaml`` and every checkpoint carry the number. Returns a copy of ``cfg`` and where
    the scale comes from: ``model``, ``config`` or ``learned``."""
    if cfg.loss.scale is None:
        return cfg, "learned"
    if cfg.loss.scale != "model":
        return cfg, "config"
    cfg = copy.deepcopy(cfg)
    cfg.loss.scale = float(model.logit_scale.detach().exp().cpu())
    return cfg, "model"


def _check_eval_specs(cfg: TrainConfig):
    """Build every benchmark once, so a typo or missing data fails before training, not at step N."""
    try:
        from smartclip.eval import IncompleteBenchmarkError, expand_suites, get_benchmark
    except ImportError as e:
        raise ConfigError(f"eval.specs: periodic evaluation needs smartclip.eval ({e})") from e
    for spec in cfg.eval.specs:
        try:
            members, absent = expand_suites([spec], root=cfg.eval.root)  # a suite (paper-zeroshot) by its members
            if absent:
                raise ValueError("no data for " + "; ".join(f"{k} ({v})" for k, v in absent.items()))
            for member, _ in members:
                get_benchmark(member, root=cfg.eval.root)
        # an unknown name (KeyError), a missing folder or file (OSError), a bad layout or argument
        # (ValueError), missing images: configuration errors. Anything else is a bug and surfaces.
        except (KeyError, ValueError, OSError, IncompleteBenchmarkError) as e:
            raise ConfigError(f"eval.specs: {spec!r}: {e}") from e


def _run_eval(model, cfg: TrainConfig, device) -> Dict[str, dict]:
    from smartclip.eval import evaluate
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return evaluate(model, list(cfg.eval.specs), root=cfg.eval.root, device=device,
                            batch_size=cfg.eval.batch_size, progress=False)
    finally:
        model.train(was_training)


# ------------------------------------------------------------------------------- train
def train(cfg: TrainConfig, *, on_step: Optional[Callable[[StepInfo], None]] = None) -> TrainResult:
    """Train as ``cfg`` says and return the final checkpoint and metrics.

    Under torchrun or SLURM (several processes) it joins the process group, shards the data,
    wraps the model in DistributedDataParallel and gathers features with gradients.
    ``resume="latest"`` continues from the newest checkpoint in ``run_dir``; a restart by
    torchrun (``--max-restarts``) does the same automatically.
    """
    cfg.validate()
    world, created_group = _setup_distributed(cfg.train)
    try:
        return _train(cfg, world, on_step)
    finally:
        if created_group and dist.is_initialized():
            dist.destroy_process_group()


def _train(cfg: TrainConfig, world: WorldInfo, on_step) -> TrainResult:
    cfg.train.check_world(world.world_size)
    if cfg.eval.specs:  # on every process: an error on one alone would leave the others waiting
        _check_eval_specs(cfg)
    resume_from = _resume_point(cfg)
    device = _device(cfg.train, world)
    torch.manual_seed(cfg.seed)
    model = _build_model(cfg, device)
    cfg, scale_source = _resolve_scale(cfg, model)
    _open_run_dir(cfg, world, resume_from, model)
    state, step_fn = _build_state(cfg, world, model, device, scale_source)
    if resume_from is not None:
        state.restore(resume_from)
    total_steps = _total_steps(cfg, state.data)
    monitor = _start_monitor(cfg, world, state, total_steps, device, resume_from)
    data, image_format = state.data, torch.channels_last if cfg.train.channels_last else torch.preserve_format
    last_metrics, last_eval, epoch = {}, {}, data.state_dict()["epoch"]
    try:
        while state.step < total_steps:
            data.set_epoch(epoch)
            for batch in data:
                out = _step(state, step_fn, batch, device, image_format, total_steps, monitor)
                if state.nonfinite_in_row >= cfg.train.nonfinite_limit:
                    path = _save(state, monitor)
                    raise TrainingStopped(
                        f"stopped at step {state.step}: {state.nonfinite_in_row} non-finite losses in a row "
                        f"(train.nonfinite_limit={cfg.train.nonfinite_limit}); checkpoint {path}. Lower the "
                        "learning rates, use precision=bf16/fp32, or check the data", path)
                step = state.step
                if step % cfg.train.log_every == 0 or step == total_steps:
                    last_metrics = _record(monitor, state, out, epoch, device)
                if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < total_steps:
                    _save(state, monitor)
                if cfg.eval.specs and cfg.eval.every_steps and step % cfg.eval.every_steps == 0 \
                        and step < total_steps:
                    last_eval = _eval_step(model, cfg, device, world, monitor, step)
                if on_step is not None:
                    on_step(StepInfo(step, total_steps, epoch, last_metrics, model))
                if step >= total_steps:
                    break
            else:
                epoch += 1
        last_ckpt = _save(state, monitor)
        if cfg.eval.specs and cfg.eval.at_end:
            last_eval = _eval_step(model, cfg, device, world, monitor, state.step)
        data_stats = dict(data.stats())
        monitor.event(state.step, "end", checkpoint=str(last_ckpt), data=data_stats)
    finally:
        monitor.close()
    _plot(cfg, world)
    return TrainResult(run_dir=Path(cfg.run_dir), checkpoint=last_ckpt, steps=state.step, metrics=last_metrics,
                       eval=last_eval, nonfinite_skipped=state.nonfinite_total, data_stats=data_stats)


# -------------------------------------------------------------------- the loop's parts
def _resume_point(cfg: TrainConfig) -> Optional[Path]:
    """The checkpoint this run continues from, or None; refuses a run directory that holds
    checkpoints the config does not say to continue."""
    run_dir = Path(cfg.run_dir)
    resume = cfg.resume
    if resume is None and _restarted_by_torchrun():
        resume = "latest"
    resume_from = ckpt.resolve_resume(resume, run_dir)
    if resume_from is None and ckpt.latest_checkpoint(run_dir) is not None and resume is None:
        raise ConfigError(f"run_dir={run_dir} already holds checkpoints; pass resume=latest to continue that "
                          "run, or choose another run_dir")
    return resume_from


def _open_run_dir(cfg: TrainConfig, world: WorldInfo, resume_from: Optional[Path], model):
    """Write the resolved ``config.yaml``; on a resume, load the checkpoint's weights."""
    if world.is_main:
        Path(cfg.run_dir).mkdir(parents=True, exist_ok=True)
        dump_config(cfg, Path(cfg.run_dir) / "config.yaml")
    _barrier()
    if resume_from is not None:
        from smartclip.checkpoint import read_weights  # open_clip: imported when a run starts
        state, _ = read_weights(resume_from)
        model.load_state_dict(state, strict=True)


def _build_state(cfg: TrainConfig, world: WorldInfo, model, device, scale_source: str):
    """The data, the optimizer and its schedule, the loss and the step: ``(TrainState, step)``."""
    from smartclip.data import build_train_data  # the data readers: imported when a run starts
    local_batch = cfg.train.global_batch // world.world_size
    data = build_train_data(cfg.data, preprocess=smartclip.image_transform(model, train=cfg.train.augment),
                            tokenizer=smartclip.get_tokenizer(model), batch_size=local_batch,
                            rank=world.rank, world_size=world.world_size, seed=cfg.seed,
                            preprocess_cfg=model.preprocess_cfg)
    forward_module = model
    if world.world_size > 1:
        with warnings.catch_warnings():  # newer torch renames broadcast_buffers; the meaning is the same
            warnings.simplefilter("ignore", FutureWarning)
            # the only buffers are constant (the frozen positional table, the causal mask)
            forward_module = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    optimizer = build_optimizer(model, cfg.optim)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
    loss_fn = build_loss(cfg.objective, cfg.loss)
    step_fn = ContrastiveStep(model, loss_fn, objective=cfg.objective, full_mask=cfg.loss.full_mask,
                              micro_batch=cfg.train.micro_batch, forward_module=forward_module,
                              autocast=_autocast_factory(cfg.train.precision, device), scaler=scaler)
    scheduler = build_scheduler(optimizer, cfg.optim, _total_steps(cfg, data))
    state = ckpt.TrainState(cfg, model, optimizer, scheduler, scaler, loss_fn, data, rank=world.rank,
                            world_size=world.world_size, scale_source=scale_source)
    return state, step_fn


def _total_steps(cfg: TrainConfig, data) -> int:
    return cfg.train.steps if cfg.train.steps is not None else cfg.train.epochs * len(data)


def _start_monitor(cfg: TrainConfig, world: WorldInfo, state, total_steps: int, device,
                   resume_from: Optional[Path]) -> RunMonitor:
    monitor = RunMonitor(Path(cfg.run_dir), total_steps=total_steps, start_step=state.step, enabled=world.is_main,
                         progress=cfg.train.progress, tensorboard=cfg.train.tensorboard)
    scale = {"loss_scale": cfg.loss.scale, "loss_scale_source": state.scale_source}
    if resume_from is not None:
        monitor.event(state.step, "resume", checkpoint=str(resume_from), **scale)
        monitor.message(f"resumed from {resume_from} at step {state.step}; "
                        f"{_describe_scale(cfg, state.scale_source)}")
    else:
        monitor.event(0, "start", world_size=world.world_size, device=str(device), total_steps=total_steps,
                      local_batch=cfg.train.global_batch // world.world_size, batches_per_epoch=len(state.data),
                      **scale)
        monitor.message(_describe_scale(cfg, state.scale_source))
    return monitor


def _step(state, step_fn: ContrastiveStep, batch, device, image_format, total_steps: int, monitor) -> StepOutput:
    """One optimizer step on ``batch`` (skipped when the loss is not finite); advances the
    schedule and the counters. The returned terms carry the learning rates the step used."""
    model, optimizer, cfg = state.model, state.optimizer, state.cfg
    images = batch["images"].to(device, non_blocking=True, memory_format=image_format)
    tokens = batch["tokens"].to(device, non_blocking=True)
    image_index = batch["image_index"].to(device, non_blocking=True)
    optimizer.zero_grad(set_to_none=True)
    if model.mask_gate == "hard_concrete":  # annealed gates (an opt-in variant)
        model.mask_temperature = _gate_temperature(cfg.loss.gate_temperature, state.step, total_steps)
    out = step_fn(images, tokens, image_index)
    if model.mask_gate == "hard_concrete":
        out.terms["gate_temperature"] = model.mask_temperature
    if out.finite:
        state.nonfinite_in_row = 0
        step_fn.update(optimizer, out, cfg.optim.grad_clip)
    else:
        state.nonfinite_total += 1
        state.nonfinite_in_row += 1
        optimizer.zero_grad(set_to_none=True)
        monitor.event(state.step + 1, "nonfinite_loss", in_row=state.nonfinite_in_row, total=state.nonfinite_total)
        monitor.message(f"step {state.step + 1}: non-finite loss {out.terms.get('loss')}; step skipped "
                        f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in total)")
    out.terms.update({f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups})
    with warnings.catch_warnings():  # a skipped step still advances the schedule
        warnings.simplefilter("ignore", UserWarning)
        state.scheduler.step()
    state.step += 1
    state.samples_seen += cfg.train.global_batch
    return out


def _save(state, monitor: RunMonitor) -> Path:
    path = state.save()
    monitor.event(state.step, "checkpoint", path=str(path))
    return path


def _record(monitor: RunMonitor, state, out: StepOutput, epoch: int, device) -> Dict[str, float]:
    """The training record of this step (loss terms, learning rates, counters, throughput)."""
    after = {"nonfinite_skipped": state.nonfinite_total}
    if state.scaler is not None:
        after["loss_scale"] = float(state.scaler.get_scale())
    if device.type == "cuda":
        after["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
    return monitor.record_step(state.step, {**out.terms, "epoch": epoch, "samples_seen": state.samples_seen},
                               batch=state.cfg.train.global_batch, after=after)


def _plot(cfg: TrainConfig, world: WorldInfo):
    if world.is_main and cfg.train.plots:
        try:
            plot_metrics(Path(cfg.run_dir))
        except ImportError:
            log.info("matplotlib is not installed; no plots")


def _gate_temperature(schedule, step: int, total_steps: int) -> float:
    """Geometric interpolation from ``schedule[0]`` at the first step to ``schedule[1]`` at the last."""
    start, end = schedule
    return float(start * (end / start) ** (step / max(1, total_steps - 1)))


def _describe_scale(cfg: TrainConfig, source: str) -> str:
    if source == "learned":
        return "loss scale learned (CLIP's temperature)"
    origin = "the starting checkpoint's own logit_scale.exp()" if source == "model" else "fixed in the config"
    return f"loss scale {cfg.loss.scale:.4g} ({origin})"


def _eval_step(model, cfg, device, world, monitor, step) -> Dict[str, dict]:
    results: Dict[str, dict] = {}
    if world.is_main:
        results = _run_eval(model, cfg, device)
        monitor.eval_results(step, results)
    _barrier()
    return results
