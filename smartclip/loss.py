"""SmartCLIP's modular contrastive loss (docs/method.md §3) and a plain CLIP InfoNCE baseline.

The modular loss has two terms, named as in the paper:

* **SIDM**, "same image, different masks" (the image side): each image is scored against every
  caption, each caption's own mask applied to the image embedding;
* **DISM**, "different images, same mask" (the text side): each caption is scored against every
  image, all filtered by that caption's mask.

Both terms are written as matrix products, so no [b, N, d] tensor is ever built:

* ``<z_i * m_j, tn_j>``   = ``Z @ (M * Tn)^T``
* ``||z_i * m_j||^2``     = ``(Z * Z) @ (M * M)^T``  (``M * M`` keeps the direct formula's gradient)

Every function takes features from one process; the modules gather across processes.
"""
from __future__ import annotations

from typing import Dict, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import gather_with_grad, is_distributed, world_info

__all__ = [
    "modular_logits", "modular_contrastive_loss", "clip_contrastive_loss", "sparsity_penalty",
    "sentence_structure_terms",
    "ModularContrastiveLoss", "ClipContrastiveLoss",
]

DEFAULT_EPS = 1e-6


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least float32 (half-precision features from autocast are upcast; float64 is kept)."""
    return x if x.dtype == torch.float64 else x.float()


def _check_inputs(image_features, text_features, mask=None):
    if image_features.dim() != 2:
        raise ValueError(f"image_features must be [N, d], got shape {tuple(image_features.shape)}")
    n, d = image_features.shape
    if text_features.shape != (n, d):
        raise ValueError(f"text_features has shape {tuple(text_features.shape)}, expected {(n, d)} "
                         "to match image_features")
    if mask is not None and mask.shape != (n, d):
        raise ValueError(f"mask has shape {tuple(mask.shape)}, expected {(n, d)} to match image_features")


def modular_logits(image_features: torch.Tensor, text_features: torch.Tensor, mask: torch.Tensor,
                   all_image_features: Optional[torch.Tensor] = None,
                   all_text_features: Optional[torch.Tensor] = None,
                   all_mask: Optional[torch.Tensor] = None,
                   scale: float = 100.0, eps: float = DEFAULT_EPS):
    """Logits of both terms for local rows against global columns.

    Returns ``(sidm, dism)``, each [b, N]: ``sidm[i, j] = scale <u(i, j), tn_j>`` (local image
    i, global caption j with its own mask) and ``dism[i, j] = scale <u(j, i), tn_i>`` (local
    caption i with its mask, global image j). The ``all_*`` default to the local tensors.
    """
    z = _upcast(image_features)
    tn = F.normalize(_upcast(text_features), dim=-1)
    m = _upcast(mask)
    z_all = z if all_image_features is None else _upcast(all_image_features)
    tn_all = tn if all_text_features is None else F.normalize(_upcast(all_text_features), dim=-1)
    m_all = m if all_mask is None else _upcast(all_mask)

    def masked_cosine(num, sq_norm):
        return scale * num / sq_norm.clamp_min(eps * eps).sqrt()

    sidm = masked_cosine(z @ (m_all * tn_all).t(), (z * z) @ (m_all * m_all).t())
    if all_image_features is None and all_text_features is None and all_mask is None:
        # one process: dism[i, j] = <u(j, i), tn_i> = sidm[j, i]
        return sidm, sidm.t()
    dism = masked_cosine((m * tn) @ z_all.t(), (m * m) @ (z_all * z_all).t())
    return sidm, dism


def sparsity_penalty(mask: torch.Tensor) -> torch.Tensor:
    """The released sparsity term, ``torch.mean(torch.abs(mask))`` on the (STE) mask.

    Its value is the fraction of active dimensions. Its gradient is not that of ``mask.mean()``:
    an inactive entry of the straight-through mask is exactly ``0 - s + s = 0`` and ``abs`` has
    gradient 0 there, so only active dimensions are pushed down; inactive ones feel only the
    alignment terms. (For a soft mask ``s > 0`` the two agree.)
    """
    return _upcast(mask).abs().mean()


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor, row_groups=None, col_groups=None):
    """Cross-entropy where columns sharing a row's group (other captions of the same image)
    are left out of its negatives."""
    if row_groups is not None:
        same = row_groups[:, None] == col_groups[None, :]
        same[torch.arange(len(labels), device=labels.device), labels] = False
        logits = logits.masked_fill(same, float("-inf"))
    return F.cross_entropy(logits, labels)


def modular_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, mask: torch.Tensor,
                             scale: float = 100.0, eps: float = DEFAULT_EPS,
                             groups: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """The terms of docs/method.md §3 for one process: ``sidm``, ``dism`` and ``sparsity``, unweighted.

    ``image_features`` [N, d] unnormalised; ``text_features`` [N, d] raw (normalised here);
    ``mask`` [N, d] (hard straight-through or soft). Row i of each is one image-caption pair.
    ``groups`` [N] (optional): pairs with the same id show the same image (k captions per
    image); they are not used as each other's negatives.
    """
    _check_inputs(image_features, text_features, mask)
    sidm, dism = modular_logits(image_features, text_features, mask, scale=scale, eps=eps)
    labels = torch.arange(image_features.shape[0], device=image_features.device)
    return {
        "sidm": _cross_entropy(sidm, labels, groups, groups),
        "dism": _cross_entropy(dism, labels, groups, groups),
        "sparsity": sparsity_penalty(mask),
    }


def clip_contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor,
                          mask: Optional[torch.Tensor] = None, scale=100.0,
                          groups: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
    """CLIP's symmetric InfoNCE on normalised features, same interface (``mask`` ignored).

    ``contrastive`` is the mean of the image->text and text->image cross-entropies, as
    open_clip's ``ClipLoss``. ``scale`` may be a tensor (the model's ``logit_scale.exp()``).
    """
    _check_inputs(image_features, text_features)
    img = F.normalize(_upcast(image_features), dim=-1)
    txt = F.normalize(_upcast(text_features), dim=-1)
    logits = scale * img @ txt.t()
    labels = torch.arange(img.shape[0], device=img.device)
    i2t = _cross_entropy(logits, labels, groups, groups)
    t2i = _cross_entropy(logits.t(), labels, groups, groups)
    return {"i2t": i2t, "t2i": t2i, "contrastive": (i2t + t2i) / 2}


def _gathered(local_loss: bool, *tensors):
    """``(rows, columns, label offset)`` for this process: local rows against every process's
    columns (``local_loss``), or the whole gathered batch as rows. Gathering keeps gradients."""
    if not is_distributed():
        return tensors, None, 0
    gathered = tuple(None if t is None else gather_with_grad(t) for t in tensors)
    if not local_loss:
        return gathered, None, 0
    return tensors, gathered, world_info().rank * tensors[0].shape[0]


def sentence_structure_terms(caption_probs: torch.Tensor, sentence_probs: torch.Tensor, owner: torch.Tensor,
                             num_captions: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """Two terms tying a caption's mask to its sentences' masks (an opt-in variant).

    ``caption_probs`` [n, d] mask probabilities of the captions, ``sentence_probs`` [S, d] those of
    their sentences on their own, ``owner`` [S] the caption of each sentence. For a caption c with
    sentences s = 1..k (k >= 2; a one-sentence caption contributes 0):

    * ``union``: ``mean_d (p_c - u_c)^2`` with ``u_c = 1 - prod_s (1 - q_s)`` (the soft OR of its
      sentences' masks): a caption selects what its sentences select, and nothing else;
    * ``exclusive``: ``mean_{s<t} mean_d q_s q_t``: sentences of one caption (in long captions,
      different objects or aspects) select different dimensions.

    Both are summed over captions and divided by ``num_captions`` (default n), so the terms of
    micro-batches add up to those of the whole batch."""
    n, d = caption_probs.shape
    num_captions = n if num_captions is None else num_captions
    zeros = caption_probs.new_zeros((n, d))
    q = sentence_probs.to(zeros.dtype)
    counts = torch.bincount(owner, minlength=n).to(zeros.dtype)
    multi = counts >= 2
    log_none = zeros.index_add(0, owner, torch.log1p(-q.clamp(max=1 - 1e-6)))
    union = 1 - log_none.exp()
    union_term = (((caption_probs - union) ** 2).mean(1) * multi).sum() / num_captions
    first, second = zeros.index_add(0, owner, q), zeros.index_add(0, owner, q * q)
    pairs = (counts * (counts - 1) / 2).clamp(min=1)
    exclusive_term = ((0.5 * (first ** 2 - second)).mean(1) / pairs * multi).sum() / num_captions
    return {"union": union_term, "exclusive": exclusive_term}


class ModularContrastiveLoss(nn.Module):
    """Weighted modular loss over every process's batch.

    ``forward(image_features, text_features, mask, groups=None)`` takes the local batch and
    returns a dict with ``loss`` (``align_weight * (sidm + dism) + sparsity_weight *
    sparsity``) and the unweighted terms. Under torch.distributed, features and masks are
    gathered with gradients and local row ``i`` on rank ``r`` has its positive at column
    ``r * b + i``. With ``local_loss`` (the default, as the released code) each rank
    averages over its own rows; otherwise every rank computes the whole-batch loss. Either
    way, gradients averaged across ranks (DDP) equal the single-process gradient on the
    concatenated batch.

    Opt-in variants (all off by default, which is the released loss): ``sparsity_target``
    makes the sparsity weight a Lagrange multiplier (buffer ``multiplier``, starting at
    ``sparsity_weight``) that :meth:`dual_step` moves by ``dual_lr * (active - target)`` after
    every step, floored at 0; ``mask_l0`` given to ``forward`` (hard-concrete gates) replaces the
    sparsity term by the gates' expected L0; :meth:`structure_terms` weighs
    :func:`sentence_structure_terms` by ``union_weight`` / ``exclusive_weight``.
    """

    def __init__(self, align_weight: float = 10.0, sparsity_weight: float = 2.0, scale: float = 100.0,
                 local_loss: bool = True, eps: float = DEFAULT_EPS, sparsity_target: Optional[float] = None,
                 dual_lr: float = 10.0, union_weight: float = 0.0, exclusive_weight: float = 0.0):
        super().__init__()
        self.align_weight, self.sparsity_weight = align_weight, sparsity_weight
        self.scale, self.local_loss, self.eps = scale, local_loss, eps
        self.sparsity_target, self.dual_lr = sparsity_target, dual_lr
        self.union_weight, self.exclusive_weight = union_weight, exclusive_weight
        # the Lagrange multiplier of the target-fraction variant (saved with the trainer state)
        self.register_buffer("multiplier", torch.tensor(float(sparsity_weight), dtype=torch.float64))

    @property
    def uses_sentences(self) -> bool:
        return self.union_weight > 0 or self.exclusive_weight > 0

    def current_sparsity_weight(self) -> float:
        return float(self.multiplier) if self.sparsity_target is not None else self.sparsity_weight

    def dual_step(self, active_fraction: float) -> None:
        """Dual ascent on the multiplier: up while more than the target is active, down (not
        below 0) while less. ``active_fraction`` is the step's sparsity term, averaged over
        processes, so every process keeps the same multiplier."""
        if self.sparsity_target is not None:
            self.multiplier.add_(self.dual_lr * (active_fraction - self.sparsity_target)).clamp_(min=0.0)

    def structure_terms(self, caption_probs: torch.Tensor, sentence_probs: torch.Tensor, owner: torch.Tensor,
                        num_captions: Optional[int] = None) -> Dict[str, torch.Tensor]:
        """The sentence-structure terms and their weighted sum ``structure``."""
        terms = sentence_structure_terms(caption_probs, sentence_probs, owner, num_captions)
        terms["structure"] = self.union_weight * terms["union"] + self.exclusive_weight * terms["exclusive"]
        return terms

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor, mask: torch.Tensor,
                groups: Optional[torch.Tensor] = None, mask_l0: Optional[torch.Tensor] = None,
                **_unused) -> Dict[str, torch.Tensor]:
        _check_inputs(image_features, text_features, mask)
        rows, cols, offset = _gathered(self.local_loss, image_features, text_features, mask, groups)
        img, txt, m, g = rows
        if cols is None:
            terms = modular_contrastive_loss(img, txt, m, self.scale, self.eps, groups=g)
        else:
            all_img, all_txt, all_m, all_g = cols
            sidm, dism = modular_logits(img, txt, m, all_img, all_txt, all_m, self.scale, self.eps)
            labels = torch.arange(img.shape[0], device=sidm.device) + offset
            terms = {"sidm": _cross_entropy(sidm, labels, g, all_g),
                     "dism": _cross_entropy(dism, labels, g, all_g),
                     "sparsity": sparsity_penalty(m)}
        if mask_l0 is not None:  # hard-concrete gates: their expected L0, over this process's captions
            terms["sparsity"] = _upcast(mask_l0).mean()
        weight = self.current_sparsity_weight()
        terms["loss"] = self.align_weight * (terms["sidm"] + terms["dism"]) + weight * terms["sparsity"]
        if self.sparsity_target is not None:
            terms["sparsity_multiplier"] = self.multiplier.detach().clone()
        return terms


class ClipContrastiveLoss(nn.Module):
    """CLIP InfoNCE baseline with the modular loss's interface and gathering.

    ``scale=None`` uses the model's learned temperature (pass ``logit_scale``, i.e.
    ``exp`` of the parameter, to ``forward``); a number fixes it.
    """

    def __init__(self, scale: Optional[float] = None, local_loss: bool = True, weight: float = 1.0):
        super().__init__()
        self.scale, self.local_loss, self.weight = scale, local_loss, weight

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                mask: Optional[torch.Tensor] = None, logit_scale: Optional[torch.Tensor] = None,
                groups: Optional[torch.Tensor] = None, **_unused) -> Dict[str, torch.Tensor]:
        _check_inputs(image_features, text_features)
        scale = self.scale if self.scale is not None else logit_scale
        if scale is None:
            raise ValueError("ClipContrastiveLoss(scale=None) needs logit_scale in forward()")
        rows, cols, offset = _gathered(self.local_loss, image_features, text_features, groups)
        img, txt, g = rows
        if cols is None:
            terms = clip_contrastive_loss(img, txt, scale=scale, groups=g)
        else:
            all_img, all_txt, all_g = cols
            img, txt = F.normalize(_upcast(img), dim=-1), F.normalize(_upcast(txt), dim=-1)
            labels = torch.arange(img.shape[0], device=img.device) + offset
            i2t = _cross_entropy(scale * img @ F.normalize(_upcast(all_txt), dim=-1).t(), labels, g, all_g)
            t2i = _cross_entropy(scale * txt @ F.normalize(_upcast(all_img), dim=-1).t(), labels, g, all_g)
            terms = {"i2t": i2t, "t2i": t2i, "contrastive": (i2t + t2i) / 2}
        terms["loss"] = self.weight * terms["contrastive"]
        return terms
