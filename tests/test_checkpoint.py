"""Our checkpoint format, the authors' released .pt layout (docs/method.md §8), and open_clip export."""
import json
import argparse

import open_clip
import pytest
import torch

import smartclip
from smartclip.checkpoint import CheckpointError, detect_format

# docs/method.md §8: the mask network's tensors in the released files
RELEASED_MASK_KEYS = {
    "mask_net.resblocks.0.attn.in_proj_weight", "mask_net.resblocks.0.attn.in_proj_bias",
    "mask_net.resblocks.0.attn.out_proj.weight", "mask_net.resblocks.0.attn.out_proj.bias",
    "mask_net.resblocks.0.ln_1.weight", "mask_net.resblocks.0.ln_1.bias",
    "mask_net.resblocks.0.mlp.c_fc.weight", "mask_net.resblocks.0.mlp.c_fc.bias",
    "mask_net.resblocks.0.mlp.c_proj.weight", "mask_net.resblocks.0.mlp.c_proj.bias",
    "mask_net.resblocks.0.ln_2.weight", "mask_net.resblocks.0.ln_2.bias",
    "mask_net.attn_pool.attention.weight", "mask_net.attn_pool.attention.bias",
}


def _inputs(model, images, n=2):
    preprocess = smartclip.image_transform(model)
    batch = torch.stack([preprocess(im) for im in images[:n]])
    texts = ["a photo of an astronaut", "a long caption " + "with many words " * 40]
    return batch, smartclip.get_tokenizer(model)(texts[:n])


def _released_state_dict(model):
    """What the authors' training script saves: a plain fp16 state dict, OpenAI names."""
    return {k: v.detach().clone().half() for k, v in model.state_dict().items()}


def _open_clip_twin(model, state):
    """open_clip's CLIP with the same weights and the merged 248-position embedding."""
    cfg = json.loads(json.dumps(model.model_cfg))
    cfg["text_cfg"]["context_length"] = model.context_length
    clip = open_clip.model.CLIP(**cfg).eval()
    merged = torch.cat([state["positional_embedding"][:20], state["positional_embedding_res"][20:]]).float()
    twin_state = {k: v.float() for k, v in state.items()
                  if not k.startswith("mask_net.") and k != "positional_embedding_res"}
    twin_state["positional_embedding"] = merged
    clip.load_state_dict(twin_state, strict=True)
    return clip


def test_our_format_round_trip(tmp_path, micro_model, images):
    with torch.no_grad():
        micro_model.positional_embedding_res.add_(0.1)  # make the two copies differ
    path = smartclip.save_checkpoint(micro_model, tmp_path / "ckpt")
    assert sorted(p.name for p in path.iterdir()) == ["model.safetensors", "smartclip_config.json"]
    assert detect_format(path) == "smartclip"
    loaded = smartclip.load_checkpoint(path).eval()
    assert smartclip.state_dict_hash(loaded) == smartclip.state_dict_hash(micro_model)
    batch, tokens = _inputs(micro_model, images)
    with torch.no_grad():
        torch.testing.assert_close(loaded.encode_image(batch), micro_model.encode_image(batch))
        torch.testing.assert_close(loaded.encode_text(tokens), micro_model.encode_text(tokens))
        torch.testing.assert_close(loaded.text_mask(tokens), micro_model.text_mask(tokens))
    # a checkpoint path is accepted wherever a model name is
    assert smartclip.create_model(str(path)).context_length == 248
    assert smartclip.get_tokenizer(str(path)).context_length == 248


@pytest.mark.slow
def test_released_vit_b16_checkpoint_loads_and_exports(tmp_path, images):
    torch.manual_seed(0)
    source = smartclip.create_model("ViT-B-16-quickgelu").eval()
    with torch.no_grad():
        source.positional_embedding_res.add_(torch.randn_like(source.positional_embedding_res) * 0.01)
    state = _released_state_dict(source)
    assert RELEASED_MASK_KEYS == {k for k in state if k.startswith("mask_net.")}
    assert state["positional_embedding"].shape == state["positional_embedding_res"].shape == (248, 512)
    path = tmp_path / "smartclip_b16.pt"
    torch.save(state, path)
    assert detect_format(path) == "released"

    model = smartclip.load_checkpoint(path).eval()
    assert model.embed_dim == 512 and model.context_length == 248 and model.mask_trained
    assert model.mask_net.resblocks[0].attn.num_heads == 8
    twin = _open_clip_twin(model, state)
    batch, tokens = _inputs(model, images)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(batch), twin.encode_image(batch), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(model.encode_text(tokens), twin.encode_text(tokens), rtol=1e-5, atol=1e-5)
        for key in RELEASED_MASK_KEYS:
            torch.testing.assert_close(model.state_dict()[key], state[key].float())

    exported = smartclip.export(model, tmp_path / "open_clip_export", format="open_clip")
    reloaded = open_clip.create_model(f"local-dir:{exported}").eval()
    assert reloaded.context_length == 248
    with torch.no_grad():
        torch.testing.assert_close(reloaded.encode_image(batch), model.encode_image(batch), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(reloaded.encode_text(tokens), model.encode_text(tokens), rtol=1e-5, atol=1e-5)


def test_long_clip_checkpoint_without_mask_net(tmp_path, micro_model):
    state = {k: v for k, v in _released_state_dict(micro_model).items() if not k.startswith("mask_net.")}
    del state["positional_embedding_res"]  # some files only carry one copy
    path = tmp_path / "longclip.pt"
    torch.save(state, path)
    model = smartclip.load_checkpoint(path)
    assert not model.mask_trained
    torch.testing.assert_close(model.positional_embedding_res.detach(), state["positional_embedding"].float())


def test_open_clip_checkpoint_is_stretched(tmp_path, images):
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**smartclip.get_model_config("smartclip-micro")).eval()
    path = tmp_path / "open_clip.pt"
    torch.save({"state_dict": {"module." + k: v for k, v in clip.state_dict().items()}}, path)
    assert detect_format(path) == "open_clip"
    model = smartclip.create_model("smartclip-micro", pretrained=str(path)).eval()
    batch, tokens77 = _inputs(model, images)
    short = open_clip.tokenizer.SimpleTokenizer()(["a photo of an astronaut"], context_length=77)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_image(batch), clip.encode_image(batch))
        # positions < 20 are copied, so a short text encodes exactly as in the 77-token model
        torch.testing.assert_close(model.encode_text(smartclip.get_tokenizer(model)(["a photo of an astronaut"])),
                                   clip.encode_text(short), rtol=1e-5, atol=1e-5)


def test_bad_checkpoints_say_what_is_wrong(tmp_path, micro_model):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        smartclip.load_checkpoint(empty)

    good = tmp_path / "good.pt"
    torch.save(_released_state_dict(micro_model), good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        smartclip.load_checkpoint(truncated)

    foreign = tmp_path / "foreign.pt"
    torch.save({"args": argparse.Namespace(lr=1e-3), "weights": torch.zeros(2)}, foreign)  # pickled objects
    with pytest.raises(CheckpointError, match="weights_only"):
        smartclip.load_checkpoint(foreign)

    text = tmp_path / "notes.pt"
    text.write_text("hello")
    with pytest.raises(CheckpointError):
        smartclip.load_checkpoint(text)

    no_clip = tmp_path / "other.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, no_clip)
    with pytest.raises(CheckpointError, match="not a CLIP checkpoint|not an OpenAI-layout"):
        smartclip.load_checkpoint(no_clip)

    wrong = _released_state_dict(micro_model)
    wrong["text_projection"] = torch.zeros(64, 48)
    with pytest.raises(CheckpointError, match=r"'text_projection' has shape \(64, 48\), expected \(64, 32\)"):
        smartclip.create_model("smartclip-micro", pretrained=str(_save(tmp_path / "wrong.pt", wrong)))

    missing = _released_state_dict(micro_model)
    del missing["ln_final.weight"]
    with pytest.raises(CheckpointError, match="missing tensor 'ln_final.weight'"):
        smartclip.create_model("smartclip-micro", pretrained=str(_save(tmp_path / "missing.pt", missing)))

    with pytest.raises(CheckpointError, match="nope.pt does not exist"):
        smartclip.load_checkpoint(tmp_path / "nope.pt")


def _save(path, state):
    torch.save(state, path)
    return path


def test_load_accepts_every_kind_of_source(tmp_path, micro_model):
    """``smartclip.load``: our directory, a released .pt, an exported HF folder, a name."""
    ours = smartclip.save_checkpoint(micro_model, tmp_path / "ours")
    released = _save(tmp_path / "released.pt", _released_state_dict(micro_model))
    hf = smartclip.export(micro_model, tmp_path / "hf", format="hf")
    expected = smartclip.state_dict_hash(micro_model)
    for source in (ours, released, hf):
        model, preprocess, tokenizer = smartclip.load(str(source))
        if source == released:  # stored in fp16
            for key, value in micro_model.state_dict().items():
                torch.testing.assert_close(model.state_dict()[key], value.half().float(), msg=key)
        else:
            assert smartclip.state_dict_hash(model) == expected, source
        assert tokenizer.context_length == 248 and not model.training
    model, _, _ = smartclip.load("smartclip-micro")
    assert model.embed_dim == 32


@pytest.mark.parametrize("kind", ["state_dict", "torchscript"])
def test_ordinary_clip_files_load_stretched(tmp_path, images, kind):
    """An OpenAI-layout CLIP file with 77 positions (a plain state dict, or a TorchScript
    archive like OpenAI's originals) loads by itself and by architecture name, stretched to 248."""
    # heads 64 wide, as in every OpenAI CLIP: the file does not record the head count
    cfg = smartclip.get_model_config("smartclip-micro")
    cfg["vision_cfg"]["head_width"], cfg["text_cfg"]["heads"] = 64, cfg["text_cfg"]["width"] // 64
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**cfg).eval()
    path = tmp_path / f"clip_{kind}.pt"
    if kind == "torchscript":
        torch.jit.script(clip).save(str(path))
    else:
        torch.save(clip.state_dict(), path)
    assert detect_format(path) == "open_clip"
    short = ["a photo of an astronaut", "a cat"]
    expected_text = clip.encode_text(open_clip.tokenizer.SimpleTokenizer()(short, context_length=77))
    by_name = smartclip.build_model(cfg)  # the architecture given, weights from the file
    state, _ = smartclip.checkpoint.read_weights(path)
    smartclip.checkpoint.load_weights_checked(by_name, smartclip.checkpoint.stretch_to_model(state, by_name))
    for model in (smartclip.load_checkpoint(path), by_name):
        model.eval()
        assert model.context_length == 248
        torch.testing.assert_close(model.positional_embedding,
                                   smartclip.stretch_positional_embedding(clip.positional_embedding.detach()))
        batch, _ = _inputs(model, images)
        with torch.no_grad():
            torch.testing.assert_close(model.encode_image(batch), clip.encode_image(batch), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(model.encode_text(smartclip.get_tokenizer(model)(short)), expected_text,
                                       rtol=1e-5, atol=1e-5)
    assert not smartclip.load_checkpoint(path).mask_trained


def test_torchscript_file_by_architecture_name(tmp_path):
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**smartclip.get_model_config("smartclip-micro")).eval()
    path = tmp_path / "clip.pt"
    torch.jit.script(clip).save(str(path))
    model = smartclip.create_model("smartclip-micro", pretrained=str(path)).eval()
    tokens = open_clip.tokenizer.SimpleTokenizer()(["a cat"], context_length=77)
    with torch.no_grad():
        torch.testing.assert_close(model.encode_text(smartclip.get_tokenizer(model)(["a cat"])),
                                   clip.encode_text(tokens), rtol=1e-5, atol=1e-5)
    assert not model.mask_trained


def test_save_checkpoint_refuses_to_overwrite(tmp_path, micro_model):
    path = smartclip.save_checkpoint(micro_model, tmp_path / "ckpt")
    before = (path / "model.safetensors").read_bytes()
    other = smartclip.create_model("smartclip-micro", mask_padding=True)
    with pytest.raises(FileExistsError) as info:
        smartclip.save_checkpoint(other, path)
    assert "already holds a checkpoint" in str(info.value) and "overwrite=True" in str(info.value)
    assert "\n" not in str(info.value)
    assert (path / "model.safetensors").read_bytes() == before  # untouched
    smartclip.save_checkpoint(other, path, overwrite=True)
    assert smartclip.load_checkpoint(path).options["mask_padding"] is True


def test_model_facts_are_fields_recorded_by_checkpoints(tmp_path, micro_model):
    """What a model is (name, config, options, preprocessing, whether its mask was trained) lives
    on the class and survives a save and a load."""
    assert micro_model.model_name == "smartclip-micro" and micro_model.mask_trained is True
    assert micro_model.model_cfg == smartclip.get_model_config("smartclip-micro")
    assert micro_model.training_info is None and micro_model.preprocess_cfg["size"] == micro_model.image_size[0]
    untrained = smartclip.build_model(micro_model.model_cfg, {"keep": 10}, model_name="mine", mask_trained=False)
    back = smartclip.load_checkpoint(smartclip.save_checkpoint(untrained, tmp_path / "mine"))
    assert (back.model_name, back.mask_trained, back.options["keep"]) == ("mine", False, 10)
    assert back.model_cfg == untrained.model_cfg
    assert back.preprocess_cfg == json.loads(json.dumps(untrained.preprocess_cfg))  # tuples come back as lists
