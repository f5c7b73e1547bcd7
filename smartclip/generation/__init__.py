"""Long-prompt image generation: SmartCLIP (248 tokens) as the text encoder of SDXL, and the
generation metrics (KID, precision / recall / F1, DINO-L). Needs the ``generation`` extra.

    import smartclip
    from smartclip.generation import GenerationSettings, LongPromptSDXL, generate_to_folder, read_prompts
    model, _, _ = smartclip.load("SmartCLIP-L14.pt")
    sdxl = LongPromptSDXL.from_pretrained(model, "sdxl-base-1.0", device="cuda", dtype=torch.float16)
    generate_to_folder(sdxl, read_prompts("prompts.txt"), "runs/gen", GenerationSettings(steps=40))
"""
from .prompts import Prompt, PromptFileError, read_prompts
from .encoders import (LAYERS, HFTokenEncoder, PromptEmbeddings, PromptEncoder, PromptTooLongError,
                       SmartCLIPTokenEncoder, load_open_clip_bigg, load_sdxl_bigg, stretch_hf_text_model)
from .pipeline import GenerationReport, GenerationSettings, LongPromptSDXL, generate_to_folder, load_sdxl
from .metrics import DINOv2Features, FidelityFeatures, kid, paired_cosine, precision_recall
from .evaluate import (PAPER_TABLE5, IncompletePairsError, evaluate_generation, generation_markdown, pair_images,
                       write_generation_results)

__all__ = [
    "Prompt", "PromptFileError", "read_prompts",
    "LAYERS", "HFTokenEncoder", "PromptEmbeddings", "PromptEncoder", "PromptTooLongError", "SmartCLIPTokenEncoder",
    "load_open_clip_bigg", "load_sdxl_bigg", "stretch_hf_text_model",
    "GenerationReport", "GenerationSettings", "LongPromptSDXL", "generate_to_folder", "load_sdxl",
    "DINOv2Features", "FidelityFeatures", "kid", "paired_cosine", "precision_recall",
    "PAPER_TABLE5", "IncompletePairsError", "evaluate_generation", "generation_markdown", "pair_images",
    "write_generation_results",
]
