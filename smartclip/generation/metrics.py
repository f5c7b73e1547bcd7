"""Generation metrics on image features: KID, precision / recall / F1, paired cosine similarity;
and the feature extractors (torch-fidelity's Inception-v3 and VGG16, DINOv2 from a local
``transformers`` folder), all from local weight files.

KID and precision / recall are torch-fidelity's own computations (its defaults: 100 subsets of
1000, cubic polynomial kernel; k = 3 nearest neighbours), called on features we extract so that
the images can be paired, cropped and batched as the protocol says.
"""
from __future__ import annotations

import os
from typing import Dict, List, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["kid", "precision_recall", "paired_cosine", "FidelityFeatures", "DINOv2Features", "square_image",
           "FIDELITY_EXTRACTORS"]

# name -> (torch-fidelity extractor, feature layer, what the weights file is)
FIDELITY_EXTRACTORS = {
    "inception": ("inception-v3-compat", "2048",
                  "torch-fidelity's Inception-v3 (weights-inception-2015-12-05-6726825d.pth)"),
    "vgg16": ("vgg16", "fc2_relu", "torchvision's ImageNet VGG16 (vgg16-397923af.pth)"),
}


def kid(generated: torch.Tensor, reference: torch.Tensor, subsets: int = 100, subset_size: int = 1000,
        seed: int = 2020) -> Dict[str, float]:
    """Kernel Inception Distance between two feature sets [n, d]: the unbiased MMD^2 with kernel
    ``(x.y / d + 1)^3``, mean and std over ``subsets`` random subsets of ``subset_size`` (at most
    the smaller set's size)."""
    from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
    size = min(subset_size, len(generated), len(reference))
    if size < 2:
        raise ValueError(f"KID needs at least 2 images on each side, got {len(generated)} and {len(reference)}")
    out = kid_features_to_metric(generated.double().cpu(), reference.double().cpu(), kid_subsets=subsets,
                                 kid_subset_size=size, rng_seed=seed, verbose=False)
    return {"kid": out[KEY_METRIC_KID_MEAN], "kid_std": out[KEY_METRIC_KID_STD], "kid_subsets": subsets,
            "kid_subset_size": size}


def precision_recall(generated: torch.Tensor, reference: torch.Tensor, k: int = 3) -> Dict[str, float]:
    """Improved precision and recall (Kynkaanniemi et al. 2019): a sample is covered by a set when
    it lies within the distance from some member of that set to the member's k-th nearest
    neighbour in the set. Precision: generated samples covered by the reference set; recall:
    reference samples covered by the generated set; F1 their harmonic mean."""
    from torch_fidelity.metric_prc import (KEY_METRIC_F_SCORE, KEY_METRIC_PRECISION, KEY_METRIC_RECALL,
                                           prc_features_to_metric)
    if min(len(generated), len(reference)) <= k:
        raise ValueError(f"precision / recall with k={k} needs more than {k} images on each side, got "
                         f"{len(generated)} and {len(reference)}")
    out = prc_features_to_metric(generated.float().cpu(), reference.float().cpu(), prc_neighborhood=k,
                                 prc_batch_size=10000, save_cpu_ram=False, verbose=False)
    return {"precision": out[KEY_METRIC_PRECISION], "recall": out[KEY_METRIC_RECALL],
            "f1": out[KEY_METRIC_F_SCORE], "k": k}


def paired_cosine(generated: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean cosine similarity of row ``i`` of ``generated`` with row ``i`` of ``reference``."""
    if generated.shape != reference.shape:
        raise ValueError(f"paired features need equal shapes, got {tuple(generated.shape)} and "
                         f"{tuple(reference.shape)}")
    return float(torch.nn.functional.cosine_similarity(generated.double(), reference.double(), dim=-1).mean())


def square_image(path, size: int) -> Image.Image:
    """The largest centred square of an image, resized to ``size`` (bicubic), as RGB."""
    with Image.open(path) as img:
        img = img.convert("RGB")
    w, h = img.size
    side = min(w, h)
    left, top = (w - side) // 2, (h - side) // 2
    return img.crop((left, top, left + side, top + side)).resize((size, size), Image.BICUBIC)


class FidelityFeatures:
    """One of torch-fidelity's feature extractors, from a local weights file; reads uint8 images."""

    def __init__(self, name: str, weights_path, device="cpu"):
        from torch_fidelity.utils import create_feature_extractor
        if name not in FIDELITY_EXTRACTORS:
            raise ValueError(f"feature extractor must be one of {', '.join(FIDELITY_EXTRACTORS)}, got {name!r}")
        if not os.path.isfile(weights_path):
            raise FileNotFoundError(f"{weights_path}: no such weights file for {FIDELITY_EXTRACTORS[name][2]}")
        fidelity_name, self.layer, _ = FIDELITY_EXTRACTORS[name]
        self.name, self.device = name, torch.device(device)
        self.extractor = create_feature_extractor(fidelity_name, [self.layer], cuda=False, verbose=False,
                                                  feature_extractor_weights_path=str(weights_path)).to(self.device)

    @torch.no_grad()
    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        batch = torch.from_numpy(np.stack([np.asarray(img, dtype=np.uint8) for img in images])).permute(0, 3, 1, 2)
        out = self.extractor(batch.to(self.device))
        return (out[0] if isinstance(out, (tuple, list)) else out).float().cpu()


class DINOv2Features:
    """DINOv2 image embeddings (the CLS token after the final layer norm) from a local
    ``transformers`` folder such as facebook/dinov2-large, with the folder's own preprocessing."""

    def __init__(self, folder, device="cpu"):
        from transformers import AutoImageProcessor, AutoModel
        if not os.path.isfile(os.path.join(folder, "config.json")):
            raise FileNotFoundError(f"{folder}: not a transformers model folder (no config.json)")
        self.processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).eval().to(device)
        self.device = torch.device(device)
        self.name = getattr(self.model.config, "_name_or_path", "") or os.path.basename(os.path.normpath(folder))

    @torch.no_grad()
    def __call__(self, images: List[Image.Image]) -> torch.Tensor:
        inputs = self.processor(images=images, return_tensors="pt").to(self.device)
        return self.model(**inputs).pooler_output.float().cpu()
