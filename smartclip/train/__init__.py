"""Training: typed YAML configs, the paper's recipe, DDP, mixed precision, gradient caching,
exact resume.

    from smartclip.train import TrainConfig, load_config, train
    cfg = load_config("configs/tiny.yaml", overrides=["train.steps=20", "run_dir=runs/x"])
    result = train(cfg)   # TrainResult: run_dir, checkpoint, steps, metrics, eval

See docs/training.md for the config keys and the run directory layout.
"""
from .config import (CheckpointConfig, ConfigError, EvalConfig, LoopConfig, LossConfig, ModelConfig, OptimConfig,
                     OptimGroupConfig, TrainConfig, apply_overrides, config_to_dict, dump_config, load_config)
from .loop import StepInfo, TrainResult, TrainingStopped, train
from .step import ContrastiveStep, StepOutput, build_loss
from .optim import build_optimizer, build_scheduler, trainable_groups
from .checkpoints import latest_checkpoint, list_checkpoints
from .monitor import plot_metrics, read_metrics

__all__ = ["TrainConfig", "ModelConfig", "LossConfig", "OptimConfig", "OptimGroupConfig", "LoopConfig",
           "CheckpointConfig", "EvalConfig", "ConfigError", "load_config", "apply_overrides", "config_to_dict",
           "dump_config", "train", "TrainResult", "TrainingStopped", "StepInfo", "ContrastiveStep", "StepOutput",
           "build_loss", "build_optimizer", "build_scheduler", "trainable_groups", "latest_checkpoint",
           "list_checkpoints", "plot_metrics", "read_metrics"]
