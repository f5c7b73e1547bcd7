"""Mask analysis: per-caption masks equal the model's, overlaps, algebra, plot and CLI."""
import json

import numpy as np
import pytest
import torch

import smartclip
from smartclip import search
from smartclip.cli import main as cli

CAPTIONS = ["a bear holding a pen", "a bear next to a pen", "a pen on a wooden desk", "a bear"]


@pytest.fixture(scope="module")
def model_and_report():
    torch.manual_seed(0)
    # mask_padding: an untrained network that also pools the padding gives nearly equal masks for
    # short captions; pooling their tokens only gives distinct ones, so the algebra is not trivial
    model = smartclip.create_model("smartclip-micro", mask_padding=True).eval()
    tok = smartclip.get_tokenizer(model)
    return model, tok, search.caption_masks(model, tok, CAPTIONS)


def test_masks_equal_model_text_mask(model_and_report):
    model, tok, report = model_and_report
    with torch.no_grad():
        expected = model.text_mask(tok(CAPTIONS)).numpy() > 0.5
    assert report.masks.shape == (4, 32) and report.masks.dtype == bool
    assert np.array_equal(report.masks, expected)
    assert np.array_equal(report.masks, report.probs >= 0.5)
    # captions select different, partly overlapping subsets: the algebra below is not trivial
    assert len({tuple(r) for r in report.masks}) == 4
    assert 0 < report.overlap[0, 1] < min(report.counts[0], report.counts[1])


def test_counts_overlaps_jaccard(model_and_report):
    _, _, r = model_and_report
    m = r.masks
    assert r.counts.tolist() == m.sum(1).tolist()
    for i in range(4):
        for j in range(4):
            inter = int((m[i] & m[j]).sum())
            assert r.overlap[i, j] == inter
            assert r.jaccard[i, j] == pytest.approx(inter / (m[i] | m[j]).sum())
    d = r.to_dict(["1 & 2"])
    assert d["captions"][0]["dims"] == np.flatnonzero(m[0]).tolist()
    assert d["expressions"][0]["count"] == int((m[0] & m[1]).sum())


def test_mask_algebra(model_and_report):
    _, _, r = model_and_report
    m = r.masks
    assert np.array_equal(r.evaluate("1 & 2"), m[0] & m[1])
    assert np.array_equal(r.evaluate("1 | 3"), m[0] | m[2])
    assert np.array_equal(r.evaluate("1 - 2"), m[0] & ~m[1])
    assert np.array_equal(r.evaluate("1 ^ 4"), m[0] ^ m[3])
    assert np.array_equal(r.evaluate("~4"), ~m[3])
    assert np.array_equal(r.evaluate("(1 | 2) - (3 & 4)"), (m[0] | m[1]) & ~(m[2] & m[3]))
    assert not r.evaluate("1 - 1").any()


@pytest.mark.parametrize("expr, message", [("5 & 1", "caption 5 does not exist"), ("0", "caption 0"),
                                           ("1 +", "not valid"), ("1 + 2", "not allowed"),
                                           ("__import__('os')", "not allowed"), ("True & 1", "not allowed")])
def test_bad_expressions_are_named(model_and_report, expr, message):
    _, _, r = model_and_report
    with pytest.raises(search.MaskExpressionError, match=message):
        r.evaluate(expr)


def test_plot(model_and_report, tmp_path):
    _, _, r = model_and_report
    path = search.plot_masks(r, tmp_path / "masks.png", ["1 & 2", "1 - 2"])
    from PIL import Image
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 200


def test_cli_masks(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = smartclip.save_checkpoint(smartclip.create_model("smartclip-micro"), tmp_path / "ckpt")
    extra = tmp_path / "more.txt"
    extra.write_text("a bear\n")
    code = cli(["masks", "--model", str(ckpt), CAPTIONS[0], CAPTIONS[1], "--file", str(extra),
                "--expr", "1 & 2", "--expr", "1 - 3", "--plot", str(tmp_path / "m.png"),
                "--json", str(tmp_path / "m.json")])
    assert code == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "m.json").read_text())
    assert [c["text"] for c in report["captions"]] == [CAPTIONS[0], CAPTIONS[1], "a bear"]
    assert f"1. {report['captions'][0]['count']}/32 dims" in out and "shared dimensions" in out
    assert f"1 & 2: {report['expressions'][0]['count']}/32 dims" in out
    assert (tmp_path / "m.png").stat().st_size > 1000
    assert cli(["masks", "--model", str(ckpt), "a", "--expr", "1 & 7"]) == 2
    assert "caption 7 does not exist" in capsys.readouterr().err
