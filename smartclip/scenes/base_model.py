"""The demo's base model: the shipped checkpoint (checked by its SHA-256), its pretraining
captions, and :func:`build_base`, which rebuilds it (``smartclip demo --build-base DIR``).

The analogue of the OpenAI checkpoint the paper starts from: a tiny CLIP pretrained with the
standard CLIP objective on short captions of separate pretraining scenes. It ships with the
package (``smartclip/scenes/base``, fp16); docs/demo.md gives its recipe and how it was chosen.
"""
from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Callable, Dict, Optional

import numpy as np

from smartclip.fileio import sha256_file

from .generator import SceneObject, load_labels, object_phrase, short_caption, write_dataset
from .plan import DEMO_MODEL, BaseRecipe, demo_model_config, load_recipe

__all__ = ["BASE_DIR", "BASE_SHA256", "shipped_base", "random_init", "pretraining_captions", "build_base",
           "logit_scale"]

# the shipped base model and the SHA-256 of its model.safetensors (rebuild: docs/demo.md)
BASE_DIR = Path(__file__).parent / "base"
BASE_SHA256 = "ffc956b8fc94b047ee3bb7b6c5f168ece7424363145632c6b17d05e5fd882bb9"


def shipped_base() -> Path:
    """The shipped base model's directory, after checking its weights' SHA-256."""
    from smartclip.checkpoint import WEIGHTS_NAME
    weights = BASE_DIR / WEIGHTS_NAME
    if not weights.is_file():
        raise FileNotFoundError(f"the demo's base model is missing ({weights}); reinstall smartclip, or rebuild it "
                                "with `smartclip demo --build-base DIR` and pass --base DIR")
    digest = sha256_file(weights)
    if digest != BASE_SHA256:
        raise ValueError(f"{weights} has SHA-256 {digest}, not the published {BASE_SHA256}: the shipped base was "
                         "modified or damaged; reinstall smartclip, or pass --base DIR to use another one")
    return BASE_DIR


def logit_scale(checkpoint: Path) -> float:
    """The checkpoint's learned ``logit_scale.exp()``."""
    from smartclip.checkpoint import read_weights
    state, _ = read_weights(checkpoint)
    return float(state["logit_scale"].float().exp())


def random_init(model: Dict, image_size: int, seed: int, path: Path) -> Path:
    """The base's architecture with random weights (drawn after ``torch.manual_seed(seed)``):
    the random-init column and the start of --scratch runs. Kept when ``path`` holds it."""
    import torch
    import smartclip
    if (path / "smartclip_config.json").is_file():
        return path
    torch.manual_seed(seed)
    net = smartclip.build_model(demo_model_config(model, image_size), {"mask_padding": True}, model_name="demo-tiny")
    net.mask_trained = False
    return smartclip.save_checkpoint(net, path)


def pretraining_captions(data_dir: Path) -> Path:
    """The pretraining CSV: every short caption of the pretraining scenes, each scene's objects
    named by kind alone, each object alone with and without its colour, and one-object scenes
    named with and without colour: single- and multi-object short captions, the alt-text
    analogue (docs/demo.md says why each is there)."""
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
    :func:`pretraining_captions` (``recipes/base.yaml``). Deterministic for a given recipe on
    one machine (one thread).
    """
    import torch
    import smartclip
    from smartclip.checkpoint import WEIGHTS_NAME
    recipe = recipe or BaseRecipe()
    model = model or DEMO_MODEL
    out = Path(out_dir)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        trained, scores = _pretrain(recipe, model, image_size, out / "work", progress, log)
        trained.model_name = "demo-base"
        smartclip.save_checkpoint(trained.half(), out, overwrite=True)  # --build-base rebuilds
    finally:
        torch.set_num_threads(previous_threads)
    record = {"sha256": sha256_file(out / WEIGHTS_NAME), "recipe": dataclasses.asdict(recipe), "model": model,
              "image_size": image_size, "logit_scale": float(trained.logit_scale.detach().float().exp()),
              "val_metrics": {k: round(v, 2) for k, v in scores["metrics"].items()},
              "command": command or f"smartclip demo --build-base {out_dir}", "torch": torch.__version__}
    (out / "base.json").write_text(json.dumps(record, indent=1))
    log(f"[base] {out} written: SHA-256 {record['sha256']}, logit scale {record['logit_scale']:.3f}, "
        f"validation concept mAP {scores['metrics']['concept_map']:.1f}, "
        f"one-object top-1 {scores['metrics']['single_acc']:.1f}")
    return record


def _pretrain(recipe: BaseRecipe, model: Dict, image_size: int, work: Path, progress: bool, log):
    """Write the pretraining scenes, train on their captions, score the result on the
    validation split: ``(model, scores)``."""
    import smartclip
    from smartclip.train import latest_checkpoint, train
    from .evaluate import SceneBenchmark
    data = work / "data"
    log(f"[base] writing {recipe.num_pretrain} + {recipe.num_pretrain_single} pretraining scenes to {data}")
    # the fine-tuning scenes' generator and seed: its pretraining streams, plus the validation
    # split the base is scored on and training scenes for that score's linear probe
    write_dataset(data, seed=recipe.data_seed, num_train=recipe.probe_images, num_test=0, num_single=0,
                  image_size=image_size, num_val=400, num_val_single=128, num_pretrain=recipe.num_pretrain,
                  num_pretrain_single=recipe.num_pretrain_single)
    captions = pretraining_captions(data)
    init = random_init(model, image_size, recipe.seed, work / "init")
    tcfg = load_recipe("base", {
        "run_dir": str(work / "run"), "seed": recipe.seed, "model.name": str(init), "data.train": str(captions),
        "optim.clip.lr": recipe.lr, "optim.clip.weight_decay": recipe.weight_decay,
        "optim.clip.warmup_steps": recipe.warmup, "train.steps": recipe.steps,
        "train.global_batch": recipe.batch_size, "train.progress": progress,
    })
    if latest_checkpoint(tcfg.run_dir) is not None:
        tcfg.resume = "latest"
    result = train(tcfg)
    trained = smartclip.load_checkpoint(result.checkpoint).eval()  # eval: the ResNet's batch norm
    trained.mask_trained = False  # the CLIP objective never trains the mask network
    bench = SceneBenchmark(data, split="val", probe_train_images=recipe.probe_images)
    scores = bench.run(trained, tokenizer=smartclip.get_tokenizer(trained), batch_size=128, progress=False,
                       preprocess=smartclip.image_transform(trained))
    return trained, scores
