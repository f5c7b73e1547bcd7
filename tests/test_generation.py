"""smartclip generate: prompt embeddings from SmartCLIP + stretched bigG into a tiny SDXL, on the CPU."""
import contextlib
import json

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

import smartclip  # noqa: E402
from smartclip.cli import main  # noqa: E402
from smartclip.generation import (GenerationSettings, LongPromptSDXL, PromptFileError, PromptTooLongError,  # noqa: E402
                                  generate_to_folder, load_open_clip_bigg, load_sdxl_bigg, read_prompts,
                                  stretch_hf_text_model)
from smartclip.generation.prompts import Prompt  # noqa: E402

from generation_fixtures import clip_tokenizers, write_tiny_refiner, write_tiny_sdxl  # noqa: E402

LONG = ("A wide sunlit kitchen with white cabinets, a wooden table in the middle holding a bowl of green apples, "
        "a blue kettle on the stove, a window over the sink looking out on a garden with tall sunflowers, "
        "a striped cat asleep on a chair, two mugs beside a stack of plates, copper pans hanging from a rail, "
        "a calendar on the wall, a basket of bread near the door, a red rug on the tiled floor, and a small "
        "radio on the shelf next to jars of rice and beans in the warm afternoon light")


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl")
    tokenizers = clip_tokenizers(root / "vocab")
    return {"sdxl": write_tiny_sdxl(root / "base", 64, tokenizers),
            "refiner": write_tiny_refiner(root / "refiner", tokenizers)}


@pytest.fixture(scope="module")
def sdxl(folders):
    torch.manual_seed(0)
    return LongPromptSDXL.from_pretrained(smartclip.create_model("smartclip-micro"), folders["sdxl"])


@contextlib.contextmanager
def unet_inputs(pipe):
    """Record what the UNet is called with: (encoder_hidden_states, added text_embeds) per call."""
    calls = []
    hook = pipe.unet.register_forward_pre_hook(
        lambda m, args, kwargs: calls.append((kwargs["encoder_hidden_states"].clone(),
                                              kwargs["added_cond_kwargs"]["text_embeds"].clone())),
        with_kwargs=True)
    try:
        yield calls
    finally:
        hook.remove()


# ------------------------------------------------------------------------ model and encoders
def test_text_token_features_final_and_hidden_states():
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-tiny").eval()  # 3 text blocks
    tokens = smartclip.get_tokenizer(model)(["a red cube left of a blue ball"])
    pooled, final = model.text_token_features(tokens)
    assert final.shape == (1, 248, model.text_width)
    assert torch.equal(pooled, model.encode_text(tokens, trim=False))
    # by hand: (embeddings, block 1, block 2, block 3) before any norm, then the final norm
    x = model.token_embedding(tokens) + model.merged_positional_embedding()
    states = [x]
    for block in model.transformer.resblocks:
        states.append(block(states[-1], attn_mask=model.attn_mask))
    for i in (0, 1, -2, -1):
        torch.testing.assert_close(model.text_token_features(tokens, i)[1], states[i], rtol=0, atol=1e-6)
    torch.testing.assert_close(final, model.ln_final(states[-1]), rtol=0, atol=1e-6)
    with pytest.raises(IndexError):
        model.text_token_features(tokens, 4)


def test_stretched_bigg_keeps_short_prompts_and_reads_248_tokens(folders):
    from transformers import CLIPTextModelWithProjection
    original = CLIPTextModelWithProjection.from_pretrained(str(folders["sdxl"] / "text_encoder_2")).eval()
    bigg = load_sdxl_bigg(folders["sdxl"])
    table = bigg.model.text_model.embeddings.position_embedding.weight
    assert bigg.context_length == 248 and table.shape[0] == 248
    torch.testing.assert_close(table, smartclip.stretch_positional_embedding(
        original.text_model.embeddings.position_embedding.weight))
    tokens = smartclip.Tokenizer(248)(["a red cube"])
    sequence, pooled = bigg(tokens)
    with torch.no_grad():  # causal attention: the first 20 positions are unchanged by the stretch
        short = original(input_ids=tokens[:, :77])
    torch.testing.assert_close(sequence[:, :20], short.last_hidden_state[:, :20], rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled, short.text_embeds, rtol=0, atol=1e-6)
    with pytest.raises(ValueError):
        stretch_hf_text_model(original, keep=80)


def test_our_tokens_are_what_sdxl_tokenizer_2_writes(folders):
    from transformers import CLIPTokenizer
    hf = CLIPTokenizer.from_pretrained(str(folders["sdxl"] / "tokenizer_2"))
    text = "a photo of a striped cat, asleep on a red chair in the warm afternoon light"
    ours = smartclip.Tokenizer(248)([text])[0].tolist()
    assert hf(text, padding="max_length", max_length=248)["input_ids"] == ours


def test_open_clip_checkpoint_as_second_encoder(tmp_path):
    from open_clip.model import CLIP
    cfg = smartclip.get_model_config("smartclip-micro")
    torch.manual_seed(3)
    clip = CLIP(**cfg)
    torch.save(clip.state_dict(), tmp_path / "open_clip_model.bin")
    encoder = load_open_clip_bigg(tmp_path / "open_clip_model.bin", arch="smartclip-micro")
    assert encoder.context_length == 248 and encoder.width == 64 and encoder.pooled_dim == 32
    tokens = smartclip.Tokenizer(248)(["a red cube"])
    sequence, pooled = encoder(tokens)
    with torch.no_grad():
        torch.testing.assert_close(pooled, clip.encode_text(tokens[:, :77]), rtol=0, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_open_clip_bigg(tmp_path / "missing.bin")


# ------------------------------------------------------------------------ the pipeline
@pytest.mark.parametrize("layer", ["final", "penultimate"])
def test_pipeline_receives_our_token_features(sdxl, layer):
    from smartclip.generation import PromptEncoder
    first, second = sdxl.encoder.first, sdxl.encoder.second
    sdxl = LongPromptSDXL(sdxl.base, PromptEncoder(first, second, layer=layer))
    texts = ["a red cube", LONG]
    with unet_inputs(sdxl.base) as calls:
        images, _ = sdxl(texts, [0, 1], GenerationSettings(steps=1, guidance_scale=5.0))
    assert len(images) == 2 and images[0].size == (32, 32)
    hidden, pooled = calls[0]
    assert hidden.shape == (4, 248, 96)  # [negatives; prompts] x 248 tokens x (64 + 32)
    tokens = smartclip.Tokenizer(248)(texts)
    with torch.no_grad():
        _, ours = first.model.text_token_features(tokens, None if layer == "final" else -2)
        out = second.model(input_ids=tokens, output_hidden_states=True)
    bigg = out.last_hidden_state if layer == "final" else out.hidden_states[-2]
    torch.testing.assert_close(hidden[2:, :, :64], ours, rtol=0, atol=1e-6)
    torch.testing.assert_close(hidden[2:, :, 64:], bigg, rtol=0, atol=1e-6)
    torch.testing.assert_close(pooled[2:], out.text_embeds, rtol=0, atol=1e-6)
    assert not hidden[:2].any() and not pooled[:2].any()  # no negative prompt: zeros, as SDXL


def test_long_prompt_reaches_the_unet_with_all_its_tokens(sdxl):
    n = sdxl.encoder.token_count(LONG)
    assert 77 < n <= 248
    changed = LONG.replace("warm afternoon light", "cold morning light")
    with unet_inputs(sdxl.base) as calls:
        sdxl([LONG, changed], [0, 0], GenerationSettings(steps=1, guidance_scale=1.0))
    hidden = calls[0][0]
    assert hidden.shape[:2] == (2, 248)
    tokens = smartclip.Tokenizer(248)([LONG, changed])
    first_diff = int((tokens[0] != tokens[1]).nonzero()[0])
    assert first_diff > 77  # the words that differ lie past CLIP's 77 tokens ...
    assert torch.equal(hidden[0, :first_diff], hidden[1, :first_diff])  # (causal: nothing before them moves)
    assert not torch.allclose(hidden[0, first_diff:n], hidden[1, first_diff:n])  # ... and still reach the UNet


def test_negative_prompt_is_encoded(sdxl):
    with unet_inputs(sdxl.base) as calls:
        sdxl(["a red cube"], [0], GenerationSettings(steps=1, negative_prompt="blurry"))
    hidden = calls[0][0]
    expected = sdxl.encoder.encode(["blurry"]).prompt_embeds
    torch.testing.assert_close(hidden[:1], expected, rtol=0, atol=1e-6)


@pytest.mark.slow
def test_refiner_reads_bigg_tokens(folders):
    torch.manual_seed(0)
    sdxl = LongPromptSDXL.from_pretrained(smartclip.create_model("smartclip-micro"), folders["sdxl"],
                                          refiner_dir=folders["refiner"])
    with unet_inputs(sdxl.base) as base_calls, unet_inputs(sdxl.refiner) as refiner_calls:
        images, embeddings = sdxl([LONG], [0], GenerationSettings(steps=5, refiner_switch=0.6))
    assert images[0].size == (32, 32)
    assert len(base_calls) == 3 and len(refiner_calls) == 2  # 60 % of 5 steps on the base, the rest refined
    hidden = refiner_calls[0][0]
    assert hidden.shape == (2, 248, 32)
    torch.testing.assert_close(hidden[1:], embeddings.second, rtol=0, atol=1e-6)
    # the refiner's config does not zero empty negatives (as SDXL's): "" is encoded
    torch.testing.assert_close(hidden[:1], sdxl.encoder.encode([""]).second, rtol=0, atol=1e-6)


def test_wrong_widths_are_refused(sdxl):
    from smartclip.generation import PromptEncoder
    narrow = PromptEncoder(sdxl.encoder.second, sdxl.encoder.second)  # 32 + 32 wide
    with pytest.raises(ValueError, match="reads 96-wide token features but .* add up to 64"):
        LongPromptSDXL(sdxl.base, narrow)


# ------------------------------------------------------------------------ files and the CLI
def test_long_prompts_refused_before_any_image(sdxl, tmp_path):
    prompts = [Prompt("short", "a red cube", None, 0), Prompt("long", "cat " * 300, None, 1)]
    with pytest.raises(PromptTooLongError, match=r"long \(302 tokens\)"):
        generate_to_folder(sdxl, prompts, tmp_path / "out", GenerationSettings(steps=1, long_prompts="refuse"),
                           progress=False)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    report = generate_to_folder(sdxl, prompts, tmp_path / "out", GenerationSettings(steps=1), progress=False)
    assert report.truncated == ["long"] and sorted(report.written) == ["long", "short"]
    sidecar = json.loads((tmp_path / "out" / "long.json").read_text())
    assert sidecar["truncated"] and sidecar["tokens"] == 302 and sidecar["seed"] == 1
    assert json.loads((tmp_path / "out" / "generation.json").read_text())["truncated"] == 1


def test_read_prompts_formats(tmp_path):
    (tmp_path / "p.txt").write_text("a red cube\n\n  a blue ball  \n")
    assert read_prompts(tmp_path / "p.txt") == [Prompt("000001", "a red cube", None, 0),
                                                Prompt("000003", "a blue ball", None, 1)]
    (tmp_path / "p.jsonl").write_text('{"id": "x1", "prompt": "a cube", "reference": "img/x1.jpg"}\n\n'
                                      '{"caption": "a ball"}\n')
    assert read_prompts(tmp_path / "p.jsonl") == [Prompt("x1", "a cube", "img/x1.jpg", 0),
                                                  Prompt("000001", "a ball", None, 1)]
    (tmp_path / "p.csv").write_text("id,caption,image\na,a cube,a.png\nb,a ball,b.png\n")
    assert read_prompts(tmp_path / "p.csv", start=1) == [Prompt("b", "a ball", "b.png", 1)]
    records = [{"id": f"r{i}", "image": f"coco/train2017/{i:012d}.jpg",
                "conversations": [{"from": "human", "value": "<image>\nDescribe."},
                                  {"from": "gpt", "value": f"Line one of {i}.\nLine two."}]} for i in range(5)]
    (tmp_path / "share.json").write_text(json.dumps(records))
    got = read_prompts(tmp_path / "share.json", start=1, limit=2)
    assert got == [Prompt("r1", "Line one of 1. Line two.", "coco/train2017/000000000001.jpg", 1),
                   Prompt("r2", "Line one of 2. Line two.", "coco/train2017/000000000002.jpg", 2)]
    (tmp_path / "dup.jsonl").write_text('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n')
    with pytest.raises(PromptFileError, match="appears twice"):
        read_prompts(tmp_path / "dup.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"id": "../a", "prompt": "x"}\n')
    with pytest.raises(PromptFileError, match="cannot be a file name"):
        read_prompts(tmp_path / "bad.jsonl")
    (tmp_path / "none.jsonl").write_text('{"id": "a"}\n')
    with pytest.raises(PromptFileError, match="none.jsonl line 1: no prompt"):
        read_prompts(tmp_path / "none.jsonl")


@pytest.mark.slow
def test_generate_cli_end_to_end(folders, tmp_path, capsys):
    torch.manual_seed(0)
    smartclip.save_checkpoint(smartclip.create_model("smartclip-micro"), tmp_path / "model")
    (tmp_path / "prompts.txt").write_text("a red cube\na blue ball on a wooden table\n" + "cat " * 300 + "\n")
    common = ["generate", "--model", str(tmp_path / "model"), "--sdxl", str(folders["sdxl"]), "--prompts",
              str(tmp_path / "prompts.txt"), "--steps", "2", "--no-progress", "--device", "cpu"]
    assert main(common + ["--out", str(tmp_path / "a"), "--batch-size", "2"]) == 0
    out = capsys.readouterr().out
    assert "3 images written" in out and "1 prompts longer than 248 tokens were truncated (000003)" in out
    a = tmp_path / "a"
    sidecar = json.loads((a / "000002.json").read_text())
    assert sidecar["prompt"] == "a blue ball on a wooden table" and sidecar["seed"] == 1
    assert sidecar["settings"]["steps"] == 2 and sidecar["encoder"]["layer"] == "final"
    assert sidecar["model"] == str(tmp_path / "model") and not sidecar["truncated"]
    # image k's seed does not depend on the batch it is drawn in
    assert main(common + ["--out", str(tmp_path / "b"), "--batch-size", "1", "--limit", "2"]) == 0
    from PIL import Image
    for ident in ("000001", "000002"):
        first, second = (np.asarray(Image.open(d / f"{ident}.png"), dtype=int) for d in (a, tmp_path / "b"))
        assert np.abs(first - second).max() <= 1
    # a rerun continues; other settings are refused; refusing long prompts stops before any image
    assert main(common + ["--out", str(a)]) == 0 and "0 images written, 3 already there" in capsys.readouterr().out
    assert main(common + ["--out", str(a), "--guidance-scale", "7"]) == 2
    assert "other settings (settings differ)" in capsys.readouterr().err
    assert main(common + ["--out", str(tmp_path / "c"), "--long-prompts", "refuse"]) == 2
    assert "000003 (302 tokens)" in capsys.readouterr().err and not list((tmp_path / "c").glob("*.png"))
    assert main(common + ["--out", str(tmp_path / "d"), "--refiner", str(folders["refiner"]), "--limit", "1"]) == 0
    assert json.loads((tmp_path / "d" / "generation.json").read_text())["refiner"] is True
    assert main(common[:5] + ["--prompts", str(tmp_path / "missing.txt"), "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err
    assert "--prompts" in err and "missing.txt: no such file" in err
