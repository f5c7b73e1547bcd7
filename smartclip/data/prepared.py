"""The reading side of a prepared folder (``smartclip data prepare``): its manifest, whether a
``data.train`` source is one, and the check of its recipe against the model being trained."""
from __future__ import annotations

import json
import os
from typing import List, Optional, Sequence

from torchvision.transforms import Resize

from ..fileio import sha256_file
from .errors import DataError

__all__ = ["MANIFEST", "STATE_DIR", "image_recipe", "describe_recipe", "read_manifest", "find_prepared",
           "check_prepared_recipe", "verify_prepared", "preprocess_cfg_of"]

MANIFEST = "manifest.json"
STATE_DIR = ".prepare"
_RECIPE_CHECKED = ("size", "interpolation", "resize_mode")


def image_recipe(preprocess_cfg: dict) -> dict:
    """The part of a model's open_clip preprocessing config that fixes the stored pixels."""
    size = preprocess_cfg.get("size", 224)
    size = list(size) if isinstance(size, (list, tuple)) else int(size)
    if isinstance(size, list) and len(size) == 2 and size[0] == size[1]:
        size = size[0]
    return {"size": size, "interpolation": str(preprocess_cfg.get("interpolation", "bicubic")),
            "resize_mode": str(preprocess_cfg.get("resize_mode", "shortest"))}


def describe_recipe(recipe: dict) -> str:
    size = recipe["size"]
    size = "x".join(map(str, size)) if isinstance(size, list) else str(size)
    return f"{size} px {recipe['interpolation']} ({recipe['resize_mode']} side)"


def read_manifest(folder: str) -> dict:
    with open(os.path.join(folder, MANIFEST)) as f:
        return json.load(f)


def find_prepared(spec_path: str, files: Sequence[str]) -> Optional[str]:
    """The prepared folder a ``data.train`` shard source belongs to (the folder itself, or the
    folder of its shards), or ``None`` for ordinary WebDataset shards."""
    folder = spec_path if os.path.isdir(spec_path) else os.path.dirname(files[0]) if files else ""
    if folder and (os.path.isfile(os.path.join(folder, MANIFEST)) or os.path.isdir(os.path.join(folder, STATE_DIR))):
        return folder
    return None


def check_prepared_recipe(folder: str, preprocess_cfg: Optional[dict], max_bad_fraction: float = 1.0) -> dict:
    """Refuse a prepared folder that is unfinished, or made for another image size or
    interpolation than ``preprocess_cfg`` (the model's), or whose prepare skipped more than
    ``max_bad_fraction`` of the records (training on the originals would stop). Returns its manifest."""
    if not os.path.isfile(os.path.join(folder, MANIFEST)):
        done = len([n for n in os.listdir(os.path.join(folder, STATE_DIR)) if n[:6].isdigit()])
        raise DataError(f"{folder}: an unfinished `smartclip data prepare` ({done} shard(s) done, no {MANIFEST}); "
                        f"run the same prepare command again to finish it")
    manifest = read_manifest(folder)
    if manifest["bad_fraction"] > max_bad_fraction:
        raise DataError(f"{folder}: its prepare skipped {manifest['bad']} of {manifest['records']} records "
                        f"({manifest['bad_fraction']:.1%} > data.max_bad_fraction={max_bad_fraction:g}); "
                        f"{os.path.join(folder, MANIFEST)} lists them")
    stored = manifest["recipe"]["image"]
    if preprocess_cfg is not None:
        mine = image_recipe(preprocess_cfg)
        if any(stored[k] != mine[k] for k in _RECIPE_CHECKED):
            raise DataError(f"{folder} was prepared for images of {describe_recipe(stored)}, but this model "
                            f"preprocesses to {describe_recipe(mine)}; prepare it again with this model's --model")
    return manifest


def verify_prepared(folder: str) -> List[str]:
    """Problems found comparing a prepared folder with its manifest (sizes and sha256 of every
    shard); an empty list when it matches."""
    manifest, problems = read_manifest(folder), []
    for shard in manifest["shards"]:
        path = os.path.join(folder, shard["name"])
        if not os.path.isfile(path):
            problems.append(f"{path}: missing")
        elif os.path.getsize(path) != shard["bytes"] or sha256_file(path) != shard["sha256"]:
            problems.append(f"{path}: sha256 differs from {MANIFEST}")
    return problems


def preprocess_cfg_of(preprocess) -> Optional[dict]:
    """The size / interpolation / resize mode of an open_clip eval transform (its first
    ``Resize``), or ``None`` when ``preprocess`` has none (then pass ``preprocess_cfg``)."""
    for t in getattr(preprocess, "transforms", ()):
        if isinstance(t, Resize):
            size = t.size
            square = isinstance(size, int) or len(size) == 1
            return {"size": size if isinstance(size, int) else list(size) if not square else size[0],
                    "interpolation": t.interpolation.value, "resize_mode": "shortest" if square else "squash"}
    return None
