"""Training checkpoints: the model in the core format plus everything needed to continue.

``run_dir/checkpoints/step_00000120/`` holds::

    smartclip_config.json, model.safetensors   the model (``smartclip.load`` reads it)
    trainer_state.pt     optimizer, scheduler, loss scaler, step, counters
    rank_<r>.pt          per process: RNG states and data position

A checkpoint is written into ``.step_00000120.tmp`` and renamed when complete, so a
process killed mid-write leaves no half checkpoint; only the last ``keep_last`` are kept.
Everything loads with ``torch.load(weights_only=True)``.
"""
from __future__ import annotations

import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List, Optional

import numpy as np
import torch
import torch.distributed as dist

from .config import ConfigError, config_to_dict, resume_differences

__all__ = ["checkpoint_dir_name", "list_checkpoints", "latest_checkpoint", "resolve_resume",
           "save_training_checkpoint", "load_trainer_state", "load_rank_state", "rng_state", "set_rng_state",
           "TrainState", "TRAINER_STATE", "CHECKPOINTS"]

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.pt"
_NAME = re.compile(r"^step_(\d+)$")


def checkpoint_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def list_checkpoints(run_dir) -> List[Path]:
    """Complete checkpoints of a run, oldest first."""
    root = Path(run_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir()
             if (m := _NAME.match(p.name)) and (p / TRAINER_STATE).is_file()]
    return [p for _, p in sorted(found)]


def latest_checkpoint(run_dir) -> Optional[Path]:
    found = list_checkpoints(run_dir)
    return found[-1] if found else None


def resolve_resume(resume: Optional[str], run_dir) -> Optional[Path]:
    """``None``, ``"latest"`` (the newest complete checkpoint of ``run_dir``, or None when there
    is none yet) or a checkpoint directory."""
    if resume is None:
        return None
    if resume == "latest":
        return latest_checkpoint(run_dir)
    path = Path(resume)
    if path.is_dir() and (path / CHECKPOINTS).is_dir():  # a run directory
        latest = latest_checkpoint(path)
        if latest is None:
            raise ConfigError(f"resume={resume}: the run directory has no complete checkpoint")
        return latest
    if not (path / TRAINER_STATE).is_file():
        raise ConfigError(f"resume={resume}: not a training checkpoint (no {TRAINER_STATE}); give "
                                f"'latest', a run directory or a checkpoints/step_* directory")
    return path


# ------------------------------------------------------------------------------ RNG
def rng_state() -> dict:
    """Python, NumPy, torch CPU and CUDA generator states, as tensors and plain values."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": random.getstate(), "torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict):
    random.setstate(_as_tuple(state["python"]))
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _as_tuple(x):
    return tuple(_as_tuple(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------------------- saving
def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def save_training_checkpoint(run_dir, step: int, *, model, trainer_state: dict, rank_state: dict,
                             rank: int = 0, keep_last: int = 3, extra: Optional[dict] = None) -> Path:
    """Write checkpoint ``step`` collectively (every process calls this). Returns its path."""
    from smartclip.checkpoint import save_checkpoint

    root = Path(run_dir) / CHECKPOINTS
    final = root / checkpoint_dir_name(step)
    tmp = root / f".{final.name}.tmp"
    if rank == 0:
        root.mkdir(parents=True, exist_ok=True)
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    _barrier()
    if rank == 0:
        save_checkpoint(model, tmp, extra=extra)
        torch.save(trainer_state, tmp / TRAINER_STATE)
    torch.save(rank_state, tmp / f"rank_{rank}.pt")
    _barrier()
    if rank == 0:
        if final.exists():  # the same step written again (e.g. a stop right after a periodic save)
            shutil.rmtree(final)
        tmp.rename(final)
        for old in list_checkpoints(run_dir)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_trainer_state(path) -> dict:
    return torch.load(Path(path) / TRAINER_STATE, map_location="cpu", weights_only=True)


def load_rank_state(path, rank: int) -> dict:
    file = Path(path) / f"rank_{rank}.pt"
    if not file.is_file():
        have = sorted(p.name for p in Path(path).glob("rank_*.pt"))
        raise ConfigError(f"resume: {path} has no {file.name} (the checkpoint was written by {len(have)} process(es): "
                                f"{have}); resume with the same number of processes")
    return torch.load(file, map_location="cpu", weights_only=True)


# ------------------------------------------------------------------ a run's state
@dataclass
class TrainState:
    """Everything a training checkpoint holds besides the weights: the loop's counters and the
    objects whose state continues (optimizer, scheduler, loss scaler, loss, data position).
    :meth:`save` writes a checkpoint of it, :meth:`restore` reads one back."""
    cfg: Any                      # the run's TrainConfig (scale resolved)
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[Any]         # torch.amp.GradScaler under fp16
    loss_fn: torch.nn.Module
    data: Any                     # the training data (state_dict / load_state_dict)
    rank: int = 0
    world_size: int = 1
    scale_source: str = "config"  # where loss.scale came from: learned, config or model
    step: int = 0
    samples_seen: int = 0
    nonfinite_total: int = 0
    nonfinite_in_row: int = 0

    def save(self) -> Path:
        """Write checkpoint ``step`` into the run directory (every process calls this)."""
        cfg = self.cfg
        trainer_state = {"step": self.step, "samples_seen": self.samples_seen, "world_size": self.world_size,
                         "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                         "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                         "nonfinite_total": self.nonfinite_total, "nonfinite_in_row": self.nonfinite_in_row,
                         "config": config_to_dict(cfg), "loss": self.loss_fn.state_dict()}
        rank_state = {"rng": rng_state(), "data": self.data.state_dict()}
        extra = {"training": {"step": self.step, "objective": cfg.objective, "run_dir": str(Path(cfg.run_dir)),
                              "loss_scale": cfg.loss.scale, "loss_scale_source": self.scale_source}}
        return save_training_checkpoint(cfg.run_dir, self.step, model=self.model, trainer_state=trainer_state,
                                        rank_state=rank_state, rank=self.rank, keep_last=cfg.checkpoint.keep_last,
                                        extra=extra)

    def restore(self, path) -> None:
        """Continue from checkpoint ``path`` (its weights are loaded separately, before the
        optimizer is built): refuses a checkpoint of other settings or another world size."""
        trainer = load_trainer_state(path)
        diffs = resume_differences(trainer["config"], self.cfg) if self.cfg.resume_check and "config" in trainer \
            else []
        if diffs:
            raise ConfigError(f"resume={path}: the run would not continue the same computation; settings "
                              "differ from the checkpoint's:\n  " + "\n  ".join(diffs) +
                              "\nUse the checkpoint's settings (its run directory's config.yaml), or "
                              "resume_check=false to continue anyway as a different run")
        if trainer["world_size"] != self.world_size:
            raise ConfigError(f"resume={path}: written by {trainer['world_size']} process(es), this run has "
                              f"{self.world_size}; the data order and negatives would differ")
        self.optimizer.load_state_dict(trainer["optimizer"])
        self.scheduler.load_state_dict(trainer["scheduler"])
        if self.scaler is not None and trainer.get("scaler"):
            self.scaler.load_state_dict(trainer["scaler"])
        if trainer.get("loss"):  # the target-fraction variant's multiplier
            self.loss_fn.load_state_dict(trainer["loss"])
        self.step, self.samples_seen = trainer["step"], trainer["samples_seen"]
        self.nonfinite_total, self.nonfinite_in_row = trainer["nonfinite_total"], trainer["nonfinite_in_row"]
        rank_state = load_rank_state(path, self.rank)
        self.data.load_state_dict(rank_state["data"])
        set_rng_state(rank_state["rng"])
