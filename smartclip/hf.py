"""Hugging Face ``transformers`` export (and import) of SmartCLIP / Long-CLIP models.

``export_hf(model, path)`` writes a folder that ``transformers.CLIPModel.from_pretrained``
loads, as do ``CLIPTextModel``, ``CLIPTextModelWithProjection`` (what diffusion
pipelines use as text encoder) and ``CLIPVisionModelWithProjection``:

    config.json, model.safetensors      CLIP with ``max_position_embeddings`` = 248 and the
                                        merged positional table (frozen rows < keep,
                                        trainable rows after)
    vocab.json, merges.txt,             open_clip's BPE vocabulary; ``CLIPTokenizer`` gives
    tokenizer.json, tokenizer_config.json  the ids of ``smartclip.get_tokenizer``: truncation
                                        keeps end-of-text last, padding id 0
    preprocessor_config.json            resize / crop / mean / std of the model
    smartclip_mask_net.safetensors,     the mask network and our config, so ``load_hf`` gets
    smartclip_hf.json                   the whole SmartCLIP back; transformers ignores them

The HF tokenizer pads with ``"!"`` (id 0, as open_clip does) and sets
``split_special_tokens`` so that a literal "!" in a text still gets its ordinary BPE ids.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, Optional

import torch
from safetensors.torch import load_file, save_file

from .model import SmartCLIP

__all__ = ["export_hf", "load_hf", "hf_config", "hf_state_dict", "write_hf_tokenizer", "HFExportError",
           "MASK_NET_NAME", "SMARTCLIP_HF_NAME"]

MASK_NET_NAME = "smartclip_mask_net.safetensors"
SMARTCLIP_HF_NAME = "smartclip_hf.json"
PAD_TOKEN = "!"  # id 0 in CLIP's vocabulary: what open_clip (and so smartclip) pads with
BOS_TOKEN, EOS_TOKEN = "<|startoftext|>", "<|endoftext|>"


class HFExportError(ValueError):
    """The model uses a feature that transformers' CLIP cannot express."""


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError as e:  # pragma: no cover - transformers is in the dev extra
        raise ImportError("Hugging Face export needs transformers: pip install 'smartclip[hf]'") from e


# ------------------------------------------------------------------------------- checks
def _activation_name(block) -> str:
    from open_clip.transformer import QuickGELU
    act = block.mlp.gelu
    if isinstance(act, QuickGELU):
        return "quick_gelu"
    if isinstance(act, torch.nn.GELU) and act.approximate == "none":
        return "gelu"
    raise HFExportError(f"MLP activation {type(act).__name__} has no transformers CLIP equivalent "
                        "(supported: QuickGELU, exact GELU)")


def _check_supported(model: SmartCLIP):
    """Refuse, by name, open_clip features that transformers' CLIP does not have."""
    v = model.visual
    problems = []
    if getattr(v, "attn_pool", None) is not None:
        problems.append("vision attentional pooler")
    if getattr(v, "pool_type", "tok") != "tok":
        problems.append(f"vision pool_type {v.pool_type!r} (only 'tok')")
    if getattr(v, "final_ln_after_pool", False):
        problems.append("vision final_ln_after_pool")
    if isinstance(getattr(v, "ln_pre", None), torch.nn.Identity):
        problems.append("vision without ln_pre")
    if getattr(v, "proj", None) is None:
        problems.append("vision without output projection")
    if not isinstance(model.text_projection, torch.nn.Parameter):
        problems.append("text projection with bias (nn.Linear)")
    if model.text_pool_type not in ("argmax", "eos"):
        problems.append(f"text pool type {model.text_pool_type!r}")
    if not model.causal:
        problems.append("text tower without causal attention")
    from open_clip.transformer import ResidualAttentionBlock
    for name, tower in (("vision", v.transformer), ("text", model.transformer)):
        for i, block in enumerate(tower.resblocks):
            if type(block) is not ResidualAttentionBlock:
                problems.append(f"{name} block {i} is a {type(block).__name__}")
            elif not (isinstance(block.ls_1, torch.nn.Identity) and isinstance(block.ls_2, torch.nn.Identity)):
                problems.append(f"{name} block {i} uses layer scale")
    if model.image_size[0] != model.image_size[1]:
        problems.append(f"non-square image size {model.image_size}")
    if problems:
        raise HFExportError(f"{getattr(model, 'model_name', 'model')} cannot be exported to transformers CLIP: "
                            + "; ".join(problems))


# ------------------------------------------------------------------------------- config
def hf_config(model: SmartCLIP):
    """The ``transformers.CLIPConfig`` of ``model`` (248 text positions, its activation)."""
    _require_transformers()
    from transformers import CLIPConfig

    _check_supported(model)
    v = model.visual
    vblock, tblock = v.transformer.resblocks[0], model.transformer.resblocks[0]
    patch = v.conv1.kernel_size[0]
    text_cfg = {
        "vocab_size": model.token_embedding.num_embeddings,
        "hidden_size": model.text_width,
        "intermediate_size": tblock.mlp.c_fc.out_features,
        "projection_dim": model.embed_dim,
        "num_hidden_layers": len(model.transformer.resblocks),
        "num_attention_heads": tblock.attn.num_heads,
        "max_position_embeddings": model.context_length,
        "hidden_act": _activation_name(tblock),
        "layer_norm_eps": model.ln_final.eps,
        "pad_token_id": 0,
        "bos_token_id": 49406,
        "eos_token_id": int(model.text_eos_id) if model.text_pool_type == "eos" else 49407,
    }
    vision_cfg = {
        "hidden_size": v.conv1.out_channels,
        "intermediate_size": vblock.mlp.c_fc.out_features,
        "projection_dim": model.embed_dim,
        "num_hidden_layers": len(v.transformer.resblocks),
        "num_attention_heads": vblock.attn.num_heads,
        "image_size": model.image_size[0],
        "patch_size": patch,
        "hidden_act": _activation_name(vblock),
        "layer_norm_eps": v.ln_post.eps,
    }
    return CLIPConfig(text_config=text_cfg, vision_config=vision_cfg, projection_dim=model.embed_dim,
                      logit_scale_init_value=float(model.logit_scale.detach()))


# --------------------------------------------------------------------------- state dict
def _blocks(prefix_ours: str, prefix_hf: str, state: Dict[str, torch.Tensor], n: int) -> Dict[str, torch.Tensor]:
    out = {}
    for i in range(n):
        o, h = f"{prefix_ours}.{i}.", f"{prefix_hf}.{i}."
        q, k, vv = state[o + "attn.in_proj_weight"].chunk(3, dim=0)
        qb, kb, vb = state[o + "attn.in_proj_bias"].chunk(3, dim=0)
        out.update({
            h + "self_attn.q_proj.weight": q, h + "self_attn.k_proj.weight": k, h + "self_attn.v_proj.weight": vv,
            h + "self_attn.q_proj.bias": qb, h + "self_attn.k_proj.bias": kb, h + "self_attn.v_proj.bias": vb,
            h + "self_attn.out_proj.weight": state[o + "attn.out_proj.weight"],
            h + "self_attn.out_proj.bias": state[o + "attn.out_proj.bias"],
            h + "layer_norm1.weight": state[o + "ln_1.weight"], h + "layer_norm1.bias": state[o + "ln_1.bias"],
            h + "layer_norm2.weight": state[o + "ln_2.weight"], h + "layer_norm2.bias": state[o + "ln_2.bias"],
            h + "mlp.fc1.weight": state[o + "mlp.c_fc.weight"], h + "mlp.fc1.bias": state[o + "mlp.c_fc.bias"],
            h + "mlp.fc2.weight": state[o + "mlp.c_proj.weight"], h + "mlp.fc2.bias": state[o + "mlp.c_proj.bias"],
        })
    return out


def hf_state_dict(model: SmartCLIP) -> Dict[str, torch.Tensor]:
    """``model``'s CLIP weights under transformers' ``CLIPModel`` names (float32, CPU).
    The mask network is not part of it."""
    _check_supported(model)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    n_text, n_vis = len(model.transformer.resblocks), len(model.visual.transformer.resblocks)
    out = {
        "text_model.embeddings.token_embedding.weight": state["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight":
            model.merged_positional_embedding().detach().to("cpu", torch.float32),
        "text_model.final_layer_norm.weight": state["ln_final.weight"],
        "text_model.final_layer_norm.bias": state["ln_final.bias"],
        "text_projection.weight": state["text_projection"].t(),
        "vision_model.embeddings.class_embedding": state["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": state["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": state["visual.positional_embedding"],
        "vision_model.pre_layrnorm.weight": state["visual.ln_pre.weight"],
        "vision_model.pre_layrnorm.bias": state["visual.ln_pre.bias"],
        "vision_model.post_layernorm.weight": state["visual.ln_post.weight"],
        "vision_model.post_layernorm.bias": state["visual.ln_post.bias"],
        "visual_projection.weight": state["visual.proj"].t(),
        "logit_scale": state["logit_scale"],
    }
    out.update(_blocks("transformer.resblocks", "text_model.encoder.layers", state, n_text))
    out.update(_blocks("visual.transformer.resblocks", "vision_model.encoder.layers", state, n_vis))
    return {k: v.contiguous() for k, v in out.items()}


def _our_state_dict(hf: Dict[str, torch.Tensor], n_text: int, n_vis: int) -> Dict[str, torch.Tensor]:
    """Inverse of ``hf_state_dict`` (both positional copies get the merged table)."""
    def blocks(prefix_ours, prefix_hf, n):
        out = {}
        for i in range(n):
            o, h = f"{prefix_ours}.{i}.", f"{prefix_hf}.{i}."
            a = h + "self_attn."
            out[o + "attn.in_proj_weight"] = torch.cat([hf[a + f"{p}_proj.weight"] for p in "qkv"], 0)
            out[o + "attn.in_proj_bias"] = torch.cat([hf[a + f"{p}_proj.bias"] for p in "qkv"], 0)
            for ours, theirs in (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"),
                                 ("ln_2", "layer_norm2"), ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2")):
                out[o + ours + ".weight"] = hf[h + theirs + ".weight"]
                out[o + ours + ".bias"] = hf[h + theirs + ".bias"]
        return out

    pos = hf["text_model.embeddings.position_embedding.weight"]
    out = {
        "token_embedding.weight": hf["text_model.embeddings.token_embedding.weight"],
        "positional_embedding": pos.clone(), "positional_embedding_res": pos.clone(),
        "ln_final.weight": hf["text_model.final_layer_norm.weight"],
        "ln_final.bias": hf["text_model.final_layer_norm.bias"],
        "text_projection": hf["text_projection.weight"].t().contiguous(),
        "visual.class_embedding": hf["vision_model.embeddings.class_embedding"],
        "visual.conv1.weight": hf["vision_model.embeddings.patch_embedding.weight"],
        "visual.positional_embedding": hf["vision_model.embeddings.position_embedding.weight"],
        "visual.ln_pre.weight": hf["vision_model.pre_layrnorm.weight"],
        "visual.ln_pre.bias": hf["vision_model.pre_layrnorm.bias"],
        "visual.ln_post.weight": hf["vision_model.post_layernorm.weight"],
        "visual.ln_post.bias": hf["vision_model.post_layernorm.bias"],
        "visual.proj": hf["visual_projection.weight"].t().contiguous(),
        "logit_scale": hf["logit_scale"],
    }
    out.update(blocks("transformer.resblocks", "text_model.encoder.layers", n_text))
    out.update(blocks("visual.transformer.resblocks", "vision_model.encoder.layers", n_vis))
    return out


# ---------------------------------------------------------------------------- tokenizer
def _open_clip_vocabulary():
    """(vocab dict token -> id, merges list of pairs) exactly as open_clip's SimpleTokenizer
    builds them from ``bpe_simple_vocab_16e6.txt.gz``, with OpenAI's special-token names."""
    from open_clip.tokenizer import SimpleTokenizer

    bpe = SimpleTokenizer()
    vocab = dict(bpe.encoder)
    renames = {"<start_of_text>": BOS_TOKEN, "<end_of_text>": EOS_TOKEN}
    vocab = {renames.get(tok, tok): i for tok, i in vocab.items()}
    if vocab.get(BOS_TOKEN) != bpe.sot_token_id or vocab.get(EOS_TOKEN) != bpe.eot_token_id:
        raise HFExportError("open_clip's vocabulary has unexpected special tokens; cannot build the HF tokenizer")
    merges = [pair for pair, _ in sorted(bpe.bpe_ranks.items(), key=lambda kv: kv[1])]
    return vocab, merges


def write_hf_tokenizer(path, context_length: int = 248):
    """Write vocab.json, merges.txt, tokenizer.json and tokenizer_config.json to ``path``; returns
    the ``CLIPTokenizer``. Ids equal ``smartclip.get_tokenizer`` with ``padding="max_length",
    truncation=True`` (the config's default max length is ``context_length``)."""
    _require_transformers()
    from transformers import CLIPTokenizer

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    vocab, merges = _open_clip_vocabulary()
    (path / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    (path / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n",
                                     encoding="utf-8")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, bos_token=BOS_TOKEN, eos_token=EOS_TOKEN,
                              unk_token=EOS_TOKEN, pad_token=PAD_TOKEN, model_max_length=context_length,
                              split_special_tokens=True)
    tokenizer.save_pretrained(str(path))
    return tokenizer


def _image_processor(model: SmartCLIP):
    from transformers import CLIPImageProcessor

    pre = model.preprocess_cfg or {}
    size = model.image_size[0]
    resample = {"bicubic": 3, "bilinear": 2, "nearest": 0}.get(pre.get("interpolation", "bicubic"), 3)
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                              image_mean=list(pre.get("mean", (0.48145466, 0.4578275, 0.40821073))),
                              image_std=list(pre.get("std", (0.26862954, 0.26130258, 0.27577711))),
                              resample=resample, do_center_crop=True, do_resize=True)


# ------------------------------------------------------------------------------- export
def export_hf(model: SmartCLIP, path) -> Path:
    """Write ``model`` as a transformers CLIP folder at ``path`` (created) and return it."""
    _require_transformers()
    from transformers import CLIPModel

    path = Path(path)
    config = hf_config(model)
    hf_model = CLIPModel(config)
    missing, unexpected = hf_model.load_state_dict(hf_state_dict(model), strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise HFExportError(f"weight mapping does not fit transformers' CLIPModel: missing {missing}, "
                            f"unexpected {unexpected}")
    path.mkdir(parents=True, exist_ok=True)
    hf_model.save_pretrained(str(path), safe_serialization=True)
    write_hf_tokenizer(path, model.context_length)
    _image_processor(model).save_pretrained(str(path))
    mask_state = {k[len("mask_net."):]: v.detach().to("cpu", torch.float32).contiguous()
                  for k, v in model.state_dict().items() if k.startswith("mask_net.")}
    save_file(mask_state, str(path / MASK_NET_NAME), metadata={"format": "smartclip-mask-net"})
    from .checkpoint import set_default_file_mode  # that module imports this one
    for weights in path.glob("*.safetensors"):
        set_default_file_mode(weights)
    (path / SMARTCLIP_HF_NAME).write_text(json.dumps({
        "format": "smartclip-hf",
        "model_name": getattr(model, "model_name", "custom"),
        "model_cfg": model.model_cfg,
        "options": model.options,
        "preprocess_cfg": model.preprocess_cfg,
        "mask_trained": bool(getattr(model, "mask_trained", True)),
        "mask_net_file": MASK_NET_NAME,
    }, indent=2))
    return path


def load_hf(path, device="cpu") -> SmartCLIP:
    """A SmartCLIP model back from a folder written by ``export_hf`` (the CLIP weights from
    ``model.safetensors``, the mask network from ``smartclip_mask_net.safetensors``)."""
    from .factory import build_model

    path = Path(path)
    info_file = path / SMARTCLIP_HF_NAME
    if not info_file.is_file():
        raise FileNotFoundError(f"{path}: no {SMARTCLIP_HF_NAME}; not a folder written by smartclip export --format hf")
    info = json.loads(info_file.read_text())
    model = build_model(info["model_cfg"], info["options"], model_name=info.get("model_name", "custom"),
                        preprocess_cfg=info.get("preprocess_cfg"))
    hf = load_file(str(path / "model.safetensors"))
    state = _our_state_dict(hf, len(model.transformer.resblocks), len(model.visual.transformer.resblocks))
    mask_file: Optional[Path] = path / info.get("mask_net_file", MASK_NET_NAME)
    if mask_file.is_file():
        state.update({"mask_net." + k: v for k, v in load_file(str(mask_file)).items()})
    model.load_state_dict(state, strict=mask_file.is_file())
    model.mask_trained = bool(info.get("mask_trained", True)) and mask_file.is_file()
    return model.to(device).eval()
