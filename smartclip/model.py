"""The SmartCLIP model: an open_clip CLIP with long text and a text-conditioned mask.

State-dict names follow the OpenAI / authors' layout (docs/method.md §8): ``visual.*``,
``transformer.resblocks.*``, ``token_embedding.weight``, ``positional_embedding``
(frozen), ``positional_embedding_res`` (trainable), ``ln_final.*``,
``text_projection``, ``logit_scale`` and ``mask_net.*``.
"""
from __future__ import annotations

import copy
import math
from dataclasses import asdict
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn
from open_clip.model import CLIP
from open_clip.transform import PreprocessCfg
from open_clip.transformer import ResidualAttentionBlock, text_global_pool

from .tokenizer import split_sentences

__all__ = ["stretch_positional_embedding", "stretched_length", "MaskNetwork", "SmartCLIP", "straight_through_mask",
           "hard_concrete_gate", "build_model", "model_options", "MASK_GATES", "DEFAULT_OPTIONS"]

# The construction options of a SmartCLIP and their defaults (the released model's settings):
# keep / ratio define the positional stretch; the rest are named departures (docs/method.md §9).
DEFAULT_OPTIONS: Dict[str, Any] = {"keep": 20, "ratio": 4, "soft_mask": False, "mask_padding": False,
                                   "mask_gate": "ste"}


def model_options(overrides: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """:data:`DEFAULT_OPTIONS` with ``overrides``; an unknown option is a ``TypeError`` naming the valid ones."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(DEFAULT_OPTIONS)
    if unknown:
        raise TypeError(f"unknown model option(s) {sorted(unknown)}; valid: {sorted(DEFAULT_OPTIONS)}")
    return {**DEFAULT_OPTIONS, **overrides}


def stretched_length(base: int, keep: int = DEFAULT_OPTIONS["keep"], ratio: int = DEFAULT_OPTIONS["ratio"]) -> int:
    """Positions after Long-CLIP's stretch of ``base`` positions: ``keep + ratio * (base - keep)``
    (248 for CLIP's 77); ``ratio == 1`` leaves the table alone."""
    return base if ratio == 1 else keep + ratio * (base - keep)


def stretch_positional_embedding(P: torch.Tensor, keep: int = 20, ratio: int = 4) -> torch.Tensor:
    """Long-CLIP's knowledge-preserved stretching of positional embeddings.

    Rows ``[:keep]`` are copied; every later gap ``P[k] -> P[k+1]`` is filled with
    ``ratio`` linearly interpolated rows, and the last row is extrapolated along
    ``P[L-1] - P[L-2]``. Output length is ``keep + ratio * (L - keep)``.
    """
    if P.dim() != 2:
        raise ValueError(f"positional embedding must be [positions, width], got shape {tuple(P.shape)}")
    L = P.shape[0]
    if ratio < 1:
        raise ValueError(f"ratio must be >= 1, got {ratio}")
    if not 0 <= keep <= L - 2:
        raise ValueError(f"keep must be in [0, {L - 2}] for {L} positions, got {keep}")
    w = (torch.arange(ratio, dtype=torch.float32, device=P.device) / ratio).to(P.dtype)
    start, end = P[keep:L - 1], P[keep + 1:L]  # each gap k -> k+1
    between = (1 - w)[None, :, None] * start[:, None, :] + w[None, :, None] * end[:, None, :]
    tail = P[L - 1][None, :] + w[:, None] * (P[L - 1] - P[L - 2])[None, :]
    return torch.cat([P[:keep], between.reshape(-1, P.shape[1]), tail], dim=0)


def _at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """Mask logits in float32 under half-precision autocast; float64 (a float64 model) is kept."""
    return x if x.dtype == torch.float64 else x.float()


def straight_through_mask(probs: torch.Tensor) -> torch.Tensor:
    """Hard 0/1 mask in the forward pass, the gradient of ``probs`` in the backward pass."""
    hard = (probs >= 0.5).to(probs.dtype)
    return hard - probs.detach() + probs


MASK_GATES = ("ste", "hard_concrete")
HARD_CONCRETE_STRETCH = (-0.1, 1.1)  # (gamma, zeta) of Louizos, Welling & Kingma (2018)


def hard_concrete_gate(logits: torch.Tensor, temperature: float, sample: bool,
                       stretch: Tuple[float, float] = HARD_CONCRETE_STRETCH) -> Tuple[torch.Tensor, torch.Tensor]:
    """Hard-concrete gates (the L0 relaxation of Louizos et al., 2018) and their expected L0.

    ``sample``: ``s = sigmoid((log u - log(1 - u) + logits) / temperature)`` with ``u ~ U(0, 1)``;
    otherwise ``s = sigmoid(logits)``. The gate ``clamp(s (zeta - gamma) + gamma, 0, 1)`` is exactly
    0 or 1 with positive probability and differentiable in between; ``P(gate != 0) =
    sigmoid(logits - temperature * log(-gamma / zeta))`` is the expected L0, a differentiable
    sparsity penalty. Returns ``(gate, expected_l0)``."""
    gamma, zeta = stretch
    if sample:
        u = torch.rand_like(logits).clamp(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / temperature)
    else:
        s = torch.sigmoid(logits)
    gate = (s * (zeta - gamma) + gamma).clamp(0.0, 1.0)
    expected_l0 = torch.sigmoid(logits - temperature * math.log(-gamma / zeta))
    return gate, expected_l0


class AttentionPool(nn.Module):
    """Softmax-over-tokens pooling with a learned score per token."""

    def __init__(self, width: int):
        super().__init__()
        self.attention = nn.Linear(width, 1)

    def forward(self, x: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        scores = self.attention(x).squeeze(-1)  # [B, L]
        if pad is not None:
            scores = scores.masked_fill(pad, float("-inf"))
        weights = scores.softmax(dim=-1)
        return torch.einsum("bl,bld->bd", weights, x)


class MaskNetwork(nn.Module):
    """Predicts mask logits over image-embedding dimensions from the text token sequence.

    One pre-LN residual attention block (bidirectional), attention pooling, and a
    projection only when the text width differs from the embedding size (docs/method.md §2).
    """

    def __init__(self, width: int, heads: int, embed_dim: int, act_layer=nn.GELU, norm_layer=nn.LayerNorm):
        super().__init__()
        self.resblocks = nn.ModuleList([
            ResidualAttentionBlock(width, heads, mlp_ratio=4.0, act_layer=act_layer, norm_layer=norm_layer)
        ])
        self.attn_pool = AttentionPool(width)
        self.proj = nn.Linear(width, embed_dim, bias=False) if width != embed_dim else None
        self.heads = heads
        self.reset_parameters()

    def reset_parameters(self):
        width = self.attn_pool.attention.in_features
        layers = len(self.resblocks)
        attn_std = width ** -0.5
        proj_std = width ** -0.5 * (2 * layers) ** -0.5
        fc_std = (2 * width) ** -0.5
        for block in self.resblocks:
            nn.init.normal_(block.attn.in_proj_weight, std=attn_std)
            nn.init.normal_(block.attn.out_proj.weight, std=proj_std)
            nn.init.normal_(block.mlp.c_fc.weight, std=fc_std)
            nn.init.normal_(block.mlp.c_proj.weight, std=proj_std)
        nn.init.normal_(self.attn_pool.attention.weight, std=width ** -0.5)
        nn.init.zeros_(self.attn_pool.attention.bias)
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=width ** -0.5)

    def forward(self, sequence: torch.Tensor, pad: Optional[torch.Tensor] = None) -> torch.Tensor:
        """``sequence`` [B, L, width] -> mask logits [B, embed_dim]. ``pad`` [B, L] is True at
        positions to ignore (only used with ``mask_padding``; the released model attends to all)."""
        x = sequence
        attn_mask = None
        if pad is not None:
            # additive [B * heads, L, L] mask hiding padded keys
            attn_mask = torch.zeros(pad.shape[0], 1, pad.shape[1], dtype=x.dtype, device=x.device)
            attn_mask = attn_mask.masked_fill(pad[:, None, :], float("-inf"))
            attn_mask = attn_mask.expand(-1, pad.shape[1], -1).repeat_interleave(self.heads, dim=0)
        for block in self.resblocks:
            x = block(x, attn_mask=attn_mask)
        pooled = self.attn_pool(x, pad)
        if self.proj is not None:
            pooled = self.proj(pooled)
        return pooled


def _activation_of(clip: CLIP):
    act = clip.transformer.resblocks[0].mlp.gelu
    return act.__class__


class SmartCLIP(nn.Module):
    """CLIP with 248-token text (stretched positions) and a mask network.

    Built from an open_clip ``CLIP``; takes over its modules so the state dict keeps
    the OpenAI names. ``keep`` and ``ratio`` define the positional stretch
    (context = keep + ratio * (L - keep), 248 for CLIP's 77). ``soft_mask``: train with
    ``sigmoid(logits)`` instead of the straight-through hard mask; ``mask_padding``: the mask
    network ignores padding; ``mask_gate="hard_concrete"``: in training, sampled hard-concrete
    gates at temperature ``mask_temperature`` (an opt-in variant; inference thresholds
    ``sigmoid(logits)`` at 0.5 either way).

    What the model is, beyond its modules, is kept in fields that checkpoints record:
    ``model_name``, ``model_cfg`` (the open_clip-style config it was built from; ``None`` when
    built from a bare ``CLIP``), ``preprocess_cfg`` (open_clip's image preprocessing),
    ``mask_trained`` (False when the mask network is freshly initialised, as for Long-CLIP or
    OpenAI weights) and ``training_info`` (how a training checkpoint was made, or ``None``).
    """

    def __init__(
        self,
        clip: CLIP,
        keep: int = DEFAULT_OPTIONS["keep"],
        ratio: int = DEFAULT_OPTIONS["ratio"],
        soft_mask: bool = DEFAULT_OPTIONS["soft_mask"],
        mask_padding: bool = DEFAULT_OPTIONS["mask_padding"],
        mask_gate: str = DEFAULT_OPTIONS["mask_gate"],
        *,
        model_name: str = "custom",
        model_cfg: Optional[dict] = None,
        preprocess_cfg: Optional[dict] = None,
        mask_trained: bool = True,
        training_info: Optional[dict] = None,
    ):
        super().__init__()
        if mask_gate not in MASK_GATES:
            raise ValueError(f"mask_gate must be one of {MASK_GATES}, got {mask_gate!r}")
        if not isinstance(clip, CLIP) or not hasattr(clip, "token_embedding"):
            raise TypeError(
                "SmartCLIP needs an open_clip CLIP with the built-in text transformer "
                f"(got {type(clip).__name__}); Hugging Face text towers and CoCa are not supported")
        if clip.text_pool_type not in ("argmax", "eos"):
            raise ValueError(f"text pool type {clip.text_pool_type!r} is not supported (argmax or eos)")
        self.visual = clip.visual
        self.transformer = clip.transformer
        self.token_embedding = clip.token_embedding
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.logit_scale = clip.logit_scale
        self.text_pool_type = clip.text_pool_type
        self.text_eos_id = clip.text_eos_id
        self.causal = clip.attn_mask is not None
        self.keep, self.ratio = keep, ratio
        self.soft_mask, self.mask_padding, self.mask_gate = soft_mask, mask_padding, mask_gate
        self.mask_temperature = 2 / 3  # of the hard-concrete gates; the training loop anneals it

        base = clip.positional_embedding.detach()
        stretched = stretch_positional_embedding(base, keep, ratio) if ratio > 1 else base.clone()
        self.context_length = stretched.shape[0]
        # Frozen copy serves positions < keep; the trainable copy serves the rest.
        self.register_buffer("positional_embedding", stretched.clone())
        self.positional_embedding_res = nn.Parameter(stretched.clone())
        if self.causal:
            mask = torch.full((self.context_length, self.context_length), float("-inf")).triu_(1)
            self.register_buffer("attn_mask", mask, persistent=False)
        else:
            self.attn_mask = None

        width = self.transformer.width
        heads = self.transformer.resblocks[0].attn.num_heads
        embed_dim = self.embed_dim
        self.mask_net = MaskNetwork(width, heads, embed_dim, act_layer=_activation_of(clip),
                                    norm_layer=type(self.ln_final))

        self.model_name = model_name
        self.model_cfg = copy.deepcopy(model_cfg)
        pre = asdict(PreprocessCfg())
        pre["size"] = self.image_size[0] if self.image_size[0] == self.image_size[1] else list(self.image_size)
        pre.update({k: v for k, v in (preprocess_cfg or {}).items() if k in pre})
        self.preprocess_cfg = pre
        self.mask_trained = bool(mask_trained)
        self.training_info = training_info

    # ----------------------------------------------------------------- properties
    @property
    def embed_dim(self) -> int:
        proj = self.text_projection
        return proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]

    @property
    def options(self) -> Dict[str, object]:
        """The construction options a checkpoint records (``create_model(..., **options)``)."""
        return {"keep": self.keep, "ratio": self.ratio, "soft_mask": self.soft_mask,
                "mask_padding": self.mask_padding, "mask_gate": self.mask_gate}

    @property
    def text_width(self) -> int:
        return self.transformer.width

    @property
    def image_size(self) -> Tuple[int, int]:
        size = self.visual.image_size
        return tuple(size) if isinstance(size, (tuple, list)) else (size, size)

    def merged_positional_embedding(self) -> torch.Tensor:
        """The single [context, width] table an ordinary CLIP would use."""
        return torch.cat([self.positional_embedding[: self.keep], self.positional_embedding_res[self.keep:]], 0)

    def set_grad_checkpointing(self, enable: bool = True):
        self.visual.set_grad_checkpointing(enable)
        self.transformer.grad_checkpointing = enable

    # ------------------------------------------------------------------- encoders
    def encode_image(self, images: torch.Tensor, normalize: bool = False) -> torch.Tensor:
        features = self.visual(images)
        return F.normalize(features, dim=-1) if normalize else features

    def _eot_index(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.text_pool_type == "eos":
            return (tokens == self.text_eos_id).int().argmax(dim=-1)
        return tokens.argmax(dim=-1)

    def _text_tower(self, tokens: torch.Tensor, trim: bool) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (projected EOT features [B, embed_dim], final-LN sequence [B, L, width])."""
        if tokens.shape[-1] != self.context_length:
            raise ValueError(f"tokens have {tokens.shape[-1]} positions, the model expects "
                             f"{self.context_length}; use smartclip.get_tokenizer(model)")
        length = self.context_length
        if trim and self.causal:
            # causal attention: positions up to each text's EOT never see the padding after it
            length = int(self._eot_index(tokens).max()) + 1
            tokens = tokens[:, :length]
        cast_dtype = self.transformer.get_cast_dtype()
        x = self.token_embedding(tokens).to(cast_dtype)
        x = x + self.merged_positional_embedding()[:length].to(cast_dtype)
        attn_mask = self.attn_mask[:length, :length] if self.attn_mask is not None else None
        x = self.transformer(x, attn_mask=attn_mask)
        sequence = self.ln_final(x)
        pooled = text_global_pool(sequence, tokens, self.text_pool_type, eos_token_id=self.text_eos_id)
        if isinstance(self.text_projection, nn.Linear):
            pooled = self.text_projection(pooled)
        else:
            pooled = pooled @ self.text_projection
        return pooled, sequence

    def text_token_features(self, tokens: torch.Tensor, hidden_state: Optional[int] = None
                            ) -> Tuple[torch.Tensor, torch.Tensor]:
        """(projected EOT features [B, embed_dim], per-token features [B, context, width]) over
        the whole context, padding included (what a diffusion model's cross-attention reads).
        ``hidden_state=None``: the final-LayerNorm output (Long-CLIP's choice); an index ``i``
        into (embeddings, output of block 1, ..., output of block n), before any norm, as Hugging
        Face's ``hidden_states[i]``: ``-2`` is the penultimate layer (diffusers' SDXL choice)."""
        if hidden_state is None:
            return self._text_tower(tokens, trim=False)
        blocks = self.transformer.resblocks
        index = range(len(blocks) + 1)[hidden_state]  # IndexError names a bad index
        captured = []
        if index < len(blocks):  # the input of block ``index``
            hook = blocks[index].register_forward_pre_hook(lambda m, args: captured.append(args[0]))
        else:
            hook = blocks[-1].register_forward_hook(lambda m, args, out: captured.append(out))
        try:
            pooled, _ = self._text_tower(tokens, trim=False)
        finally:
            hook.remove()
        sequence = captured[0] if self.transformer.batch_first else captured[0].transpose(0, 1)
        return pooled, sequence

    def encode_text(self, tokens: torch.Tensor, normalize: bool = False, trim: bool = True) -> torch.Tensor:
        """Text embeddings. ``trim`` drops padding after the longest text (same values)."""
        features, _ = self._text_tower(tokens, trim=trim)
        return F.normalize(features, dim=-1) if normalize else features

    def _padding(self, tokens: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        return positions[None, :] > self._eot_index(tokens)[:, None]

    def _mask_logits(self, sequence: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        pad = self._padding(tokens[:, : sequence.shape[1]]) if self.mask_padding else None
        return self.mask_net(sequence.detach(), pad)  # no gradient into the text encoder

    def _mask_from_sequence(self, sequence: torch.Tensor, tokens: torch.Tensor) -> Dict[str, torch.Tensor]:
        logits = self._mask_logits(sequence, tokens)
        probs = torch.sigmoid(_at_least_float32(logits))
        out = {"mask_probs": probs, "mask_logits": logits}
        if self.mask_gate == "hard_concrete":
            out["mask"], out["mask_l0"] = hard_concrete_gate(_at_least_float32(logits), self.mask_temperature,
                                                             self.training)
        else:
            out["mask"] = probs if self.soft_mask else straight_through_mask(probs)
        return out

    def text_mask(self, tokens: torch.Tensor, soft: Optional[bool] = None) -> torch.Tensor:
        """The mask [n, embed_dim] each text selects: hard 0/1 with a straight-through
        gradient, or the sigmoid probabilities with ``soft=True``."""
        # with mask_padding the padding is ignored anyway, so trimming is exact
        _, sequence = self._text_tower(tokens, trim=self.mask_padding)
        probs = torch.sigmoid(_at_least_float32(self._mask_logits(sequence, tokens)))
        soft = self.soft_mask if soft is None else soft
        return probs if soft else straight_through_mask(probs)

    def sentence_mask_probs(self, tokens: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Mask probabilities of every sentence of every caption on its own: ``(probs [S, embed_dim],
        owner [S])``, ``owner[k]`` the caption row sentence ``k`` comes from. Sentences end at a
        period token (``smartclip.tokenizer.split_sentences``). The text tower runs without a graph
        (the mask network reads it detached anyway); gradients reach the mask network."""
        sentences, owner = split_sentences(tokens, self._eot_index(tokens))
        if not len(sentences):
            return tokens.new_zeros((0, self.embed_dim), dtype=torch.float32), owner
        with torch.no_grad():
            _, sequence = self._text_tower(sentences, trim=self.mask_padding)
        return torch.sigmoid(_at_least_float32(self._mask_logits(sequence, sentences))), owner

    def forward(self, images: Optional[torch.Tensor] = None, tokens: Optional[torch.Tensor] = None,
                with_mask: bool = True, with_sentences: bool = False) -> Dict[str, torch.Tensor]:
        """What the losses need: unnormalised ``image_features``, raw ``text_features``,
        ``mask`` (STE, soft or hard-concrete), ``mask_probs``, ``mask_logits``, ``mask_l0``
        (hard-concrete gates only) and ``logit_scale``; with ``with_sentences``, also
        ``sentence_probs`` / ``sentence_owner`` (:meth:`sentence_mask_probs`)."""
        out: Dict[str, torch.Tensor] = {"logit_scale": self.logit_scale.exp()}
        if images is not None:
            out["image_features"] = self.encode_image(images)
        if tokens is not None:
            features, sequence = self._text_tower(tokens, trim=not with_mask or self.mask_padding)
            out["text_features"] = features
            if with_mask:
                out.update(self._mask_from_sequence(sequence, tokens))
            if with_sentences:
                out["sentence_probs"], out["sentence_owner"] = self.sentence_mask_probs(tokens)
        return out


def build_model(model_cfg: dict, options: Optional[Dict[str, Any]] = None, *, model_name: str = "custom",
                preprocess_cfg: Optional[dict] = None, mask_trained: bool = True,
                training_info: Optional[dict] = None) -> SmartCLIP:
    """A randomly initialised SmartCLIP from an open_clip-style config dict (``embed_dim``,
    ``vision_cfg``, ``text_cfg``, ``quick_gelu``...) and options (:data:`DEFAULT_OPTIONS`)."""
    clip = CLIP(**copy.deepcopy(model_cfg))
    return SmartCLIP(clip, **model_options(options), model_name=model_name, model_cfg=model_cfg,
                     preprocess_cfg=preprocess_cfg, mask_trained=mask_trained, training_info=training_info)
