"""``smartclip train CONFIG [key=value ...]``: train from a YAML config with dotted overrides."""
from __future__ import annotations

import argparse
import logging
import sys


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("config", nargs="?", help="experiment YAML (configs/*.yaml); omit to use defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. data.train=pairs.csv train.steps=200 run_dir=runs/x "
                             "objective=clip resume=latest")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit without training")
    parser.epilog = "Under torchrun or SLURM every process runs this same command; see docs/training.md."


def run(args) -> int:
    import yaml
    from smartclip.train import ConfigError, TrainingStopped, config_to_dict, load_config, train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides  # only overrides were given
    try:
        cfg = load_config(config, overrides)
    except ConfigError as e:
        print(f"smartclip train: invalid configuration: {e}", file=sys.stderr)
        return 2
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from smartclip.checkpoint import ModelNotFoundError
    from smartclip.data import DataError
    from smartclip.factory import resolve_model
    try:  # before the run folder is made: a wrong model.name is a one-line error, not a half-started run
        resolve_model(cfg.model.name, cfg.model.pretrained, download=True)
    except ModelNotFoundError as e:
        print(f"smartclip train: model: {e}", file=sys.stderr)
        return 2
    try:
        result = train(cfg)
    except ConfigError as e:
        print(f"smartclip train: invalid configuration: {e}", file=sys.stderr)
        return 2
    except DataError as e:
        print(f"smartclip train: unusable data: {e}", file=sys.stderr)
        return 2
    except TrainingStopped as e:
        print(f"smartclip train: {e}", file=sys.stderr)
        return 3
    print(f"done: {result.steps} steps, final checkpoint {result.checkpoint}")
    return 0
