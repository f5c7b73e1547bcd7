"""One optimisation step's forward and backward: the whole local batch at once, or in
micro-batches with gradient caching.

Gradient caching (Gao et al., 2021) keeps the contrastive negatives of the full batch:

1. encode every micro-batch without a graph and concatenate the features and masks;
2. compute the loss on those (gathered across processes) and backpropagate it to the
   features only, giving d loss / d feature for every row;
3. encode each micro-batch again with a graph and backpropagate the cached feature
   gradients into the weights (under DDP, ``no_sync`` for all but the last).

The parameter gradients equal those of the full batch; peak activation memory is that of
one micro-batch. Plain gradient accumulation, which would shrink the negative pool to a
micro-batch, is deliberately not offered.
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist
from torch import nn

from smartclip.distributed import is_distributed, world_info

__all__ = ["ContrastiveStep", "StepOutput", "build_loss"]

LOGIT_SCALE_MAX = math.log(100.0)  # open_clip clamps the learned temperature here


def build_loss(objective: str, loss_cfg) -> nn.Module:
    from smartclip.loss import ClipContrastiveLoss, ModularContrastiveLoss
    if objective == "smartclip":
        return ModularContrastiveLoss(align_weight=loss_cfg.align_weight, sparsity_weight=loss_cfg.sparsity_weight,
                                      scale=loss_cfg.scale, local_loss=loss_cfg.local_loss,
                                      sparsity_target=loss_cfg.sparsity_target, dual_lr=loss_cfg.dual_lr,
                                      union_weight=loss_cfg.union_weight, exclusive_weight=loss_cfg.exclusive_weight)
    if objective == "clip":
        return ClipContrastiveLoss(scale=loss_cfg.scale, local_loss=loss_cfg.local_loss)
    raise ValueError(f"objective must be 'smartclip' or 'clip', got {objective!r}")


@dataclass
class StepOutput:
    """Loss terms (floats, averaged over processes) and mask statistics of one step.
    ``finite`` is False when any process saw a non-finite loss; no gradient was added then."""
    terms: Dict[str, float] = field(default_factory=dict)
    finite: bool = True


class ContrastiveStep:
    """Adds the gradient of one global batch's loss to ``model``'s parameters.

    ``model``: the SmartCLIP module; ``forward_module``: what to call for forward passes
    (the DDP wrapper under torch.distributed, else ``model``). ``micro_batch``: images per
    forward pass, None for the whole local batch. ``full_mask`` replaces the predicted mask
    by ones (a control). ``autocast``: a context-manager factory; ``scaler``: an
    ``torch.amp.GradScaler`` for fp16, or None.
    """

    def __init__(self, model: nn.Module, loss_fn: nn.Module, *, objective: str = "smartclip",
                 full_mask: bool = False, micro_batch: Optional[int] = None,
                 forward_module: Optional[nn.Module] = None,
                 autocast: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
                 scaler=None):
        self.model, self.loss_fn = model, loss_fn
        self.forward_module = forward_module if forward_module is not None else model
        self.objective, self.full_mask, self.micro_batch = objective, full_mask, micro_batch
        self.autocast, self.scaler = autocast, scaler
        self.learned_scale = objective == "clip" and getattr(loss_fn, "scale", 0) is None
        # the mask network runs only when the modular loss uses its output
        self.predict_mask = objective == "smartclip" and not full_mask
        # per-caption terms on sentence masks (an opt-in variant), computed per forward pass
        self.sentences = self.predict_mask and getattr(loss_fn, "uses_sentences", False)

    # --------------------------------------------------------------------- helpers
    def _forward(self, module, images, tokens, with_sentences=False):
        with self.autocast():
            return module(images, tokens, with_mask=self.predict_mask, with_sentences=with_sentences)

    def _structure(self, out, num_captions):
        return self.loss_fn.structure_terms(out["mask_probs"], out["sentence_probs"], out["sentence_owner"],
                                            num_captions)

    def _loss(self, image_features, text_features, mask, logit_scale, image_index, mask_l0=None):
        if self.objective == "smartclip" and mask is None:
            # float32 under half-precision autocast, float64 for a float64 model
            mask = torch.ones_like(text_features, dtype=torch.promote_types(text_features.dtype, torch.float32))
        groups = None
        if image_index.numel() != image_features.shape[0]:
            # k captions per image: other captions of the same image are not negatives.
            # Ids must be global across processes: offset by this rank's image rows.
            groups = image_index + world_info().rank * image_features.shape[0]
        return self.loss_fn(image_features=image_features[image_index], text_features=text_features,
                            mask=mask, logit_scale=logit_scale, groups=groups, mask_l0=mask_l0)

    def _scaled(self, loss):
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def _all_finite(self, loss: torch.Tensor) -> bool:
        flag = torch.tensor([0.0 if torch.isfinite(loss.detach()).all() else 1.0], device=loss.device)
        if is_distributed():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return flag.item() == 0.0

    def _summary(self, terms, mask_probs, n_dims, logit_scale) -> Dict[str, float]:
        """Loss terms averaged over processes, the logit scale the loss used, mask statistics."""
        names = sorted(terms)
        values = torch.stack([terms[k].detach().float().reshape(()) for k in names])
        if self.predict_mask:
            active = (mask_probs.detach() >= 0.5).sum(-1).float()
            stats = torch.stack([active.sum(), torch.tensor(float(active.numel()), device=active.device)])
            lo, hi = active.min().reshape(1), active.max().reshape(1)
        if is_distributed():
            world = dist.get_world_size()
            dist.all_reduce(values)
            values /= world
            if self.predict_mask:
                dist.all_reduce(stats)
                dist.all_reduce(lo, op=dist.ReduceOp.MIN)
                dist.all_reduce(hi, op=dist.ReduceOp.MAX)
        out = {k: float(v) for k, v in zip(names, values.tolist())}
        fixed = getattr(self.loss_fn, "scale", None)
        out["scale"] = float(fixed) if fixed is not None else float(logit_scale.detach())
        if self.predict_mask:
            out.update({"mask_active_mean": float(stats[0] / stats[1]), "mask_active_min": float(lo),
                        "mask_active_max": float(hi), "mask_active_frac": float(stats[0] / stats[1]) / n_dims})
        elif self.objective == "smartclip":  # full mask: every dimension is active
            out.update({"mask_active_mean": float(n_dims), "mask_active_min": float(n_dims),
                        "mask_active_max": float(n_dims), "mask_active_frac": 1.0})
        return out

    # ------------------------------------------------------------------------ step
    def __call__(self, images: torch.Tensor, tokens: torch.Tensor, image_index: torch.Tensor) -> StepOutput:
        """Forward + backward for the local batch: ``images`` [B, 3, H, W], ``tokens`` [n, ctx],
        ``image_index`` [n] (caption row -> image row). Gradients are added to ``.grad``."""
        if image_index.numel() != tokens.shape[0]:
            raise ValueError(f"image_index has {image_index.numel()} rows, tokens {tokens.shape[0]}")
        batch = images.shape[0]
        if self.micro_batch is None or self.micro_batch >= batch:
            return self._whole(images, tokens, image_index)
        if batch % self.micro_batch:
            raise ValueError(f"micro_batch={self.micro_batch} does not divide the local batch of {batch} images")
        return self._cached(images, tokens, image_index)

    def _whole(self, images, tokens, image_index) -> StepOutput:
        out = self._forward(self.forward_module, images, tokens, with_sentences=self.sentences)
        terms = self._loss(out["image_features"], out["text_features"], out.get("mask"),
                           out["logit_scale"], image_index, out.get("mask_l0"))
        if self.sentences:
            structure = self._structure(out, tokens.shape[0])
            terms.update(union=structure["union"], exclusive=structure["exclusive"],
                         loss=terms["loss"] + structure["structure"])
        summary = self._summary(terms, out.get("mask_probs"), out["text_features"].shape[-1], out["logit_scale"])
        if not self._all_finite(terms["loss"]):
            return StepOutput(summary, False)
        self._scaled(terms["loss"]).backward()
        return StepOutput(summary, True)

    def _cached(self, images, tokens, image_index) -> StepOutput:
        batch, mb = images.shape[0], self.micro_batch
        chunks = [(s, s + mb) for s in range(0, batch, mb)]
        rows = [((image_index >= s) & (image_index < e)).nonzero().squeeze(1) for s, e in chunks]

        # 1. features of the whole local batch, no graph; each chunk's random state is kept so the
        #    recomputation in 3 draws the same noise (hard-concrete gates, dropout)
        rng = []
        with torch.no_grad():
            outs = []
            for (s, e), r in zip(chunks, rows):
                rng.append(_rng_state(images.device))
                outs.append(self._forward(self.model, images[s:e], tokens[r]))
        after_forward = _rng_state(images.device)
        image_feats = torch.cat([o["image_features"] for o in outs])
        text_feats = self._scatter_rows([o["text_features"] for o in outs], rows, tokens.shape[0])
        leaves = {"image": image_feats.requires_grad_(), "text": text_feats.requires_grad_()}
        mask_probs = None
        if self.predict_mask:
            mask_probs = self._scatter_rows([o["mask_probs"] for o in outs], rows, tokens.shape[0])
            for name, key in (("mask", "mask"), ("l0", "mask_l0")):
                if key in outs[0]:
                    leaves[name] = self._scatter_rows([o[key] for o in outs], rows, tokens.shape[0]).requires_grad_()
        scale = outs[0]["logit_scale"].detach()
        if self.learned_scale:
            leaves["scale"] = scale.requires_grad_()

        # 2. loss and its gradient with respect to the cached features
        terms = self._loss(leaves["image"], leaves["text"], leaves.get("mask"), scale, image_index, leaves.get("l0"))
        if not self._all_finite(terms["loss"]):
            return StepOutput(self._summary(terms, mask_probs, text_feats.shape[-1], scale), False)
        self._scaled(terms["loss"]).backward()
        grads = {k: v.grad for k, v in leaves.items()}

        # 3. recompute each micro-batch with a graph and push the cached gradients through it; the
        #    per-caption sentence terms add up over micro-batches, so each adds its own gradient
        structure_sums: Dict[str, float] = {}
        ddp = self.forward_module is not self.model and hasattr(self.forward_module, "no_sync")
        for k, ((s, e), r) in enumerate(zip(chunks, rows)):
            last = k == len(chunks) - 1
            sync = contextlib.nullcontext() if (last or not ddp) else self.forward_module.no_sync()
            _set_rng_state(rng[k], images.device)
            with sync:
                out = self._forward(self.forward_module, images[s:e], tokens[r], with_sentences=self.sentences)
                outputs = [out["image_features"], out["text_features"]]
                grad_list = [grads["image"][s:e], grads["text"][r]]
                for name, key in (("mask", "mask"), ("l0", "mask_l0")):
                    if name in grads:
                        outputs.append(out[key])
                        grad_list.append(grads[name][r])
                if "scale" in grads and last:
                    outputs.append(out["logit_scale"])
                    grad_list.append(grads["scale"])
                if self.sentences:
                    structure = self._structure(out, tokens.shape[0])
                    for name in ("union", "exclusive", "structure"):
                        structure_sums[name] = structure_sums.get(name, 0.0) + structure[name].detach()
                    outputs.append(self._scaled(structure["structure"]))
                    grad_list.append(torch.ones_like(structure["structure"]))
                torch.autograd.backward(outputs, [g.to(o.dtype) for o, g in zip(outputs, grad_list)])
        _set_rng_state(after_forward, images.device)
        if self.sentences:
            terms["loss"] = terms["loss"].detach() + structure_sums.pop("structure")
            terms.update(structure_sums)
        return StepOutput(self._summary(terms, mask_probs, text_feats.shape[-1], scale), True)

    # ---------------------------------------------------------------------- update
    def update(self, optimizer: torch.optim.Optimizer, out: StepOutput, grad_clip: Optional[float] = None):
        """The optimiser update after a finite step: the target-fraction variant's multiplier,
        gradient clipping (``grad_clip``; its norm goes into ``out.terms["grad_norm"]``), the
        AdamW step through the loss scaler, and open_clip's clamp of a learned temperature."""
        if hasattr(self.loss_fn, "dual_step"):  # the target-fraction variant's multiplier
            self.loss_fn.dual_step(out.terms["sparsity"])
        if grad_clip is not None:
            if self.scaler is not None:
                self.scaler.unscale_(optimizer)
            out.terms["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(self.model.parameters(), grad_clip))
        if self.scaler is not None:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()
        if self.model.logit_scale.requires_grad:
            with torch.no_grad():
                self.model.logit_scale.clamp_(0, LOGIT_SCALE_MAX)

    @staticmethod
    def _scatter_rows(parts: List[torch.Tensor], rows: List[torch.Tensor], n: int) -> torch.Tensor:
        """Put per-chunk caption rows back into the batch's caption order."""
        first = parts[0]
        out = first.new_empty((n,) + tuple(first.shape[1:]))
        for part, r in zip(parts, rows):
            out[r] = part
        return out


def _rng_state(device: torch.device):
    state = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state, device: torch.device):
    torch.set_rng_state(state["cpu"])
    if "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)
