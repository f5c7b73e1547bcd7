"""Retrieval Recall@K and zero-shot accuracy, computed in chunks so memory stays bounded.

Tie rule (every metric here): a query is a hit at K when **fewer than K non-matching
candidates score at least as high as its best matching candidate**. Ties with a
non-match therefore count against the model; this is deterministic, whereas a
``topk``/``argmax``/``sort``-based implementation (CLIP_benchmark) resolves such ties in
whatever order the kernel returns. Without ties the definitions agree exactly.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional, Sequence

import torch
import torch.nn.functional as F

__all__ = ["retrieval_recall", "retrieval_recall_dense", "masked_scores", "topk_accuracy",
           "mean_per_class_recall", "average_precision_per_class", "DEFAULT_CHUNK_ELEMENTS"]

# Similarity entries held at once (2**24 float32 = 64 MiB); the working set of a chunk is
# about 1.3x this (the scores plus one boolean comparison).
DEFAULT_CHUNK_ELEMENTS = 1 << 24
_MASK_EPS = 1e-8


def _check_ks(ks: Sequence[int]) -> tuple:
    ks = tuple(int(k) for k in ks)
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be positive integers, got {ks}")
    return ks


def _check_features(name: str, x: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dim() != 2:
        raise ValueError(f"{name} must be [n, dim], got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is empty")
    x = x.float()
    if not torch.isfinite(x).all():
        bad = (~torch.isfinite(x)).any(1).nonzero().flatten()[:5].tolist()
        raise ValueError(f"{name} has non-finite values (rows {bad}...)")
    return x


def _check_assignment(text_to_image, n_texts: int, n_images: int) -> torch.Tensor:
    t2i = torch.as_tensor(text_to_image, dtype=torch.long).flatten()
    if t2i.numel() != n_texts:
        raise ValueError(f"text_to_image has {t2i.numel()} entries for {n_texts} texts")
    if n_texts and (int(t2i.min()) < 0 or int(t2i.max()) >= n_images):
        raise ValueError(f"text_to_image values must be image indices in [0, {n_images - 1}], "
                         f"got range [{int(t2i.min())}, {int(t2i.max())}]")
    captions_per_image = torch.bincount(t2i, minlength=n_images)
    orphans = (captions_per_image == 0).nonzero().flatten()
    if orphans.numel():
        raise ValueError(f"{orphans.numel()} images have no caption (image indices {orphans[:10].tolist()}"
                         f"{'...' if orphans.numel() > 10 else ''}); image->text recall is undefined for them")
    return t2i


def masked_scores(image_features: torch.Tensor, text_features: torch.Tensor, text_masks: torch.Tensor) -> torch.Tensor:
    """``[n_images, n_texts]`` masked scores ``<u(i, q), tn_q>`` (docs/method.md §5) with
    ``u(i, q) = (z_i * m_q) / ||z_i * m_q||``, as matrix products (no ``n x m x d`` tensor).
    Image features may be raw or normalised: ``u`` does not depend on the scale of ``z_i``."""
    z = F.normalize(image_features.float(), dim=-1)
    t = F.normalize(text_features.float(), dim=-1)
    m = text_masks.float()
    numerator = z @ (m * t).T
    norm = ((z * z) @ (m * m).T).clamp_min(_MASK_EPS ** 2).sqrt()
    return numerator / norm


def _recall_from_chunks(score_chunk: Callable[[int, int, torch.Tensor], torch.Tensor], n_images: int,
                        t2i: torch.Tensor, ks: tuple, rows: int) -> Dict[str, float]:
    """One pass over text chunks. ``score_chunk(start, end, out)`` writes the scores
    [n_images, end - start] into ``out`` and returns it. Two buffers of ``n_images x rows``
    (float32 scores and a boolean comparison) are reused for every chunk."""
    n_texts = t2i.numel()
    kmax = max(ks)
    t2i_rank = torch.empty(n_texts, dtype=torch.int32)
    best_positive = torch.full((n_images,), float("-inf"))
    # the kmax highest non-matching scores seen so far for every image (descending), and
    # the lowest of them: a new score changes the list only if it is strictly higher
    top_negatives = torch.full((n_images, kmax), float("-inf"))
    threshold = top_negatives[:, -1].clone()
    score_buffer = torch.empty(n_images * rows)
    compare_buffer = torch.empty(n_images * rows, dtype=torch.bool)
    for start in range(0, n_texts, rows):
        end = min(start + rows, n_texts)
        width = end - start
        scores = score_chunk(start, end, score_buffer[: n_images * width].view(n_images, width))
        compare = compare_buffer[: n_images * width].view(n_images, width)
        owner = t2i[start:end]
        cols = torch.arange(width)
        positive = scores[owner, cols]
        # text -> image: images scoring >= the matching one, minus the matching one itself
        torch.ge(scores, positive[None, :], out=compare)
        t2i_rank[start:end] = compare.sum(0, dtype=torch.int32) - 1
        best_positive.scatter_reduce_(0, owner, positive, reduce="amax")
        # image -> text: keep only non-matching texts, update images that gained a high one
        scores[owner, cols] = float("-inf")
        changed = (scores.amax(1) > threshold).nonzero().flatten()
        if changed.numel():
            k = min(kmax, width)
            # early chunks change most rows: rank them in place rather than copy them out
            top = (scores.topk(k, dim=1).values[changed] if changed.numel() > n_images // 2
                   else scores[changed].topk(k, dim=1).values)
            merged = torch.cat([top_negatives[changed], top], dim=1).topk(kmax, dim=1).values
            top_negatives[changed] = merged
            threshold[changed] = merged[:, -1]
    metrics = {}
    for k in ks:
        hits = int((top_negatives[:, k - 1] < best_positive).sum())
        metrics[f"i2t@{k}"] = 100.0 * hits / n_images
    for k in ks:
        metrics[f"t2i@{k}"] = 100.0 * int((t2i_rank < k).sum()) / n_texts
    return metrics


def retrieval_recall(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image,
                     ks: Sequence[int] = (1, 5, 10), chunk_size: Optional[int] = None,
                     text_masks: Optional[torch.Tensor] = None) -> Dict[str, float]:
    """Recall@K in percent in both directions, several captions per image allowed.

    ``text_to_image[k]`` is the image index of caption ``k``. image->text is a hit when any
    caption of the image is in the top K; text->image is averaged over every caption.
    Features are L2-normalised here; scores are cosine similarities, or masked scores
    (docs/method.md §5) when ``text_masks`` [n_texts, dim] is given. Scores are computed ``chunk_size``
    texts at a time (default: as many as keep ``n_images x chunk`` under
    :data:`DEFAULT_CHUNK_ELEMENTS`), so memory is O(n_images x chunk), never
    O(n_images x n_texts). Returns ``{"i2t@1": .., "i2t@5": .., ..., "t2i@1": .., ...}``.
    """
    ks = _check_ks(ks)
    image_features = _check_features("image_features", image_features)
    text_features = _check_features("text_features", text_features)
    if image_features.shape[1] != text_features.shape[1]:
        raise ValueError(f"image_features dim {image_features.shape[1]} != text_features dim "
                         f"{text_features.shape[1]}")
    n_images, n_texts = image_features.shape[0], text_features.shape[0]
    t2i = _check_assignment(text_to_image, n_texts, n_images)
    if chunk_size is None:
        chunk_size = max(1, DEFAULT_CHUNK_ELEMENTS // n_images)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    if text_masks is None:
        def score_chunk(start, end, out):
            return torch.mm(image_features, text_features[start:end].T, out=out)
    else:
        text_masks = torch.as_tensor(text_masks).float()
        if text_masks.shape != text_features.shape:
            raise ValueError(f"text_masks shape {tuple(text_masks.shape)} != text_features shape "
                             f"{tuple(text_features.shape)}")
        squared = image_features * image_features
        masked_text = text_masks * text_features
        mask_squared = text_masks * text_masks

        def score_chunk(start, end, out):
            torch.mm(image_features, masked_text[start:end].T, out=out)
            norm = (squared @ mask_squared[start:end].T).clamp_min_(_MASK_EPS ** 2).sqrt_()
            return out.div_(norm)
    with torch.no_grad():
        return _recall_from_chunks(score_chunk, n_images, t2i, ks, chunk_size)


def retrieval_recall_dense(image_features: torch.Tensor, text_features: torch.Tensor, text_to_image,
                           ks: Sequence[int] = (1, 5, 10)) -> Dict[str, float]:
    """The same metric written directly on the full ``n_texts x n_images`` matrix: the
    reference the chunked version is tested and benchmarked against. Memory O(n_t x n_i)."""
    ks = _check_ks(ks)
    img = F.normalize(torch.as_tensor(image_features).float(), dim=-1)
    txt = F.normalize(torch.as_tensor(text_features).float(), dim=-1)
    t2i = _check_assignment(text_to_image, txt.shape[0], img.shape[0])
    scores = txt @ img.T  # [n_texts, n_images]
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(t2i)), t2i] = True
    matching = scores[positive]  # one per text, row order
    t2i_rank = ((scores >= matching[:, None]) & ~positive).sum(1)
    by_image = scores.T
    best = by_image.masked_fill(~positive.T, float("-inf")).max(1).values
    i2t_rank = ((by_image >= best[:, None]) & ~positive.T).sum(1)
    out = {f"i2t@{k}": 100.0 * int((i2t_rank < k).sum()) / len(i2t_rank) for k in ks}
    out.update({f"t2i@{k}": 100.0 * int((t2i_rank < k).sum()) / len(t2i_rank) for k in ks})
    return out


def topk_accuracy(logits: torch.Tensor, labels, ks: Sequence[int] = (1, 5)) -> Dict[str, float]:
    """Top-K accuracy in percent, same tie rule as retrieval: correct at K when fewer than K
    other classes score at least as high as the true class. ``logits`` [n, classes]."""
    ks = _check_ks(ks)
    logits = torch.as_tensor(logits).float()
    labels = torch.as_tensor(labels, dtype=torch.long)
    if logits.dim() != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be [n, classes] and labels [n], got {tuple(logits.shape)} "
                         f"and {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= logits.shape[1]):
        raise ValueError(f"labels must be in [0, {logits.shape[1] - 1}]")
    true = logits.gather(1, labels[:, None])
    rank = (logits >= true).sum(1) - 1
    return {f"top{k}": 100.0 * int((rank < k).sum()) / max(1, len(rank)) for k in ks}


def mean_per_class_recall(correct, labels) -> float:
    """Recall of each class present in ``labels``, averaged (percent): CLIP_benchmark's
    ``mean_per_class_recall`` (scikit-learn's ``balanced_accuracy_score`` of the top-1
    prediction). ``correct[i]``: whether sample ``i`` is right at top-1 (tie rule above)."""
    correct = torch.as_tensor(correct, dtype=torch.float64).flatten()
    labels = torch.as_tensor(labels, dtype=torch.long).flatten()
    if correct.shape != labels.shape or not labels.numel():
        raise ValueError(f"need one correctness flag per label, got {correct.numel()} and {labels.numel()}")
    classes = int(labels.max()) + 1
    hits = torch.zeros(classes, dtype=torch.float64).index_add_(0, labels, correct)
    totals = torch.bincount(labels, minlength=classes).double()
    present = totals > 0
    return 100.0 * float((hits[present] / totals[present]).mean())


def average_precision_per_class(scores: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Average precision of each class (percent) for multi-label targets, CLIP_benchmark's
    definition (``average_precision_per_class``, its mAP for ``voc2007_multilabel``): rank the
    samples by the class's score, average the precision at the rank of every positive, and
    give a class without positives 0. Ties follow the tie rule above: every sample scoring
    at least as high as a positive ranks before it. ``scores`` [n, C], ``targets`` [n, C] of 0/1."""
    scores = torch.as_tensor(scores).double()
    targets = torch.as_tensor(targets).double()
    if scores.dim() != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be [n, classes], got {tuple(scores.shape)} and "
                         f"{tuple(targets.shape)}")
    if not bool(((targets == 0) | (targets == 1)).all()):
        raise ValueError("multi-label targets must be 0 or 1")
    ap = torch.zeros(scores.shape[1], dtype=torch.float64)
    for k in range(scores.shape[1]):
        order = torch.argsort(scores[:, k], descending=True)
        sorted_scores, truth = scores[order, k], targets[order, k]
        # within a run of equal scores every member takes the run's last rank and positives
        _, run_lengths = torch.unique_consecutive(sorted_scores, return_counts=True)
        run_end = torch.cumsum(run_lengths, 0).repeat_interleave(run_lengths) - 1
        true_positives = torch.cumsum(truth, 0)[run_end]
        precision = true_positives / (run_end + 1).double()
        ap[k] = precision[truth.bool()].sum() / max(float(truth.sum()), 1.0)
    return 100.0 * ap
