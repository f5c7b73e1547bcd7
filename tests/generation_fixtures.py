"""Tiny SDXL pipelines, feature extractors and prompt files built from configs, without downloads.

The SDXL folders are complete diffusers layouts (UNet, VAE, scheduler, two CLIP text encoders,
tokenizers made from open_clip's own BPE vocabulary file), so the code under test loads them
exactly as it loads the real stabilityai/stable-diffusion-xl-base-1.0 folder.
"""
import json
from pathlib import Path

import torch

TINY_BIGG_WIDTH = 32  # the second text encoder's width and projection size
_TEXT = dict(hidden_size=TINY_BIGG_WIDTH, intermediate_size=37, num_attention_heads=4, num_hidden_layers=3,
             vocab_size=49408, max_position_embeddings=77, projection_dim=TINY_BIGG_WIDTH, hidden_act="gelu",
             layer_norm_eps=1e-5, bos_token_id=49406, eos_token_id=2, pad_token_id=0)  # eos 2: SDXL's legacy value


def clip_tokenizers(folder: Path):
    """SDXL's two CLIPTokenizers (padding with end-of-text, and with "!") from open_clip's BPE
    file, written as vocab.json + merges.txt under ``folder`` and loaded from there."""
    import copy
    from open_clip.tokenizer import SimpleTokenizer
    from transformers import CLIPTokenizer
    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    vocab["<|startoftext|>"] = vocab.pop("<start_of_text>")
    vocab["<|endoftext|>"] = vocab.pop("<end_of_text>")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab))
    merges = sorted(bpe.bpe_ranks, key=bpe.bpe_ranks.get)
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    tokenizer_2 = copy.deepcopy(tokenizer)
    tokenizer_2.pad_token = "!"
    return tokenizer, tokenizer_2


def _unet(cross_attention_dim: int, time_ids: int):
    from diffusers import UNet2DConditionModel
    torch.manual_seed(0)
    return UNet2DConditionModel(
        block_out_channels=(4, 8), layers_per_block=1, sample_size=16, in_channels=4, out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, addition_embed_type="text_time",
        addition_time_embed_dim=8, transformer_layers_per_block=(1, 1),
        projection_class_embeddings_input_dim=time_ids * 8 + TINY_BIGG_WIDTH,
        cross_attention_dim=cross_attention_dim, norm_num_groups=1)


def _vae_and_scheduler():
    from diffusers import AutoencoderKL, EulerDiscreteScheduler
    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
                        latent_channels=4, sample_size=32)
    scheduler = EulerDiscreteScheduler(beta_start=0.00085, beta_end=0.012, steps_offset=1,
                                       beta_schedule="scaled_linear", timestep_spacing="leading")
    return vae, scheduler


def write_tiny_sdxl(folder: Path, first_width: int, tokenizers) -> Path:
    """A tiny SDXL base whose UNet reads ``first_width`` + 32 wide token features (32 x 32 images);
    ``tokenizers`` from ``clip_tokenizers``."""
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection
    vae, scheduler = _vae_and_scheduler()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(CLIPTextConfig(**{**_TEXT, "hidden_size": first_width}))
    torch.manual_seed(1)
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**_TEXT))
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2,
        tokenizer=tokenizers[0], tokenizer_2=tokenizers[1],
        unet=_unet(first_width + TINY_BIGG_WIDTH, 6), scheduler=scheduler, add_watermarker=False)
    pipe.save_pretrained(str(folder))
    return folder


def write_tiny_refiner(folder: Path, tokenizers) -> Path:
    """A tiny SDXL refiner (bigG only, aesthetic-score conditioning), as the real refiner is laid out."""
    from diffusers import StableDiffusionXLImg2ImgPipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection
    vae, scheduler = _vae_and_scheduler()
    torch.manual_seed(1)
    pipe = StableDiffusionXLImg2ImgPipeline(
        vae=vae, text_encoder=None, tokenizer=None,
        text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**_TEXT)),
        tokenizer_2=tokenizers[1], unet=_unet(TINY_BIGG_WIDTH, 5), scheduler=scheduler, requires_aesthetics_score=True,
        force_zeros_for_empty_prompt=False, add_watermarker=False)
    pipe.save_pretrained(str(folder))
    return folder


def write_tiny_dinov2(folder: Path) -> Path:
    """A randomly initialised DINOv2 (2 layers, 32 wide) with a 56 px image processor."""
    from transformers import BitImageProcessor, Dinov2Config, Dinov2Model
    torch.manual_seed(0)
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                             patch_size=14, image_size=56)).save_pretrained(str(folder))
    BitImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}, do_center_crop=True,
                      image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225]).save_pretrained(str(folder))
    return folder


def write_random_inception(path: Path) -> Path:
    """A weights file for torch-fidelity's Inception-v3 with random values (its layout, no download)."""
    from unittest import mock
    from torch_fidelity import feature_extractor_inceptionv3 as fe
    torch.manual_seed(0)
    with mock.patch.object(fe, "load_state_dict_from_url", lambda *a, **k: {}), \
            mock.patch.object(fe.FeatureExtractorInceptionV3, "load_state_dict", lambda self, state: None):
        model = fe.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"])
    torch.save(model.state_dict(), path)
    return path
