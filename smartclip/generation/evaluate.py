"""``smartclip eval-generation``: generated images against their reference images.

Each generated image is paired with the reference image its prompt describes: the sidecar's
``reference`` path under the reference folder, or else the reference image with the same file
stem. KID and precision / recall / F1 compare the two paired sets as distributions; DINO-L is
the mean similarity of each pair. Results carry the protocol beside each number.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch

from ..fileio import atomic_write_json, atomic_write_text
from .metrics import (FIDELITY_EXTRACTORS, DINOv2Features, FidelityFeatures, kid, paired_cosine, precision_recall,
                      square_image)
from .pipeline import RUN_FILE

__all__ = ["pair_images", "evaluate_generation", "write_generation_results", "generation_markdown",
           "PAPER_TABLE5", "RESULTS_FORMAT", "IncompletePairsError"]

RESULTS_FORMAT = "smartclip-eval-generation-v1"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# SmartCLIP's row of the paper's Table 5 (docs/method.md §6); the paper states no protocol details
PAPER_TABLE5 = {"kid": 1.02, "precision": 0.258, "recall": 0.791, "f1": 0.389, "dino_l": 0.414}
FIDELITY_SIZE = 299  # Inception-v3's input size; VGG16's extractor resizes to 224 itself


class IncompletePairsError(ValueError):
    """Generated images without a reference image."""


def _images(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def pair_images(generated_dir, reference_dir) -> Tuple[List[Tuple[str, Path, Path]], List[Tuple[str, str]]]:
    """``(pairs [(id, generated, reference)], missing [(id, why)])``."""
    generated_dir, reference_dir = Path(generated_dir), Path(reference_dir)
    for folder in (generated_dir, reference_dir):
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder")
    by_stem: Dict[str, Path] = {}
    for p in _images(reference_dir):
        by_stem.setdefault(p.stem, p)
    pairs, missing = [], []
    for image in _images(generated_dir):
        sidecar = image.with_suffix(".json")
        named = json.loads(sidecar.read_text(encoding="utf-8")).get("reference") if sidecar.is_file() else None
        if named:
            reference = reference_dir / named
            if reference.is_file():
                pairs.append((image.stem, image, reference))
            else:
                missing.append((image.stem, f"its sidecar names {named}, not found under {reference_dir}"))
        elif image.stem in by_stem:
            pairs.append((image.stem, image, by_stem[image.stem]))
        else:
            missing.append((image.stem, f"no image named {image.stem}.* in {reference_dir}"))
    if not pairs and not missing:
        raise FileNotFoundError(f"{generated_dir}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return pairs, missing


def _features(extract: Callable, paths: List[Path], load: Callable, batch_size: int, bar) -> torch.Tensor:
    out = []
    for start in range(0, len(paths), batch_size):
        chunk = paths[start:start + batch_size]
        out.append(extract([load(p) for p in chunk]))
        bar.update(len(chunk))
    return torch.cat(out)


def _open_rgb(path):
    from PIL import Image
    with Image.open(path) as img:
        return img.convert("RGB")


def evaluate_generation(generated_dir, reference_dir, *, inception_weights=None, vgg16_weights=None, dinov2=None,
                        prc_features: str = "vgg16", kid_subsets: int = 100, kid_subset_size: int = 1000,
                        kid_seed: int = 2020, k: int = 3, device="cpu", batch_size: int = 32,
                        allow_partial: bool = False, progress: bool = True) -> dict:
    """The results record: metrics, the protocol of each, counts, and the generation settings.

    KID needs ``inception_weights``; precision / recall / F1 need the weights of
    ``prc_features`` (``vgg16``: ``vgg16_weights``, as Kynkaanniemi et al. and torch-fidelity;
    ``inception``: ``inception_weights``); DINO-L needs ``dinov2`` (a transformers folder). A
    metric whose weights are not given is listed under ``not_computed``.
    """
    from tqdm import tqdm

    if prc_features not in FIDELITY_EXTRACTORS:
        raise ValueError(f"prc_features must be one of {', '.join(FIDELITY_EXTRACTORS)}, got {prc_features!r}")
    weights = {"inception": inception_weights, "vgg16": vgg16_weights}
    if not (inception_weights or weights[prc_features] or dinov2):
        raise ValueError("no feature extractor weights given: pass the Inception-v3 weights (KID), the "
                         f"{prc_features} weights (precision / recall) or a DINOv2 folder (DINO-L)")
    pairs, missing = pair_images(generated_dir, reference_dir)
    if missing and not allow_partial:
        ident, why = missing[0]
        raise IncompletePairsError(f"{len(missing)} generated image(s) have no reference image, e.g. {ident}: "
                                   f"{why} (allow a partial evaluation to score the {len(pairs)} pairs)")
    generated = [g for _, g, _ in pairs]
    reference = [r for _, _, r in pairs]
    metrics: Dict[str, float] = {}
    protocols: Dict[str, str] = {}
    not_computed: Dict[str, str] = {}
    square = lambda p: square_image(p, FIDELITY_SIZE)  # noqa: E731
    crop = f"every image centre-cropped to a square and resized to {FIDELITY_SIZE} px (bicubic)"

    features = {}  # extractor name -> (generated features, reference features)
    for name in sorted({n for n in ("inception", prc_features) if weights[n]}) + (["dinov2"] if dinov2 else []):
        extract = DINOv2Features(dinov2, device) if name == "dinov2" else FidelityFeatures(name, weights[name], device)
        load = _open_rgb if name == "dinov2" else square
        with tqdm(total=2 * len(pairs), unit="image", desc=f"{name} features", disable=not progress) as bar:
            features[name] = (_features(extract, generated, load, batch_size, bar),
                              _features(extract, reference, load, batch_size, bar))
        del extract

    if "inception" in features:
        result = kid(*features["inception"], subsets=kid_subsets, subset_size=kid_subset_size, seed=kid_seed)
        metrics.update(kid=result["kid"], kid_std=result["kid_std"])
        protocols["kid"] = (
            f"Kernel Inception Distance, generated vs paired reference images: unbiased MMD^2 with kernel "
            f"(x.y/d + 1)^3 on Inception-v3 pool features (2048-d, torch-fidelity's inception-v3-compat); mean "
            f"(kid) and std (kid_std) over {result['kid_subsets']} random subsets of {result['kid_subset_size']} "
            f"(seed {kid_seed}); {crop}; raw value, not scaled by 100 or 1000")
    else:
        not_computed["kid"] = "no Inception-v3 weights given"
    if prc_features in features:
        result = precision_recall(*features[prc_features], k=k)
        metrics.update(precision=result["precision"], recall=result["recall"], f1=result["f1"])
        layer = FIDELITY_EXTRACTORS[prc_features]
        protocols["precision_recall_f1"] = (
            f"improved precision / recall (Kynkaanniemi et al. 2019, torch-fidelity's prc), k = {k} nearest "
            f"neighbours, Euclidean distance on {prc_features} features ({layer[0]}, layer {layer[1]}): precision "
            f"= share of generated images inside the reference set's k-NN balls, recall = share of reference "
            f"images inside the generated set's; f1 = their harmonic mean; {crop}")
    else:
        not_computed["precision_recall_f1"] = f"no {prc_features} weights given"
    if "dinov2" in features:
        metrics["dino_l"] = paired_cosine(*features["dinov2"])
        protocols["dino_l"] = (
            f"mean over pairs of the cosine similarity between the DINOv2 embeddings (CLS token after the final "
            f"layer norm, {os.path.basename(os.path.normpath(dinov2))}, the folder's own preprocessing) of a "
            f"generated image and the reference image of its prompt")
    else:
        not_computed["dino_l"] = "no DINOv2 folder given"

    run_file = Path(generated_dir) / RUN_FILE
    generation = json.loads(run_file.read_text(encoding="utf-8")) if run_file.is_file() else None
    return {
        "format": RESULTS_FORMAT, "generated": str(generated_dir), "reference": str(reference_dir),
        "counts": {"pairs": len(pairs), "missing": len(missing)}, "partial": bool(missing),
        "missing": [{"id": i, "why": w} for i, w in missing],
        "metrics": metrics, "protocols": protocols, "not_computed": not_computed,
        "generation": generation, "paper_table5": PAPER_TABLE5,
        "weights": {"inception": inception_weights, "vgg16": vgg16_weights, "dinov2": dinov2},
    }


_ROWS = [("kid", "kid"), ("kid_std", "kid"), ("precision", "precision_recall_f1"),
         ("recall", "precision_recall_f1"), ("f1", "precision_recall_f1"), ("dino_l", "dino_l")]


def generation_markdown(record: dict) -> str:
    """Metric | value | the paper's Table 5 | protocol, then counts and generation settings."""
    counts = record["counts"]
    partial = f" PARTIAL: {counts['missing']} generated images without a reference" if record["partial"] else ""
    lines = [f"# Generation evaluation: `{record['generated']}` vs `{record['reference']}`", "",
             f"{counts['pairs']} image pairs.{partial}", "",
             "| metric | value | paper, Table 5 | protocol |", "|---|---|---|---|"]
    for name, protocol in _ROWS:
        if name in record["metrics"]:
            paper = record["paper_table5"].get(name)
            lines.append(f"| {name} | {record['metrics'][name]:.4f} | {'' if paper is None else paper} | "
                         f"{record['protocols'][protocol]} |")
    for name, why in record["not_computed"].items():
        lines.append(f"| {name} | not computed | | {why} |")
    lines += ["", "The paper states no protocol for its Table 5 (sample count, resolution, feature extractors, "
              "KID scale); compare with care (docs/generation.md)."]
    generation = record.get("generation")
    if generation:
        lines += ["", "Generation settings:", "", "```json", json.dumps(generation, indent=2), "```"]
    return "\n".join(lines)


def write_generation_results(record: dict, out_dir, stem: str = "eval_generation") -> Dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    atomic_write_json(paths["json"], record)
    atomic_write_text(paths["markdown"], generation_markdown(record) + "\n")
    return paths
