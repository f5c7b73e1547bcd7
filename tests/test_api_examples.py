"""The "use" tour (docs/usage.md between <!-- tour --> and <!-- /tour -->, also pasted in the
README) runs as written, from an empty folder: each Python block in a fresh namespace (each
must run on its own), each shell line through the ``smartclip`` CLI in-process."""
import re
import shlex
import threading
import urllib.request
from pathlib import Path

import pytest

import smartclip.samples
import smartclip.serve
import smartclip.serve.server as serve_server
from smartclip.cli import main as cli

ROOT = Path(__file__).resolve().parents[1]
TOUR = re.compile(r"<!-- tour -->\n(.*?)<!-- /tour -->", re.S)
BLOCK = re.compile(r"```(python|bash)\n(.*?)```", re.S)


def tour_blocks(path: Path):
    match = TOUR.search(path.read_text())
    assert match, f"{path} has no <!-- tour --> ... <!-- /tour --> section"
    return match.group(1), BLOCK.findall(match.group(1))


def test_readme_tour_is_the_tested_one():
    assert tour_blocks(ROOT / "README.md")[1] == tour_blocks(ROOT / "docs" / "usage.md")[1]


def _serve_once(checks):
    """Replaces the blocking ``serve``: starts the real server on a free loopback port, runs a
    query through it, and stops."""
    def serve(app, host="127.0.0.1", port=8000):
        server = serve_server.make_server(app, host, 0)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            url = f"http://127.0.0.1:{server.server_address[1]}"
            with urllib.request.urlopen(url + "/api/search?q=a%20cup%20of%20coffee&k=2", timeout=30) as r:
                checks.append(r.read().decode())
        finally:
            server.shutdown()
            server.server_close()
    return serve


@pytest.mark.slow
def test_tour_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # empty: the tour writes its own inputs
    served = []
    monkeypatch.setattr(smartclip.serve, "serve", _serve_once(served))  # what `smartclip serve` calls

    _, blocks = tour_blocks(ROOT / "docs" / "usage.md")
    assert [kind for kind, _ in blocks] == ["python", "python", "bash", "python"]
    for i, (kind, code) in enumerate(blocks):
        if kind == "python":
            exec(compile(code, f"usage.md tour block {i}", "exec"), {"__name__": "__tour__"})
            continue
        for line in code.strip().splitlines():
            argv = shlex.split(line, comments=True)
            assert argv[0] == "smartclip", line
            assert cli(argv[1:]) == 0, line

    out = capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "photos").iterdir()) == sorted(smartclip.samples.SAMPLE_PHOTOS)
    assert "dimensions selected:" in out
    assert "smartclip-tiny: embed 64" in out and "ViT-B-16: embed 512" in out
    assert "embeddings/photos: 6 images x 64 dims" in out and "embeddings/captions: 6 texts x 64 dims" in out
    assert "photo-index: 6 images indexed" in out
    assert re.search(r"  1  \+1\.0000  .*photos/cat\.jpg", out)  # the image query finds itself first
    assert "1 & 2: " in out and (tmp_path / "masks.png").exists()
    assert (tmp_path / "my-model-hf" / "config.json").exists()
    assert '"hits"' in served[0] and len(served) == 1
    assert "torch.Size([1, 64])" in out  # the transformers text embedding


def test_models_command(capsys):
    import json
    assert cli(["models"]) == 0
    names = capsys.readouterr().out.split()
    assert names[:3] == ["smartclip-micro", "smartclip-small", "smartclip-tiny"] and "ViT-L-14" in names
    assert cli(["models", "smartclip-micro", "ViT-L-14", "--json"]) == 0
    micro, large = json.loads(capsys.readouterr().out)
    assert (micro["embed_dim"], micro["context_length"], micro["image_size"]) == (32, 248, [32, 32])
    assert large["text_tower"] == {"width": 768, "layers": 12, "heads": 12}
    assert 400e6 < large["parameters"]["total"] < 440e6  # ViT-L/14 CLIP is about 428 M
    assert large["parameters"]["total"] == sum(large["parameters"][k] for k in ("image", "text", "mask_network"))
    assert cli(["models", "ViT-B-61"]) == 2
    assert "Did you mean ViT-B-16" in capsys.readouterr().err


def test_load_accepts_checkpoints_released_files_and_names(tmp_path):
    import torch
    import smartclip

    # a released-style .pt: OpenAI layout, fp16, both 248-row positional tables, mask_net.*;
    # head width 64 as in the released ViT-B/16 and L/14 (the layout does not record heads)
    cfg = {"embed_dim": 32, "quick_gelu": True,
           "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "head_width": 64, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 1, "layers": 2}}
    torch.manual_seed(0)
    reference = smartclip.build_model(cfg).eval()
    torch.save({k: v.half() for k, v in reference.state_dict().items()}, tmp_path / "released.pt")
    smartclip.save_checkpoint(reference, tmp_path / "ours")
    texts = ["a bear holding a pen", "a long caption, " * 30]
    pixels = torch.rand(2, 3, 32, 32)
    for source, atol in [(tmp_path / "ours", 1e-6), (tmp_path / "released.pt", 2e-2)]:
        model, preprocess, tokenizer = smartclip.load(str(source))
        assert not model.training and tokenizer.context_length == 248
        assert preprocess.transforms[0].size in (32, [32], (32, 32))
        with torch.no_grad():
            torch.testing.assert_close(model.encode_text(tokenizer(texts)), reference.encode_text(tokenizer(texts)),
                                       atol=atol, rtol=0)
            torch.testing.assert_close(model.encode_image(pixels), reference.encode_image(pixels), atol=atol, rtol=0)
        assert model.mask_trained
    model, _, tokenizer = smartclip.load("smartclip-micro")  # a name: random weights
    assert model.embed_dim == 32 and tokenizer.context_length == 248
    with pytest.raises(ValueError, match="tags"):
        smartclip.load("smartclip-micro:no-such-tag")


@pytest.mark.slow  # the Hugging Face export takes a few seconds
def test_weight_files_get_the_mode_of_every_other_file(tmp_path):
    """safetensors writes 0600; our checkpoints and exports follow the umask like other files."""
    import os
    import smartclip
    model = smartclip.create_model("smartclip-micro")
    old = os.umask(0o027)
    try:
        smartclip.save_checkpoint(model, tmp_path / "ours")
        smartclip.export(model, tmp_path / "open_clip")
        smartclip.export(model, tmp_path / "hf", format="hf")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): p.stat().st_mode & 0o777 for p in tmp_path.rglob("*") if p.is_file()}
    assert {p for p in modes if p.endswith(".safetensors")} >= {
        "ours/model.safetensors", "open_clip/open_clip_model.safetensors", "hf/model.safetensors"}
    assert set(modes.values()) == {0o640}, modes
