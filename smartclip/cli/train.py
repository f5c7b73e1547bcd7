"""``smartclip train CONFIG [key=value ...]``: train from a YAML config with dotted overrides.

``CONFIG`` is a YAML file, or the name of a config that ships with smartclip (``tiny``,
``sharegpt4v_b16``, ``sharegpt4v_l14``: the repository's ``configs/``, also installed as
package data), so ``smartclip train tiny`` runs from any folder. Under torchrun or SLURM,
only rank 0 reports a configuration or data error; the other ranks exit with the same status
without printing.
"""
from __future__ import annotations

import argparse
import difflib
import logging
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

# the configs that ship with smartclip: smartclip/configs, a link to the repository's configs/ in a
# checkout and a copy of it in an installed package
PACKAGED_CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def add_arguments(parser: argparse.ArgumentParser):
    parser.add_argument("config", nargs="?",
                        help="experiment YAML, or the name of a packaged config (tiny, sharegpt4v_b16, "
                             "sharegpt4v_l14); omit to use defaults")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. data.train=pairs.csv train.steps=200 run_dir=runs/x "
                             "objective=clip resume=latest")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved config as YAML and exit without training (the data need not "
                             "exist yet)")
    parser.epilog = "Under torchrun or SLURM every process runs this same command; see docs/training.md."


def packaged_configs():
    """Names of the configs that ship with smartclip."""
    return sorted(p.stem for p in PACKAGED_CONFIGS.glob("*.yaml"))


def find_config(config: str) -> Tuple[str, Optional[str]]:
    """``(path, note)``: ``config`` as a file when it exists; else a packaged config named
    ``config`` (``tiny``, ``tiny.yaml`` or ``configs/tiny.yaml`` from a folder without one),
    with a note saying so. A name that matches nothing is returned as given (the loader then
    reports it, with the packaged names)."""
    if os.path.isfile(config):
        return config, None
    path = Path(config)
    if path.parent in (Path("."), Path("configs")):
        packaged = PACKAGED_CONFIGS / (path.name if path.suffix in (".yaml", ".yml") else path.name + ".yaml")
        if packaged.is_file():
            note = None if path.parent == Path(".") else f"no {config} here; using the packaged {packaged}"
            return str(packaged), note
    return config, None


def _unknown_config(config: str) -> str:
    names = packaged_configs()
    close = difflib.get_close_matches(Path(config).stem, names, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    return (f"{config}: no such config file{hint}; give a YAML path or a packaged config: {', '.join(names)}")


def _rank() -> int:
    """This process's rank under torchrun or SLURM (0 when started alone); read from the
    environment, since a configuration error comes before any process group exists."""
    for key in ("RANK", "SLURM_PROCID"):
        value = os.environ.get(key, "")
        if value.isdigit() and (key == "RANK" or int(os.environ.get("SLURM_NTASKS", "1")) > 1):
            return int(value)
    return 0


def _fail(message: str, status: int) -> int:
    """Rank 0 reports; every other rank exits with the same status, silently (one message per
    job, not one per process)."""
    if _rank() == 0:
        print(message, file=sys.stderr)
    return status


def _data_hint(config: Optional[str], error: Exception) -> str:
    """For missing training data: the config's first line, which is the command that writes its
    data and runs it (every shipped config starts so)."""
    if config is None or "data.train:" not in str(error):
        return ""
    first = Path(config).read_text().splitlines()[:1]
    if first and first[0].startswith("# ") and "smartclip train" in first[0]:
        return f"\n  this config's first line is its command: {first[0][2:].strip()}"
    return ""


def run(args) -> int:
    import yaml
    from smartclip.train import ConfigError, TrainingStopped, config_to_dict, load_config, train

    config, overrides = args.config, list(args.overrides)
    if config is not None and "=" in config and not config.endswith((".yaml", ".yml")):
        config, overrides = None, [config] + overrides  # only overrides were given
    if config is not None:
        config, note = find_config(config)
        if not os.path.isfile(config):
            return _fail(f"smartclip train: invalid configuration: {_unknown_config(config)}", 2)
        if note and _rank() == 0:
            print(f"smartclip train: {note}", file=sys.stderr)
    try:
        cfg = load_config(config, overrides, check_data=not args.print_config)
    except ConfigError as e:
        return _fail(f"smartclip train: invalid configuration: {e}{_data_hint(config, e)}", 2)
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
        return _fail(f"smartclip train: model: {e}", 2)
    try:
        result = train(cfg)
    except ConfigError as e:
        return _fail(f"smartclip train: invalid configuration: {e}", 2)
    except DataError as e:
        return _fail(f"smartclip train: unusable data: {e}", 2)
    except TrainingStopped as e:
        return _fail(f"smartclip train: {e}", 3)
    print(f"done: {result.steps} steps, final checkpoint {result.checkpoint}")
    return 0
