"""SDXL prompt embeddings from a 248-token SmartCLIP and a 248-stretched OpenCLIP bigG.

SDXL's UNet reads the per-token features of two text encoders concatenated on the feature
axis ([B, L, 768 + 1280]) and, as an extra condition, bigG's projected end-of-text vector.
Here the first encoder is a SmartCLIP model (248 positions) and the second is bigG with its
77 positions stretched to 248 by the same knowledge-preserving stretch (no fine-tuning), as
Long-CLIP's SDXL integration does. Both read the same tokens: bigG uses CLIP's BPE with pad 0
and the end-of-text token as its highest id, exactly as smartclip's tokenizer writes them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import List, Optional, Sequence

import torch
from torch import nn

from ..model import SmartCLIP, stretch_positional_embedding
from ..tokenizer import Tokenizer

__all__ = ["LAYERS", "SmartCLIPTokenEncoder", "HFTokenEncoder", "stretch_hf_text_model", "load_sdxl_bigg",
           "load_open_clip_bigg", "PromptEmbeddings", "PromptEncoder", "PromptTooLongError"]

LAYERS = ("final", "penultimate")


def _check_layer(layer: str):
    if layer not in LAYERS:
        raise ValueError(f"layer must be one of {', '.join(LAYERS)}, got {layer!r}")


class SmartCLIPTokenEncoder:
    """Per-token features and pooled vector of a SmartCLIP model (ours, or an open_clip CLIP
    such as bigG loaded through ``smartclip.create_model``, which stretches its positions)."""

    def __init__(self, model: SmartCLIP):
        self.model = model.eval()
        self.width = model.text_width
        self.pooled_dim = model.embed_dim
        self.context_length = model.context_length

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, layer: str = "final"):
        _check_layer(layer)
        pooled, sequence = self.model.text_token_features(tokens, None if layer == "final" else -2)
        return sequence, pooled


class HFTokenEncoder:
    """The same for a ``transformers`` ``CLIPTextModelWithProjection`` (SDXL's ``text_encoder_2``)."""

    def __init__(self, model):
        self.model = model.eval()
        self.width = model.config.hidden_size
        self.pooled_dim = model.config.projection_dim
        self.context_length = model.text_model.embeddings.position_embedding.weight.shape[0]

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, layer: str = "final"):
        _check_layer(layer)
        out = self.model(input_ids=tokens, output_hidden_states=layer == "penultimate")
        sequence = out.last_hidden_state if layer == "final" else out.hidden_states[-2]
        return sequence, out.text_embeds


def stretch_hf_text_model(model, keep: int = 20, ratio: int = 4):
    """Stretch the position table of a ``transformers`` CLIP text model in place (77 -> 248)."""
    embeddings = model.text_model.embeddings
    old = embeddings.position_embedding.weight.detach()
    stretched = stretch_positional_embedding(old.float(), keep, ratio).to(old.dtype)
    table = nn.Embedding(stretched.shape[0], stretched.shape[1], device=old.device, dtype=old.dtype)
    table.weight.data.copy_(stretched)
    embeddings.position_embedding = table
    embeddings.position_ids = torch.arange(stretched.shape[0], device=old.device).expand((1, -1))
    model.config.max_position_embeddings = stretched.shape[0]
    return model


def load_sdxl_bigg(sdxl_dir, *, dtype=torch.float32, variant: Optional[str] = None, keep: int = 20,
                   ratio: int = 4) -> HFTokenEncoder:
    """bigG from an SDXL folder in diffusers layout (``text_encoder_2/``), stretched to 248."""
    from transformers import CLIPTextModelWithProjection
    folder = os.path.join(sdxl_dir, "text_encoder_2")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{sdxl_dir}: no text_encoder_2/ folder (is it an SDXL base folder in "
                                f"diffusers layout?)")
    model = CLIPTextModelWithProjection.from_pretrained(folder, dtype=dtype, variant=variant,
                                                        local_files_only=True)
    return HFTokenEncoder(stretch_hf_text_model(model, keep, ratio))


def load_open_clip_bigg(checkpoint, arch: str = "ViT-bigG-14", *, device="cpu", precision: str = "fp32"
                        ) -> SmartCLIPTokenEncoder:
    """bigG from a local open_clip checkpoint (``open_clip_pytorch_model.bin`` of
    laion/CLIP-ViT-bigG-14-laion2B-39B-b160k), stretched to 248 as smartclip loads any CLIP."""
    from ..factory import create_model
    if not os.path.isfile(checkpoint):
        raise FileNotFoundError(f"{checkpoint}: no such open_clip checkpoint")
    model = create_model(arch, pretrained=checkpoint, precision=precision)
    model.visual = nn.Identity()  # text only: frees the image tower (1.8B parameters for bigG)
    return SmartCLIPTokenEncoder(model.to(device))


class PromptTooLongError(ValueError):
    """Prompts over the context length, refused at the user's request."""

    def __init__(self, too_long: Sequence, context_length: int):
        self.too_long = list(too_long)
        shown = ", ".join(f"{p} ({n} tokens)" for p, n in self.too_long[:5])
        more = f" and {len(self.too_long) - 5} more" if len(self.too_long) > 5 else ""
        super().__init__(f"{len(self.too_long)} prompt(s) longer than {context_length} tokens: {shown}{more}; "
                         f"shorten them or let them be truncated")


@dataclass
class PromptEmbeddings:
    """What SDXL receives for a batch of prompts. ``first`` / ``second``: per-token features of
    each encoder [B, L, width]; ``pooled``: bigG's projected end-of-text vector [B, P];
    ``token_counts``: tokens before truncation (start and end included)."""

    first: torch.Tensor
    second: torch.Tensor
    pooled: torch.Tensor
    token_counts: List[int]
    truncated: List[bool]

    @property
    def prompt_embeds(self) -> torch.Tensor:
        """The base UNet's text condition [B, L, width_1 + width_2]."""
        return torch.cat([self.first, self.second], dim=-1)

    def zeros_like(self) -> "PromptEmbeddings":
        return PromptEmbeddings(torch.zeros_like(self.first), torch.zeros_like(self.second),
                                torch.zeros_like(self.pooled), [0] * len(self.token_counts),
                                [False] * len(self.truncated))


class PromptEncoder:
    """Tokenise once at the shared context (248), encode with both encoders.

    ``layer``: ``final`` (final-LayerNorm output of every token, as Long-CLIP) or
    ``penultimate`` (raw output of the second-to-last block, as diffusers' SDXL).
    """

    def __init__(self, first, second, tokenizer: Optional[Tokenizer] = None, layer: str = "final",
                 device="cpu", dtype: torch.dtype = torch.float32):
        _check_layer(layer)
        tokenizer = tokenizer or Tokenizer(first.context_length)
        contexts = {"tokenizer": tokenizer.context_length, "first encoder": first.context_length,
                    "second encoder": second.context_length}
        if len(set(contexts.values())) > 1:
            raise ValueError("the tokenizer and both encoders need one context length, got "
                             + ", ".join(f"{k} {v}" for k, v in contexts.items()))
        self.first, self.second, self.tokenizer, self.layer = first, second, tokenizer, layer
        self.device, self.dtype = torch.device(device), dtype
        self.context_length = tokenizer.context_length

    @property
    def width(self) -> int:
        return self.first.width + self.second.width

    def token_count(self, text: str) -> int:
        return len(self.tokenizer.encode(text)) + 2

    def too_long(self, prompts) -> List[tuple]:
        """``(id, tokens)`` of every prompt longer than the context (``Prompt`` objects or strings)."""
        out = []
        for i, p in enumerate(prompts):
            text, ident = (p, str(i)) if isinstance(p, str) else (p.text, p.id)
            n = self.token_count(text)
            if n > self.context_length:
                out.append((ident, n))
        return out

    def encode(self, texts: Sequence[str]) -> PromptEmbeddings:
        tokens, truncated = self.tokenizer.tokenize(list(texts))
        tokens = tokens.to(self.device)
        first, _ = self.first(tokens, self.layer)
        second, pooled = self.second(tokens, self.layer)
        cast = lambda t: t.to(device=self.device, dtype=self.dtype)  # noqa: E731
        return PromptEmbeddings(cast(first), cast(second), cast(pooled), [self.token_count(t) for t in texts],
                                truncated.tolist())

    def describe(self) -> dict:
        return {"layer": self.layer, "context_length": self.context_length,
                "first_width": self.first.width, "second_width": self.second.width,
                "pooled_dim": self.second.pooled_dim}
