"""Model construction, long text, the mask network and the tokenizer (docs/method.md §2)."""
import open_clip
import pytest
import torch

import smartclip
from smartclip.model import MaskNetwork, stretch_positional_embedding


def test_stretch_matches_spec_slot_by_slot():
    P = torch.randn(77, 8)
    S = stretch_positional_embedding(P, keep=20, ratio=4)
    assert S.shape == (248, 8)
    for k in range(20):
        torch.testing.assert_close(S[k], P[k])
    for k in range(20, 76):
        for r in range(4):
            torch.testing.assert_close(S[20 + 4 * (k - 20) + r], (1 - r / 4) * P[k] + (r / 4) * P[k + 1])
    for r in range(4):
        torch.testing.assert_close(S[244 + r], P[76] + (r / 4) * (P[76] - P[75]))


def test_stretch_generalises_and_rejects_bad_arguments():
    P = torch.randn(10, 3)
    assert stretch_positional_embedding(P, keep=2, ratio=3).shape == (2 + 3 * 8, 3)
    with pytest.raises(ValueError, match="keep must be"):
        stretch_positional_embedding(P, keep=9)
    with pytest.raises(ValueError, match="ratio"):
        stretch_positional_embedding(P, ratio=0)


def test_positions_below_keep_get_no_gradient(micro_model, device):
    micro_model.to(device)
    tok = smartclip.get_tokenizer(micro_model)
    tokens = tok(["word " * 60, "a short caption"]).to(device)  # reaches past position 20
    micro_model.encode_text(tokens).sum().backward()
    grad = micro_model.positional_embedding_res.grad
    assert torch.all(grad[:20] == 0)
    assert grad[20:].abs().sum() > 0
    assert not micro_model.positional_embedding.requires_grad  # the frozen copy is a buffer
    assert "positional_embedding" in micro_model.state_dict()


def test_both_positional_copies_start_equal_to_the_stretch():
    torch.manual_seed(0)
    clip = open_clip.model.CLIP(**smartclip.get_model_config("smartclip-micro"))
    expected = stretch_positional_embedding(clip.positional_embedding.detach())
    model = smartclip.model.SmartCLIP(clip)
    torch.testing.assert_close(model.positional_embedding, expected)
    torch.testing.assert_close(model.positional_embedding_res.detach(), expected)


def test_trimmed_text_encoding_equals_full_length(micro_model, device):
    micro_model.to(device)
    tok = smartclip.get_tokenizer(micro_model)
    texts = ["a cat", "a photo of a dog on a sofa next to a red ball", "x " * 120]
    tokens = tok(texts).to(device)
    full = micro_model.encode_text(tokens, trim=False)
    trimmed = micro_model.encode_text(tokens, trim=True)
    torch.testing.assert_close(trimmed, full, rtol=1e-5, atol=1e-5)
    short = tok(["a cat", "a dog"]).to(device)
    torch.testing.assert_close(micro_model.encode_text(short), micro_model.encode_text(short, trim=False),
                               rtol=1e-5, atol=1e-5)


def test_mask_is_hard_with_straight_through_gradient(micro_model, device):
    micro_model.to(device)
    tok = smartclip.get_tokenizer(micro_model)
    tokens = tok(["a red square", "a blue circle at the top"]).to(device)
    mask = micro_model.text_mask(tokens)
    assert mask.shape == (2, micro_model.embed_dim)
    assert set(mask.detach().unique().tolist()) <= {0.0, 1.0}
    soft = micro_model.text_mask(tokens, soft=True)
    assert torch.all((soft > 0) & (soft < 1))
    assert torch.equal(mask.detach(), (soft >= 0.5).float())
    mask.sum().backward()
    assert micro_model.mask_net.attn_pool.attention.weight.grad.abs().sum() > 0


def test_mask_input_is_detached_from_text_encoder(micro_model, device):
    micro_model.to(device)
    tokens = smartclip.get_tokenizer(micro_model)(["a dog", "two cats"]).to(device)
    out = micro_model(None, tokens)
    out["mask"].sum().backward()
    assert all(p.grad is None for p in micro_model.transformer.parameters())
    assert micro_model.token_embedding.weight.grad is None


def test_mask_network_attends_to_padding_unless_asked(micro_model, device):
    """Released behaviour: padding positions feed the mask; ``mask_padding`` ignores them."""
    micro_model.to(device)
    tokens = smartclip.get_tokenizer(micro_model)(["a dog"]).to(device)
    seq = micro_model._text_tower(tokens, trim=False)[1]
    pad = micro_model._padding(tokens)
    net = micro_model.mask_net
    changed = seq.clone()
    changed[:, 10:] += 1.0  # alter padding outputs only (EOT is at position 3)
    assert not torch.allclose(net(seq), net(changed))
    torch.testing.assert_close(net(seq, pad), net(changed, pad))
    # with mask_padding the trimmed path is exact
    torch.manual_seed(0)
    m = smartclip.create_model("smartclip-micro", mask_padding=True, device=device)
    toks = smartclip.get_tokenizer(m)(["a dog", "a much longer caption about a dog and a cat"]).to(device)
    _, full_seq = m._text_tower(toks, trim=False)
    full_mask = torch.sigmoid(m.mask_net(full_seq, m._padding(toks)))
    torch.testing.assert_close(m.text_mask(toks, soft=True), full_mask, rtol=1e-5, atol=1e-6)


def test_mask_network_initialisation_and_projection():
    torch.manual_seed(0)
    net = MaskNetwork(width=512, heads=8, embed_dim=512)
    block = net.resblocks[0]
    assert net.proj is None  # no projection when text width == embedding size
    for tensor, std in [(block.attn.in_proj_weight, 512 ** -0.5), (block.attn.out_proj.weight, 512 ** -0.5 * 2 ** -0.5),
                        (block.mlp.c_fc.weight, 1024 ** -0.5), (block.mlp.c_proj.weight, 512 ** -0.5 * 2 ** -0.5),
                        (net.attn_pool.attention.weight, 512 ** -0.5)]:
        assert abs(tensor.std().item() / std - 1) < 0.05
    assert torch.all(net.attn_pool.attention.bias == 0)
    assert MaskNetwork(width=64, heads=2, embed_dim=32).proj.weight.shape == (32, 64)
    # the micro config has text width 64 and embedding 32: the projection exists there
    assert smartclip.create_model("smartclip-micro").mask_net.proj is not None
    assert smartclip.create_model("smartclip-tiny").mask_net.proj is None


def test_forward_returns_what_the_losses_need(micro_model, images, device):
    micro_model.to(device)
    preprocess = smartclip.image_transform(micro_model)
    batch = torch.stack([preprocess(im) for im in images[:3]]).to(device)
    tokens = smartclip.get_tokenizer(micro_model)(["a", "b c", "d e f"]).to(device)
    out = micro_model(batch, tokens)
    assert out["image_features"].shape == out["text_features"].shape == out["mask"].shape == (3, 32)
    loss = smartclip.loss.ModularContrastiveLoss()(**out)
    assert torch.isfinite(loss["loss"])
    clip_out = micro_model(batch, tokens, with_mask=False)
    assert "mask" not in clip_out
    torch.testing.assert_close(clip_out["text_features"], out["text_features"], rtol=1e-5, atol=1e-5)


def test_tokenizer_matches_open_clip_and_counts_truncation():
    tok = smartclip.get_tokenizer("ViT-B-16")
    assert tok.context_length == 248
    texts = ["A photo of a cat.", "word " * 300, ""]
    tokens, truncated = tok.tokenize(texts)
    expected = open_clip.tokenizer.SimpleTokenizer()(texts, context_length=248)
    assert torch.equal(tokens, expected)
    assert truncated.tolist() == [False, True, False]
    assert tokens[1, -1] == tok.eot_token_id
    assert tok.num_truncated == 1 and tok.num_texts == 3
    exact = "word " * 246  # 246 tokens + start + end = 248: fits exactly
    assert tok.tokenize([exact])[1].tolist() == [False]
    assert tok.tokenize([exact + "word"])[1].tolist() == [True]


def test_list_and_unknown_names():
    names = smartclip.list_models()
    assert {"smartclip-micro", "smartclip-tiny", "ViT-B-16", "ViT-L-14"} <= set(names)
    assert not any("coca" in n.lower() for n in names)
    with pytest.raises(ValueError, match="Unknown model name 'ViT-B-61'.*Did you mean.*ViT-B-16"):
        smartclip.create_model("ViT-B-61")
    with pytest.raises(TypeError, match="unknown model option"):
        smartclip.create_model("smartclip-micro", strech=3)
    with pytest.raises(ValueError, match="neither a file nor an open_clip tag"):
        smartclip.create_model("smartclip-micro", pretrained="no-such-tag")


@pytest.mark.slow
def test_full_size_architectures_build():
    model = smartclip.create_model("ViT-B-16")
    assert model.context_length == 248 and model.embed_dim == 512
    assert model.mask_net.resblocks[0].attn.num_heads == 8
    assert isinstance(model.mask_net.resblocks[0].mlp.gelu, torch.nn.GELU)
    assert isinstance(smartclip.create_model("ViT-B-16-quickgelu").mask_net.resblocks[0].mlp.gelu,
                      open_clip.transformer.QuickGELU)
