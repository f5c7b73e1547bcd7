"""Zero-shot classification: prompt-ensembled class embeddings (docs/method.md §6) and scoring."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn.functional as F

from .metrics import average_precision_per_class, masked_scores, mean_per_class_recall

__all__ = ["openai_templates", "imagenet_classnames", "build_classifier", "classify", "classify_multilabel",
           "format_prompts"]


def openai_templates() -> List[str]:
    """OpenAI's 80 ImageNet prompt templates, as format strings with ``{}``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def imagenet_classnames() -> List[str]:
    """OpenAI's ImageNet-1k class names in class-index (sorted WordNet id) order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return list(IMAGENET_CLASSNAMES)


def format_prompts(classnames: Sequence[str], templates: Sequence[str]) -> List[str]:
    """Class-major list: every template for class 0, then for class 1, ... A template holds
    the class name as ``{}`` (OpenAI's style) or ``{c}`` (CLIP_benchmark's)."""
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    for t in templates:
        if "{}" not in t and "{c}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' or '{{c}}' placeholder for the class name")
    return [t.format(c=c) if "{c}" in t else t.format(c) for c in classnames for t in templates]


def build_classifier(model, tokenizer, classnames: Sequence[str], templates: Optional[Sequence[str]] = None,
                     batch_size: int = 256, device="cpu", progress: bool = False,
                     with_masks: bool = False) -> Dict[str, torch.Tensor]:
    """Class embeddings [classes, dim]: the mean of each class's L2-normalised template
    embeddings, renormalised (prompt ensembling). Text is tokenised at the model's
    context (248) and encoded with trimmed padding (same values as untrimmed).

    With ``with_masks`` also returns ``masks`` [classes, dim]: the majority vote of the
    templates' hard masks (a dimension is kept when at least half the prompts select it).
    Returns ``{"weights": ..., "masks": ... (optional), "truncated": int}``."""
    from .encode import encode_text_items
    templates = list(templates) if templates is not None else openai_templates()
    prompts = format_prompts(classnames, templates)
    features, truncated = encode_text_items(model, tokenizer, prompts, batch_size, device, progress,
                                            desc="class prompts")
    per_class = F.normalize(features, dim=-1).view(len(classnames), len(templates), -1)
    weights = F.normalize(per_class.mean(1), dim=-1)
    out = {"weights": weights, "truncated": truncated}
    if with_masks:
        masks = []
        with torch.no_grad():
            for start in range(0, len(prompts), batch_size):
                tokens = tokenizer(prompts[start:start + batch_size]).to(device)
                masks.append(model.text_mask(tokens, soft=False).float().cpu())
        votes = torch.cat(masks).view(len(classnames), len(templates), -1).mean(1)
        out["masks"] = (votes >= 0.5).float()
    return out


def _logits(image_features: torch.Tensor, classifier: Dict[str, torch.Tensor], masked: bool) -> torch.Tensor:
    if masked:
        if "masks" not in classifier:
            raise ValueError("masked scoring needs a classifier built with with_masks=True")
        return 100.0 * masked_scores(image_features, classifier["weights"], classifier["masks"])
    return 100.0 * F.normalize(image_features, dim=-1) @ classifier["weights"].T


def classify(image_features: torch.Tensor, labels, classifier: Dict[str, torch.Tensor],
             ks: Sequence[int] = (1, 5), masked: bool = False, chunk_size: int = 4096) -> Dict[str, float]:
    """Top-K accuracy and mean per-class recall (percent) of ``100 * cos(image, class)``
    logits, or of masked scores (docs/method.md §5, with the class masks of :func:`build_classifier`)
    when ``masked``. Top-K is reported for K up to the number of classes."""
    weights = classifier["weights"]
    ks = tuple(k for k in ks if k <= weights.shape[0]) or (1,)
    labels = torch.as_tensor(labels, dtype=torch.long)
    image_features = torch.as_tensor(image_features).float()
    if labels.shape != (image_features.shape[0],):
        raise ValueError(f"{image_features.shape[0]} images but {labels.numel()} labels")
    if not labels.numel():
        raise ValueError("no images to classify")
    if int(labels.min()) < 0 or int(labels.max()) >= weights.shape[0]:
        raise ValueError(f"labels must be class indices in [0, {weights.shape[0] - 1}]")
    ranks = []
    for start in range(0, image_features.shape[0], chunk_size):
        logits = _logits(image_features[start:start + chunk_size], classifier, masked)
        true = logits.gather(1, labels[start:start + chunk_size, None])
        ranks.append((logits >= true).sum(1) - 1)  # other classes scoring at least as high
    rank = torch.cat(ranks)
    metrics = {f"top{k}": 100.0 * int((rank < k).sum()) / rank.numel() for k in ks}
    metrics["mean_per_class_recall"] = mean_per_class_recall(rank == 0, labels)
    return metrics


def classify_multilabel(image_features: torch.Tensor, targets, classifier: Dict[str, torch.Tensor],
                        masked: bool = False) -> Dict[str, float]:
    """Mean average precision (percent) over classes for multi-label ``targets`` [n, classes]
    of 0/1, CLIP_benchmark's definition (see :func:`average_precision_per_class`)."""
    targets = torch.as_tensor(targets).float()
    image_features = torch.as_tensor(image_features).float()
    if targets.shape != (image_features.shape[0], classifier["weights"].shape[0]):
        raise ValueError(f"targets must be [images, classes] = [{image_features.shape[0]}, "
                         f"{classifier['weights'].shape[0]}], got {tuple(targets.shape)}")
    ap = average_precision_per_class(_logits(image_features, classifier, masked), targets)
    return {"mAP": float(ap.mean())}
