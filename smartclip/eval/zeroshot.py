"""Zero-shot classification: prompt-ensembled class embeddings (SPEC 6) and scoring."""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .metrics import masked_scores

__all__ = ["openai_templates", "imagenet_classnames", "build_classifier", "classify", "format_prompts"]


def openai_templates() -> List[str]:
    """OpenAI's 80 ImageNet prompt templates, as format strings with ``{}``."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES
    return [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def imagenet_classnames() -> List[str]:
    """OpenAI's ImageNet-1k class names in class-index (sorted WordNet id) order."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
    return list(IMAGENET_CLASSNAMES)


def format_prompts(classnames: Sequence[str], templates: Sequence[str]) -> List[str]:
    """Class-major list: every template for class 0, then for class 1, ..."""
    if not classnames or not templates:
        raise ValueError("need at least one class name and one template")
    for t in templates:
        if "{}" not in t:
            raise ValueError(f"template {t!r} has no '{{}}' placeholder for the class name")
    return [t.format(c) for c in classnames for t in templates]


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


def classify(image_features: torch.Tensor, labels, classifier: Dict[str, torch.Tensor],
             ks: Sequence[int] = (1, 5), masked: bool = False, chunk_size: int = 4096) -> Dict[str, float]:
    """Top-K accuracy (percent) of ``100 * cos(image, class)`` logits, or of masked scores
    (SPEC 5, with the class masks of :func:`build_classifier`) when ``masked``."""
    weights = classifier["weights"]
    ks = tuple(k for k in ks if k <= weights.shape[0]) or (1,)
    labels = torch.as_tensor(labels, dtype=torch.long)
    image_features = torch.as_tensor(image_features).float()
    if masked and "masks" not in classifier:
        raise ValueError("masked scoring needs a classifier built with with_masks=True")
    if labels.shape != (image_features.shape[0],):
        raise ValueError(f"{image_features.shape[0]} images but {labels.numel()} labels")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= weights.shape[0]):
        raise ValueError(f"labels must be class indices in [0, {weights.shape[0] - 1}]")
    ranks = []
    for start in range(0, image_features.shape[0], chunk_size):
        chunk = image_features[start:start + chunk_size]
        if masked:
            logits = 100.0 * masked_scores(chunk, weights, classifier["masks"])
        else:
            logits = 100.0 * F.normalize(chunk, dim=-1) @ weights.T
        true = logits.gather(1, labels[start:start + chunk_size, None])
        ranks.append((logits >= true).sum(1) - 1)  # other classes scoring at least as high
    rank = torch.cat(ranks)
    return {f"top{k}": 100.0 * int((rank < k).sum()) / rank.numel() for k in ks}
