"""SDXL (diffusers) driven by precomputed long-prompt embeddings; images with sidecar JSON.

diffusers' ``StableDiffusionXLPipeline`` accepts ``prompt_embeds`` / ``pooled_prompt_embeds``
(and their negatives), so the pipeline runs unchanged with its own text encoders left out.
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence

import torch

from .encoders import (PromptEmbeddings, PromptEncoder, PromptTooLongError, SmartCLIPTokenEncoder,
                       load_open_clip_bigg, load_sdxl_bigg)
from .prompts import Prompt

__all__ = ["GenerationSettings", "LongPromptSDXL", "load_sdxl", "generate_to_folder", "GenerationReport",
           "RUN_FILE", "RUN_FORMAT", "check_pipeline_folder", "progress_bars"]

RUN_FILE = "generation.json"
RUN_FORMAT = "smartclip-generation-v1"
LONG_PROMPT_POLICIES = ("truncate", "refuse")


@dataclass
class GenerationSettings:
    """Sampling settings. ``height`` / ``width`` default to the UNet's own size (1024 for SDXL);
    ``refiner_switch``: the fraction of the schedule run by the base model when a refiner
    finishes it (diffusers' ``denoising_end`` / ``denoising_start``). Image ``k`` of a prompt
    file is drawn with seed ``seed + k``, whatever the batch size."""

    steps: int = 40
    guidance_scale: float = 5.0
    seed: int = 0
    height: Optional[int] = None
    width: Optional[int] = None
    negative_prompt: Optional[str] = None
    refiner_switch: float = 0.8
    long_prompts: str = "truncate"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not 0 < self.refiner_switch < 1:
            raise ValueError(f"refiner_switch must be in (0, 1), got {self.refiner_switch}")
        if self.long_prompts not in LONG_PROMPT_POLICIES:
            raise ValueError(f"long_prompts must be one of {', '.join(LONG_PROMPT_POLICIES)}, "
                             f"got {self.long_prompts!r}")


def check_pipeline_folder(folder, what: str = "SDXL") -> None:
    """A missing folder is reported as missing; an existing one without ``model_index.json`` as
    not a diffusers pipeline. Cheap: the command line runs it before loading anything."""
    if not os.path.exists(folder):
        raise FileNotFoundError(f"{folder}: no such folder (the {what} pipeline folder, in diffusers layout)")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{folder}: not a folder (the {what} pipeline folder, in diffusers layout)")
    if not os.path.isfile(os.path.join(folder, "model_index.json")):
        raise FileNotFoundError(f"{folder}: not a diffusers pipeline folder (no model_index.json)")


@contextlib.contextmanager
def progress_bars(enabled: bool):
    """diffusers', transformers' and huggingface_hub's own loading bars on or off for the block
    (through their logging utilities), restored afterwards."""
    if enabled:
        yield
        return
    switches = []  # (is_enabled, enable, disable) of each library present
    for module in ("diffusers.utils.logging", "transformers.utils.logging"):
        try:
            utils = importlib.import_module(module)
        except ImportError:
            continue
        switches.append((utils.is_progress_bar_enabled, utils.enable_progress_bar, utils.disable_progress_bar))
    try:
        hub = importlib.import_module("huggingface_hub.utils")
        switches.append((lambda: not hub.are_progress_bars_disabled(), hub.enable_progress_bars,
                         hub.disable_progress_bars))
    except ImportError:
        pass
    before = [is_enabled() for is_enabled, _, _ in switches]  # read all first: they switch each other
    for _, _, disable in switches:
        disable()
    try:
        yield
    finally:
        for (_, enable, disable), was in zip(switches, before):
            (enable if was else disable)()


def load_sdxl(sdxl_dir, refiner_dir=None, *, dtype=torch.float32, variant: Optional[str] = None,
              progress: bool = True):
    """``(base, refiner or None)`` from local folders in diffusers layout, without their text
    encoders (the prompt embeddings come from smartclip). ``progress=False`` silences diffusers'
    loading bars."""
    from diffusers import StableDiffusionXLImg2ImgPipeline, StableDiffusionXLPipeline
    no_text = dict(text_encoder=None, tokenizer=None, text_encoder_2=None, tokenizer_2=None)
    check_pipeline_folder(sdxl_dir)
    if refiner_dir:
        check_pipeline_folder(refiner_dir, "refiner")
    common = dict(dtype=dtype, variant=variant, local_files_only=True, add_watermarker=False)
    with progress_bars(progress):
        base = StableDiffusionXLPipeline.from_pretrained(sdxl_dir, **no_text, **common)
        refiner = None
        if refiner_dir:
            refiner = StableDiffusionXLImg2ImgPipeline.from_pretrained(refiner_dir, vae=base.vae, **no_text, **common)
    return base, refiner


class LongPromptSDXL:
    """An SDXL base (and optional refiner) whose text condition comes from ``encoder``.

    The base UNet reads both encoders' token features concatenated; the refiner, which SDXL
    conditions on bigG alone, reads the second encoder's. Both get bigG's pooled vector.
    """

    def __init__(self, base, encoder: PromptEncoder, refiner=None):
        self.base, self.encoder, self.refiner = base, encoder, refiner
        self._check(base, encoder.width, "base", "the SmartCLIP model's and bigG's token widths")
        if refiner is not None:
            self._check(refiner, encoder.second.width, "refiner", "bigG's token width")
        for pipe in (base, refiner):
            if pipe is not None:
                pipe.set_progress_bar_config(disable=True)

    @staticmethod
    def _check(pipe, width: int, name: str, what: str):
        expected = pipe.unet.config.cross_attention_dim
        if expected != width:
            raise ValueError(f"the SDXL {name} UNet reads {expected}-wide token features but {what} add up to "
                             f"{width}; SDXL needs a ViT-L/14 SmartCLIP (768) with bigG (1280)")

    @classmethod
    def from_pretrained(cls, model, sdxl_dir, *, refiner_dir=None, bigg_checkpoint=None, bigg_arch="ViT-bigG-14",
                        layer: str = "final", device="cpu", dtype=torch.float32, variant=None,
                        progress: bool = True):
        """``model``: a SmartCLIP (e.g. from ``smartclip.load``; moved to ``device`` and ``dtype``
        in place); bigG from ``bigg_checkpoint`` (an open_clip file) or else from
        ``sdxl_dir/text_encoder_2``, stretched to 248. ``progress=False``: no loading bars from
        diffusers or transformers."""
        base, refiner = load_sdxl(sdxl_dir, refiner_dir, dtype=dtype, variant=variant, progress=progress)
        if bigg_checkpoint:
            precision = {torch.float16: "fp16", torch.bfloat16: "bf16"}.get(dtype, "fp32")
            second = load_open_clip_bigg(bigg_checkpoint, bigg_arch, device=device, precision=precision)
        else:
            with progress_bars(progress):
                second = load_sdxl_bigg(sdxl_dir, dtype=dtype, variant=variant)
            second.model.to(device)
        first = SmartCLIPTokenEncoder(model.to(device=device, dtype=dtype))
        encoder = PromptEncoder(first, second, layer=layer, device=device, dtype=dtype)
        base.to(device)
        if refiner is not None:
            refiner.to(device)
        return cls(base, encoder, refiner)

    def _negatives(self, pipe, positive: PromptEmbeddings, negative_prompt: Optional[str]) -> PromptEmbeddings:
        # as diffusers' encode_prompt: no negative prompt -> zeros where the pipeline asks for it
        if negative_prompt is None and pipe.config.force_zeros_for_empty_prompt:
            return positive.zeros_like()
        return self.encoder.encode([negative_prompt or ""] * len(positive.token_counts))

    def __call__(self, texts: Sequence[str], seeds: Sequence[int], settings: GenerationSettings):
        """``(PIL images, PromptEmbeddings)`` for ``texts``; image ``i`` is drawn from a generator
        seeded with ``seeds[i]``."""
        embeddings = self.encoder.encode(texts)
        negative = self._negatives(self.base, embeddings, settings.negative_prompt)
        common = dict(num_inference_steps=settings.steps, guidance_scale=settings.guidance_scale,
                      generator=[torch.Generator("cpu").manual_seed(int(s)) for s in seeds])
        base_args = dict(common, prompt_embeds=embeddings.prompt_embeds, pooled_prompt_embeds=embeddings.pooled,
                         negative_prompt_embeds=negative.prompt_embeds,
                         negative_pooled_prompt_embeds=negative.pooled,
                         height=settings.height, width=settings.width)
        if self.refiner is None:
            return self.base(**base_args).images, embeddings
        latents = self.base(**base_args, denoising_end=settings.refiner_switch, output_type="latent").images
        negative = self._negatives(self.refiner, embeddings, settings.negative_prompt)
        images = self.refiner(**common, image=latents, denoising_start=settings.refiner_switch,
                              prompt_embeds=embeddings.second, pooled_prompt_embeds=embeddings.pooled,
                              negative_prompt_embeds=negative.second,
                              negative_pooled_prompt_embeds=negative.pooled).images
        return images, embeddings


@dataclass
class GenerationReport:
    out_dir: str
    written: List[str] = field(default_factory=list)
    skipped: List[str] = field(default_factory=list)  # already in out_dir from the same settings
    truncated: List[str] = field(default_factory=list)


def _write_json(path: Path, data: dict):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def generate_to_folder(sdxl: LongPromptSDXL, prompts: Sequence[Prompt], out_dir, settings: GenerationSettings,
                       *, batch_size: int = 4, progress: bool = True, overwrite: bool = False,
                       description: Optional[dict] = None) -> GenerationReport:
    """Write ``<id>.png`` and ``<id>.json`` (prompt, token count, truncation, seed, settings) per
    prompt, and ``generation.json`` for the run. A rerun into the same folder with the same
    settings continues where it stopped; other settings are refused unless ``overwrite``.
    Prompts over the context are truncated and counted, or, with ``long_prompts="refuse"``,
    refused before any image is made (``PromptTooLongError``)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    too_long = sdxl.encoder.too_long(prompts)
    if too_long and settings.long_prompts == "refuse":
        raise PromptTooLongError(too_long, sdxl.encoder.context_length)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run = {"format": RUN_FORMAT, "settings": asdict(settings), "encoder": sdxl.encoder.describe(),
           "refiner": sdxl.refiner is not None, **(description or {})}
    run_path = out / RUN_FILE
    if run_path.exists() and not overwrite:
        previous = json.loads(run_path.read_text(encoding="utf-8"))
        changed = sorted(k for k in set(run) | set(previous)
                         if k not in ("prompts", "truncated") and run.get(k) != previous.get(k))
        if changed:
            raise ValueError(f"{out} holds images made with other settings ({', '.join(changed)} differ); "
                             f"use another folder, or pass --overwrite (overwrite=True) to replace them")
    report = GenerationReport(str(out))
    todo = []
    for p in prompts:
        if not overwrite and (out / f"{p.id}.png").exists() and (out / f"{p.id}.json").exists():
            report.skipped.append(p.id)
        else:
            todo.append(p)
    bar = tqdm(total=len(todo), unit="image", desc="generating", disable=not progress)
    for start in range(0, len(todo), batch_size):
        batch = todo[start:start + batch_size]
        seeds = [settings.seed + p.index for p in batch]
        images, embeddings = sdxl([p.text for p in batch], seeds, settings)
        for p, image, seed, tokens, cut in zip(batch, images, seeds, embeddings.token_counts, embeddings.truncated):
            image.save(out / f"{p.id}.png")
            _write_json(out / f"{p.id}.json", {
                "id": p.id, "prompt": p.text, "reference": p.reference, "tokens": tokens,
                "context_length": sdxl.encoder.context_length, "truncated": cut, "seed": seed,
                "size": list(image.size), "settings": run["settings"], "encoder": run["encoder"],
                **(description or {})})
            report.written.append(p.id)
        bar.update(len(batch))
    bar.close()
    report.truncated = [ident for ident, _ in too_long]
    run.update(prompts=len(prompts), truncated=len(report.truncated))
    _write_json(run_path, run)
    return report
