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

from .fileio import atomic_write_json, set_default_file_mode
from .model import SmartCLIP, build_model

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
        raise HFExportError(f"{model.model_name} cannot be exported to transformers CLIP: "
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
# The one key map, ours -> transformers' CLIPModel; transposed entries are Linear weights that
# open_clip keeps as [in, out] matrices. The attention's in-projection (split into q, k, v) and
# the text positions (our two copies merged) are the only entries that are not renames.
_TOP_KEYS = (  # (ours, theirs, transposed)
    ("token_embedding.weight", "text_model.embeddings.token_embedding.weight", False),
    ("ln_final.weight", "text_model.final_layer_norm.weight", False),
    ("ln_final.bias", "text_model.final_layer_norm.bias", False),
    ("text_projection", "text_projection.weight", True),
    ("visual.class_embedding", "vision_model.embeddings.class_embedding", False),
    ("visual.conv1.weight", "vision_model.embeddings.patch_embedding.weight", False),
    ("visual.positional_embedding", "vision_model.embeddings.position_embedding.weight", False),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight", False),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias", False),
    ("visual.ln_post.weight", "vision_model.post_layernorm.weight", False),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias", False),
    ("visual.proj", "visual_projection.weight", True),
    ("logit_scale", "logit_scale", False),
)
_BLOCK_KEYS = (("attn.out_proj", "self_attn.out_proj"), ("ln_1", "layer_norm1"), ("ln_2", "layer_norm2"),
               ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"))
_TOWERS = (("transformer.resblocks", "text_model.encoder.layers"),
           ("visual.transformer.resblocks", "vision_model.encoder.layers"))
_TEXT_POSITIONS = "text_model.embeddings.position_embedding.weight"


def _key_map(n_text: int, n_vis: int):
    """``(ours, theirs, transposed)`` for every tensor that is a plain rename, and
    ``(ours in_proj prefix, theirs q/k/v prefix)`` for every attention block."""
    renames, attention = list(_TOP_KEYS), []
    for (ours, theirs), n in zip(_TOWERS, (n_text, n_vis)):
        for i in range(n):
            o, h = f"{ours}.{i}.", f"{theirs}.{i}."
            renames += [(o + a + p, h + b + p, False) for a, b in _BLOCK_KEYS for p in (".weight", ".bias")]
            attention.append((o + "attn.in_proj_", h + "self_attn."))
    return renames, attention


def _tower_depths(model: SmartCLIP):
    return len(model.transformer.resblocks), len(model.visual.transformer.resblocks)


def hf_state_dict(model: SmartCLIP) -> Dict[str, torch.Tensor]:
    """``model``'s CLIP weights under transformers' ``CLIPModel`` names (float32, CPU).
    The mask network is not part of it."""
    _check_supported(model)
    state = {k: v.detach().to("cpu", torch.float32) for k, v in model.state_dict().items()}
    renames, attention = _key_map(*_tower_depths(model))
    out = {theirs: (state[ours].t() if transposed else state[ours]) for ours, theirs, transposed in renames}
    for ours, theirs in attention:
        for kind in ("weight", "bias"):
            for p, part in zip("qkv", state[ours + kind].chunk(3, dim=0)):
                out[f"{theirs}{p}_proj.{kind}"] = part
    out[_TEXT_POSITIONS] = model.merged_positional_embedding().detach().to("cpu", torch.float32)
    return {k: v.contiguous() for k, v in out.items()}


def _our_state_dict(hf: Dict[str, torch.Tensor], n_text: int, n_vis: int) -> Dict[str, torch.Tensor]:
    """Inverse of ``hf_state_dict`` (both positional copies get the merged table)."""
    renames, attention = _key_map(n_text, n_vis)
    out = {ours: (hf[theirs].t().contiguous() if transposed else hf[theirs]) for ours, theirs, transposed in renames}
    for ours, theirs in attention:
        for kind in ("weight", "bias"):
            out[ours + kind] = torch.cat([hf[f"{theirs}{p}_proj.{kind}"] for p in "qkv"], 0)
    pos = hf[_TEXT_POSITIONS]
    out["positional_embedding"], out["positional_embedding_res"] = pos.clone(), pos.clone()
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
    for weights in path.glob("*.safetensors"):
        set_default_file_mode(weights)
    atomic_write_json(path / SMARTCLIP_HF_NAME, {
        "format": "smartclip-hf",
        "model_name": model.model_name,
        "model_cfg": model.model_cfg,
        "options": model.options,
        "preprocess_cfg": model.preprocess_cfg,
        "mask_trained": model.mask_trained,
        "mask_net_file": MASK_NET_NAME,
    })
    return path


def load_hf(path, device="cpu", **options) -> SmartCLIP:
    """A SmartCLIP model back from a folder written by ``export_hf`` (the CLIP weights from
    ``model.safetensors``, the mask network from ``smartclip_mask_net.safetensors``).
    ``options`` override the recorded model options (``mask_padding``...)."""
    path = Path(path)
    info_file = path / SMARTCLIP_HF_NAME
    if not info_file.is_file():
        raise FileNotFoundError(f"{path}: no {SMARTCLIP_HF_NAME}; not a folder written by smartclip export --format hf")
    info = json.loads(info_file.read_text())
    mask_file: Optional[Path] = path / info.get("mask_net_file", MASK_NET_NAME)
    model = build_model(info["model_cfg"], {**info["options"], **options}, model_name=info.get("model_name", "custom"),
                        preprocess_cfg=info.get("preprocess_cfg"),
                        mask_trained=bool(info.get("mask_trained", True)) and mask_file.is_file())
    hf = load_file(str(path / "model.safetensors"))
    state = _our_state_dict(hf, *_tower_depths(model))
    if mask_file.is_file():
        state.update({"mask_net." + k: v for k, v in load_file(str(mask_file)).items()})
    model.load_state_dict(state, strict=mask_file.is_file())
    return model.to(device).eval()
