"""Hugging Face export: transformers loads the folder and gives our embeddings and token ids."""
import copy
import json

import pytest
import torch

import smartclip
from smartclip.hf import HFExportError, export_hf, load_hf

transformers = pytest.importorskip("transformers")

LONG = ("The photograph shows a crowded market street at dusk. " * 12).strip()  # ~120 tokens, > 77
TOO_LONG = "a red brick wall with ivy, " * 60  # > 248 tokens: truncated, end-of-text kept last
TEXTS = ["a photo of a cat!", "Wow!!! It's 3 o'clock; the dog's ball (blue) is gone...", LONG, TOO_LONG,
         "café au lait"]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-tiny").eval()  # 3 layers per tower: the layer mapping counts
    with torch.no_grad():  # make the two positional copies differ, as after training
        model.positional_embedding_res.add_(0.05 * torch.randn_like(model.positional_embedding_res))
    path = tmp_path_factory.mktemp("hf") / "tiny"
    assert smartclip.export(model, path, format="hf") == path
    return model, path


def _pixels(images, model):
    preprocess = smartclip.image_transform(model)
    return torch.stack([preprocess(im) for im in images])


def test_folder_contents(exported):
    _, path = exported
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
            "tokenizer_config.json", "preprocessor_config.json"} <= names
    config = json.loads((path / "config.json").read_text())
    assert config["text_config"]["max_position_embeddings"] == 248
    assert config["text_config"]["hidden_act"] == "quick_gelu"
    vocab = json.loads((path / "vocab.json").read_text())
    assert len(vocab) == 49408 and vocab["<|endoftext|>"] == 49407 and vocab["!"] == 0


def test_clip_model_embeddings_equal(exported, images):
    model, path = exported
    hf = transformers.CLIPModel.from_pretrained(str(path)).eval()
    tokens = smartclip.get_tokenizer(model)(TEXTS)
    pixels = _pixels(images, model)
    with torch.no_grad():
        ours_t, ours_i = model.encode_text(tokens), model.encode_image(pixels)
        hf_t = hf.get_text_features(input_ids=tokens).pooler_output
        hf_i = hf.get_image_features(pixel_values=pixels).pooler_output
        out = hf(input_ids=tokens, pixel_values=pixels)
    torch.testing.assert_close(hf_t, ours_t, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hf_i, ours_i, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.logits_per_image, model.logit_scale.exp() *
                               torch.nn.functional.normalize(ours_i, dim=-1) @
                               torch.nn.functional.normalize(ours_t, dim=-1).T, atol=1e-4, rtol=1e-5)


def test_text_and_vision_towers_for_pipelines(exported, images):
    model, path = exported
    tokens = smartclip.get_tokenizer(model)(TEXTS)
    pixels = _pixels(images[:2], model)
    with torch.no_grad():
        ours_t, sequence = model._text_tower(tokens, trim=False)
        with_proj = transformers.CLIPTextModelWithProjection.from_pretrained(str(path)).eval()
        torch.testing.assert_close(with_proj(input_ids=tokens).text_embeds, ours_t, atol=1e-5, rtol=1e-5)
        # diffusion pipelines read the last hidden state of every position
        plain = transformers.CLIPTextModel.from_pretrained(str(path)).eval()
        torch.testing.assert_close(plain(input_ids=tokens).last_hidden_state, sequence, atol=1e-5, rtol=1e-5)
        vision = transformers.CLIPVisionModelWithProjection.from_pretrained(str(path)).eval()
        torch.testing.assert_close(vision(pixel_values=pixels).image_embeds, model.encode_image(pixels),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("cls", ["CLIPTokenizer", "CLIPTokenizerFast", "AutoTokenizer"])
def test_tokenizer_ids_equal(exported, cls):
    model, path = exported
    ours = smartclip.get_tokenizer(model)
    tokens, truncated = ours.tokenize(TEXTS)
    assert truncated.tolist() == [False, False, False, True, False]
    hf_tok = getattr(transformers, cls).from_pretrained(str(path))
    ids = hf_tok(TEXTS, padding="max_length", truncation=True, return_tensors="pt")["input_ids"]
    assert ids.shape == (len(TEXTS), 248)
    assert torch.equal(ids, tokens)
    assert hf_tok.pad_token_id == 0 and (ids[0, 10:] == 0).all()
    assert ids[3, -1] == 49407  # truncation keeps end-of-text last


def test_load_hf_round_trip_keeps_mask_network(exported):
    model, path = exported
    back = load_hf(path)
    tokens = smartclip.get_tokenizer(model)(TEXTS)
    with torch.no_grad():
        torch.testing.assert_close(back.encode_text(tokens), model.encode_text(tokens), atol=1e-6, rtol=0)
        torch.testing.assert_close(back.text_mask(tokens, soft=True), model.text_mask(tokens, soft=True),
                                   atol=1e-6, rtol=0)


def test_gelu_model_exports_gelu(tmp_path):
    cfg = smartclip.get_model_config("smartclip-micro")
    cfg["quick_gelu"] = False
    torch.manual_seed(1)
    model = smartclip.build_model(cfg).eval()
    export_hf(model, tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["vision_config"]["hidden_act"] == "gelu"
    hf = transformers.CLIPModel.from_pretrained(str(tmp_path)).eval()
    tokens = smartclip.get_tokenizer(model)([LONG])
    with torch.no_grad():
        torch.testing.assert_close(hf.get_text_features(input_ids=tokens).pooler_output, model.encode_text(tokens),
                                   atol=1e-5, rtol=1e-5)


def test_unsupported_architecture_is_named(tmp_path):
    cfg = copy.deepcopy(smartclip.get_model_config("smartclip-micro"))
    cfg["vision_cfg"]["ls_init_value"] = 1e-4
    model = smartclip.build_model(cfg)
    with pytest.raises(HFExportError, match="layer scale"):
        export_hf(model, tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_export_command(tmp_path, capsys):
    from smartclip.cli import main as cli
    torch.manual_seed(0)
    ckpt = smartclip.save_checkpoint(smartclip.create_model("smartclip-micro"), tmp_path / "ckpt")
    assert cli(["export", str(ckpt), "--format", "hf", "--out", str(tmp_path / "hf")]) == 0
    assert "CLIPModel.from_pretrained" in capsys.readouterr().out
    assert transformers.CLIPConfig.from_pretrained(str(tmp_path / "hf")).text_config.max_position_embeddings == 248
    assert cli(["export", str(ckpt), "--format", "open_clip", "--out", str(tmp_path / "oc")]) == 0
    assert (tmp_path / "oc" / "open_clip_model.safetensors").exists()
    assert cli(["export", str(tmp_path / "missing"), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert "error:" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_every_entry_point_reads_an_hf_export_folder(exported):
    """create_model, load_checkpoint and load take the folder `smartclip export --format hf` writes."""
    model, path = exported
    tokens = smartclip.get_tokenizer(model)(TEXTS)
    with torch.no_grad():
        expected = model.text_mask(tokens, soft=True)
        for loaded in (smartclip.create_model(str(path)), smartclip.load_checkpoint(str(path)),
                       smartclip.load(str(path))[0]):
            assert loaded.mask_trained and loaded.model_name == model.model_name
            torch.testing.assert_close(loaded.eval().text_mask(tokens, soft=True), expected, atol=1e-6, rtol=0)
    assert smartclip.create_model(str(path), mask_padding=True).mask_padding  # options apply as to any checkpoint


def test_one_key_map_both_ways(exported):
    """hf_state_dict and its inverse are the same map: every tensor comes back, bit for bit."""
    from smartclip.hf import _our_state_dict, hf_state_dict
    model, _ = exported
    ours = {k: v for k, v in model.state_dict().items() if not k.startswith("mask_net.")}
    back = _our_state_dict(hf_state_dict(model), len(model.transformer.resblocks),
                           len(model.visual.transformer.resblocks))
    merged = model.merged_positional_embedding().detach()
    ours["positional_embedding"], ours["positional_embedding_res"] = merged, merged
    assert back.keys() == ours.keys()
    assert all(torch.equal(back[k], ours[k].float()) for k in ours)
