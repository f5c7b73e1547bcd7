"""Every command that writes into a folder already holding results either continues what it
finished or refuses, and the refusal names the flag that overrides it (issue 21: ``encode``
refused without naming ``--restart``).

| command | folder holds | behaviour | override |
|---|---|---|---|
| train | checkpoints of a run | refused | ``resume=latest`` (continue) |
| encode images / search build | the same inputs and model | reused / continued | - |
| encode images / search build | other inputs or model | refused | ``--restart`` |
| encode texts | other embeddings | refused | ``--restart`` |
| eval | results of the same model | refused | ``--overwrite`` |
| eval-generation | eval_generation.json | refused | ``--overwrite`` |
| generate | images of other settings | refused | ``--overwrite`` |
| generate | images of the same settings | continued | - |
| export | an earlier export | refused | ``--overwrite`` |
| demo | finished runs | kept, interrupted ones resumed | - |
"""
import json
from types import SimpleNamespace

import pytest
import torch

import smartclip
from smartclip.cli import main as cli
from conftest import real_images
from data_fixtures import make_csv_dataset


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """Two different micro checkpoints, a folder of images, a caption file, a retrieval CSV."""
    root = tmp_path_factory.mktemp("refusals")
    for seed in (0, 1):
        torch.manual_seed(seed)
        smartclip.save_checkpoint(smartclip.create_model("smartclip-micro"), root / f"model{seed}")
    (root / "photos").mkdir()
    for i, im in enumerate(real_images(3, 40)):
        im.save(root / "photos" / f"p{i}.png")
    (root / "captions.txt").write_text("a photo\nanother photo\n")
    csv = make_csv_dataset(root / "pairs", 4)
    return {"root": root, "a": str(root / "model0"), "b": str(root / "model1"), "csv": csv}


def _err(capsys):
    return capsys.readouterr().err


def test_encode_images_continues_the_same_run_and_refuses_another_naming_restart(inputs, tmp_path, capsys):
    photos, out = str(inputs["root"] / "photos"), str(tmp_path / "emb")
    base = ["encode", "images", photos, "--out", out, "--no-progress"]
    assert cli(base + ["--model", inputs["a"]]) == 0
    assert cli(base + ["--model", inputs["a"]]) == 0  # finished with the same inputs and model: reused
    capsys.readouterr()
    assert cli(base + ["--model", inputs["b"]]) == 2
    err = _err(capsys)
    assert "already holds embeddings of another input or model" in err and "--restart" in err
    assert cli(base + ["--model", inputs["b"], "--restart"]) == 0


def test_encode_texts_refuses_other_embeddings_naming_restart(inputs, tmp_path, capsys):
    out = str(tmp_path / "emb")
    assert cli(["encode", "images", str(inputs["root"] / "photos"), "--out", out, "--model", inputs["a"],
                "--no-progress"]) == 0
    texts = ["encode", "texts", str(inputs["root"] / "captions.txt"), "--out", out, "--no-progress"]
    capsys.readouterr()
    assert cli(texts + ["--model", inputs["a"]]) == 2  # would replace the image embeddings
    err = _err(capsys)
    assert "already holds images embeddings" in err and "--restart" in err
    assert cli(texts + ["--model", inputs["a"], "--restart"]) == 0
    assert cli(texts + ["--model", inputs["a"]]) == 0  # the same texts and model: encoded again, same result
    assert cli(texts + ["--model", inputs["b"]]) == 2 and "--restart" in _err(capsys)


def test_search_build_refuses_another_model_naming_restart(inputs, tmp_path, capsys):
    base = ["search", "build", str(inputs["root"] / "photos"), "--index", str(tmp_path / "index"), "--no-progress"]
    assert cli(base + ["--model", inputs["a"]]) == 0
    capsys.readouterr()
    assert cli(base + ["--model", inputs["b"]]) == 2 and "--restart" in _err(capsys)


def test_an_unfinished_run_of_other_inputs_names_restart(inputs, tmp_path):
    from smartclip import search
    from smartclip.search.encoding import PARTIAL
    out = tmp_path / "emb"
    (out / PARTIAL).mkdir(parents=True)
    (out / PARTIAL / "manifest.json").write_text(json.dumps({"fingerprint": "another run", "count": 9}))
    model, preprocess, _ = smartclip.load(inputs["a"])
    source = search.list_images(inputs["root"] / "photos")
    with pytest.raises(search.EncodingError, match=r"unfinished run .* pass --restart \(restart=True\)"):
        search.encode_image_source(model, preprocess, source, out)


def test_train_refuses_a_run_folder_with_checkpoints_naming_resume(inputs, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000005").mkdir(parents=True)
    (run / "checkpoints" / "step_00000005" / "trainer_state.pt").write_bytes(b"")
    code = cli(["train", "tiny", f"data.train={inputs['csv']}", "model.name=smartclip-micro", f"run_dir={run}",
                "eval.specs=[]", "data.num_workers=0"])
    assert code == 2
    assert f"run_dir={run} already holds checkpoints; pass resume=latest" in _err(capsys)


def test_eval_refuses_to_replace_results_of_the_same_model_naming_overwrite(inputs, tmp_path, capsys):
    base = ["eval", "--model", inputs["a"], "--benchmarks", f"retrieval:{inputs['csv']}", "--out", str(tmp_path),
            "--device", "cpu", "--workers", "0", "--no-progress"]
    assert cli(base) == 0
    written = list(tmp_path.glob("eval_*.json"))
    before = written[0].read_text()
    capsys.readouterr()
    assert cli(base) == 2
    err = _err(capsys)
    assert f"{written[0]} already holds results of this model; pass --overwrite" in err
    assert written[0].read_text() == before
    assert cli(base + ["--overwrite"]) == 0


def test_eval_generation_refuses_to_replace_its_results_naming_overwrite(tmp_path, capsys):
    (tmp_path / "gen").mkdir()
    (tmp_path / "ref").mkdir()
    (tmp_path / "gen" / "eval_generation.json").write_text("{}")
    argv = ["eval-generation", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
            "--dinov2", str(tmp_path)]
    assert cli(argv) == 2
    assert "eval_generation.json already holds results; pass --overwrite" in _err(capsys)
    assert cli(argv[:2] + [str(tmp_path / "nope")] + argv[3:]) == 2
    assert "--generated" in _err(capsys)


def test_generate_continues_the_same_settings_and_refuses_others_naming_overwrite(tmp_path):
    from smartclip.generation import GenerationSettings, generate_to_folder
    from smartclip.generation.prompts import Prompt
    made = []

    def draw(texts, seeds, settings):
        from PIL import Image
        made.extend(texts)
        embeddings = SimpleNamespace(token_counts=[3] * len(texts), truncated=[False] * len(texts))
        return [Image.new("RGB", (8, 8)) for _ in texts], embeddings

    encoder = SimpleNamespace(too_long=lambda prompts: [], describe=lambda: {"kind": "stub"}, context_length=248)
    sdxl = type("StubSDXL", (), {"encoder": encoder, "refiner": None, "__call__": lambda self, *a: draw(*a)})()
    prompts = [Prompt(id=f"{i:06d}", text=f"prompt {i}", index=i, reference=None) for i in range(3)]
    generate_to_folder(sdxl, prompts[:2], tmp_path, GenerationSettings(steps=2), progress=False)
    report = generate_to_folder(sdxl, prompts, tmp_path, GenerationSettings(steps=2), progress=False)
    assert report.skipped == ["000000", "000001"] and report.written == ["000002"]  # continued
    with pytest.raises(ValueError, match=r"other settings \(settings differ\).*pass --overwrite"):
        generate_to_folder(sdxl, prompts, tmp_path, GenerationSettings(steps=3), progress=False)
    assert made == ["prompt 0", "prompt 1", "prompt 2"]


@pytest.mark.parametrize("fmt", ["open_clip", "hf"])
def test_export_refuses_a_folder_holding_files_naming_overwrite(inputs, tmp_path, capsys, fmt):
    out = tmp_path / "export"
    base = ["export", inputs["a"], "--format", fmt, "--out", str(out)]
    assert cli(base) == 0
    written = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    assert cli(["export", inputs["b"], "--format", fmt, "--out", str(out)]) == 2
    err = _err(capsys)
    assert "already holds files" in err and "--overwrite" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == written  # untouched
    assert cli(["export", inputs["b"], "--format", fmt, "--out", str(out), "--overwrite"]) == 0
