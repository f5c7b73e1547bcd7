"""``train(cfg)``: the training loop, on one CPU or many GPUs under torchrun / SLURM."""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
import torch.distributed as dist

from smartclip.distributed import WorldInfo, detect_launch_env, world_info

from . import checkpoints as ckpt
from .config import ConfigError, TrainConfig, config_to_dict, dump_config, resume_differences
from .monitor import RunMonitor, plot_metrics
from .optim import build_optimizer, build_scheduler
from .step import ContrastiveStep, build_loss

__all__ = ["train", "TrainResult", "TrainingStopped", "StepInfo"]

log = logging.getLogger("smartclip.train")
_LOGIT_SCALE_MAX = math.log(100.0)  # open_clip clamps the learned temperature here


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
    import smartclip
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
        from smartclip.eval import expand_suites, get_benchmark
    except ImportError as e:
        raise ConfigError(f"eval.specs: periodic evaluation needs smartclip.eval ({e})") from e
    for spec in cfg.eval.specs:
        try:
            members, absent = expand_suites([spec], root=cfg.eval.root)  # a suite (paper-zeroshot) by its members
            if absent:
                raise ValueError("no data for " + "; ".join(f"{k} ({v})" for k, v in absent.items()))
            for member, _ in members:
                get_benchmark(member, root=cfg.eval.root)
        except Exception as e:  # unknown name, missing folder, bad layout: all configuration errors here
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
    import smartclip
    from smartclip.data import build_train_data

    cfg.train.check_world(world.world_size)
    if cfg.eval.specs:  # on every process: an error on one alone would leave the others waiting
        _check_eval_specs(cfg)
    run_dir = Path(cfg.run_dir)
    resume = cfg.resume
    if resume is None and _restarted_by_torchrun():
        resume = "latest"
    resume_from = ckpt.resolve_resume(resume, run_dir)
    if resume_from is None and ckpt.latest_checkpoint(run_dir) is not None and resume is None:
        raise ConfigError(f"run_dir={run_dir} already holds checkpoints; pass resume=latest to continue that "
                          "run, or choose another run_dir")
    device = _device(cfg.train, world)
    torch.manual_seed(cfg.seed)
    model = _build_model(cfg, device)
    cfg, scale_source = _resolve_scale(cfg, model)
    if world.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    _barrier()
    if resume_from is not None:
        from smartclip.checkpoint import read_weights
        state, _ = read_weights(resume_from)
        model.load_state_dict(state, strict=True)

    local_batch = cfg.train.global_batch // world.world_size
    data = build_train_data(cfg.data, preprocess=smartclip.image_transform(model, train=cfg.train.augment),
                            tokenizer=smartclip.get_tokenizer(model), batch_size=local_batch,
                            rank=world.rank, world_size=world.world_size, seed=cfg.seed,
                            preprocess_cfg=model.preprocess_cfg)
    total_steps = cfg.train.steps if cfg.train.steps is not None else cfg.train.epochs * len(data)

    forward_module = model
    if world.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel
        with warnings.catch_warnings():  # newer torch renames broadcast_buffers; the meaning is the same
            warnings.simplefilter("ignore", FutureWarning)
            # the only buffers are constant (the frozen positional table, the causal mask)
            forward_module = DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)
    optimizer = build_optimizer(model, cfg.optim)
    scheduler = build_scheduler(optimizer, cfg.optim, total_steps)
    scaler = torch.amp.GradScaler(device.type) if cfg.train.precision == "fp16" else None
    loss_fn = build_loss(cfg.objective, cfg.loss)
    step_fn = ContrastiveStep(model, loss_fn, objective=cfg.objective, full_mask=cfg.loss.full_mask,
                              micro_batch=cfg.train.micro_batch, forward_module=forward_module,
                              autocast=_autocast_factory(cfg.train.precision, device), scaler=scaler)

    step, nonfinite_total, nonfinite_row, samples_seen = 0, 0, 0, 0
    if resume_from is not None:
        trainer = ckpt.load_trainer_state(resume_from)
        diffs = resume_differences(trainer["config"], cfg) if cfg.resume_check and "config" in trainer else []
        if diffs:
            raise ConfigError(f"resume={resume_from}: the run would not continue the same computation; settings "
                              "differ from the checkpoint's:\n  " + "\n  ".join(diffs) +
                              "\nUse the checkpoint's settings (its run directory's config.yaml), or "
                              "resume_check=false to continue anyway as a different run")
        if trainer["world_size"] != world.world_size:
            raise ConfigError(f"resume={resume_from}: written by {trainer['world_size']} process(es), this run has "
                              f"{world.world_size}; the data order and negatives would differ")
        optimizer.load_state_dict(trainer["optimizer"])
        scheduler.load_state_dict(trainer["scheduler"])
        if scaler is not None and trainer.get("scaler"):
            scaler.load_state_dict(trainer["scaler"])
        if trainer.get("loss"):  # the target-fraction variant's multiplier
            loss_fn.load_state_dict(trainer["loss"])
        step, samples_seen = trainer["step"], trainer["samples_seen"]
        nonfinite_total, nonfinite_row = trainer["nonfinite_total"], trainer["nonfinite_in_row"]
        rank_state = ckpt.load_rank_state(resume_from, world.rank)
        data.load_state_dict(rank_state["data"])
        ckpt.set_rng_state(rank_state["rng"])

    monitor = RunMonitor(run_dir, total_steps=total_steps, start_step=step, enabled=world.is_main,
                         progress=cfg.train.progress, tensorboard=cfg.train.tensorboard)
    if resume_from is not None:
        monitor.event(step, "resume", checkpoint=str(resume_from), loss_scale=cfg.loss.scale,
                      loss_scale_source=scale_source)
        monitor.message(f"resumed from {resume_from} at step {step}; {_describe_scale(cfg, scale_source)}")
    else:
        monitor.event(0, "start", world_size=world.world_size, device=str(device), total_steps=total_steps,
                      local_batch=local_batch, batches_per_epoch=len(data), loss_scale=cfg.loss.scale,
                      loss_scale_source=scale_source)
        monitor.message(_describe_scale(cfg, scale_source))

    def save(at_step: int) -> Path:
        trainer_state = {"step": at_step, "samples_seen": samples_seen, "world_size": world.world_size,
                         "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else {},
                         "nonfinite_total": nonfinite_total, "nonfinite_in_row": nonfinite_row,
                         "config": config_to_dict(cfg), "loss": loss_fn.state_dict()}
        rank_state = {"rng": ckpt.rng_state(), "data": data.state_dict()}
        extra = {"training": {"step": at_step, "objective": cfg.objective, "run_dir": str(run_dir),
                              "loss_scale": cfg.loss.scale, "loss_scale_source": scale_source}}
        path = ckpt.save_training_checkpoint(run_dir, at_step, model=model, trainer_state=trainer_state,
                                             rank_state=rank_state, rank=world.rank,
                                             keep_last=cfg.checkpoint.keep_last, extra=extra)
        monitor.event(at_step, "checkpoint", path=str(path))
        return path

    last_metrics: Dict[str, float] = {}
    last_eval: Dict[str, dict] = {}
    last_ckpt: Optional[Path] = None
    epoch = data.state_dict()["epoch"]
    tick, tick_step = time.perf_counter(), step
    image_format = torch.channels_last if cfg.train.channels_last else torch.preserve_format
    try:
        while step < total_steps:
            data.set_epoch(epoch)
            for batch in data:
                images = batch["images"].to(device, non_blocking=True,
                                            memory_format=image_format)
                tokens = batch["tokens"].to(device, non_blocking=True)
                image_index = batch["image_index"].to(device, non_blocking=True)
                optimizer.zero_grad(set_to_none=True)
                if model.mask_gate == "hard_concrete":  # annealed gates (an opt-in variant)
                    model.mask_temperature = _gate_temperature(cfg.loss.gate_temperature, step, total_steps)
                out = step_fn(images, tokens, image_index)
                if model.mask_gate == "hard_concrete":
                    out.terms["gate_temperature"] = model.mask_temperature
                if out.finite:
                    nonfinite_row = 0
                    if hasattr(loss_fn, "dual_step"):  # the target-fraction variant's multiplier
                        loss_fn.dual_step(out.terms["sparsity"])
                    if cfg.optim.grad_clip is not None:
                        if scaler is not None:
                            scaler.unscale_(optimizer)
                        out.terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(
                            model.parameters(), cfg.optim.grad_clip))
                    if scaler is not None:
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        optimizer.step()
                    if model.logit_scale.requires_grad:
                        with torch.no_grad():
                            model.logit_scale.clamp_(0, _LOGIT_SCALE_MAX)
                else:
                    nonfinite_total += 1
                    nonfinite_row += 1
                    optimizer.zero_grad(set_to_none=True)
                    monitor.event(step + 1, "nonfinite_loss", in_row=nonfinite_row, total=nonfinite_total)
                    monitor.message(f"step {step + 1}: non-finite loss {out.terms.get('loss')}; step skipped "
                                    f"({nonfinite_row} in a row, {nonfinite_total} in total)")
                lrs = {f"lr_{g['name']}": g["lr"] for g in optimizer.param_groups}
                with warnings.catch_warnings():  # a skipped step still advances the schedule
                    warnings.simplefilter("ignore", UserWarning)
                    scheduler.step()
                step += 1
                samples_seen += cfg.train.global_batch

                if nonfinite_row >= cfg.train.nonfinite_limit:
                    path = save(step)
                    raise TrainingStopped(
                        f"stopped at step {step}: {nonfinite_row} non-finite losses in a row "
                        f"(train.nonfinite_limit={cfg.train.nonfinite_limit}); checkpoint {path}. Lower the "
                        "learning rates, use precision=bf16/fp32, or check the data", path)

                if step % cfg.train.log_every == 0 or step == total_steps:
                    now = time.perf_counter()
                    elapsed = max(now - tick, 1e-9)
                    record = {**out.terms, **lrs, "epoch": epoch, "samples_seen": samples_seen,
                              "steps_per_s": (step - tick_step) / elapsed,
                              "samples_per_s": (step - tick_step) * cfg.train.global_batch / elapsed,
                              "nonfinite_skipped": nonfinite_total}
                    if scaler is not None:
                        record["loss_scale"] = float(scaler.get_scale())
                    if device.type == "cuda":
                        record["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2 ** 30
                    monitor.train_step(step, record, advance=step - tick_step)
                    last_metrics = record
                    tick, tick_step = now, step

                if cfg.checkpoint.every_steps and step % cfg.checkpoint.every_steps == 0 and step < total_steps:
                    last_ckpt = save(step)
                if cfg.eval.specs and cfg.eval.every_steps and step % cfg.eval.every_steps == 0 \
                        and step < total_steps:
                    last_eval = _eval_step(model, cfg, device, world, monitor, step)
                if on_step is not None:
                    on_step(StepInfo(step, total_steps, epoch, last_metrics, model))
                if step >= total_steps:
                    break
            else:
                epoch += 1
        last_ckpt = save(step)
        if cfg.eval.specs and cfg.eval.at_end:
            last_eval = _eval_step(model, cfg, device, world, monitor, step)
        data_stats = dict(data.stats())
        monitor.event(step, "end", checkpoint=str(last_ckpt), data=data_stats)
    finally:
        monitor.close()
    if world.is_main and cfg.train.plots:
        try:
            plot_metrics(run_dir)
        except ImportError:
            log.info("matplotlib is not installed; no plots")
    return TrainResult(run_dir=run_dir, checkpoint=last_ckpt, steps=step, metrics=last_metrics, eval=last_eval,
                       nonfinite_skipped=nonfinite_total, data_stats=data_stats)


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
