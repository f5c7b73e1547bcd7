"""`smartclip data prepare`: stored images give bit-identical tensors, kill-resume gives the same
shards, the manifest counts what `data check` counts, and training checks the recipe."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2

import smartclip
from data_fixtures import (make_bad_csv_dataset, make_bad_sharegpt4v_dataset, make_bad_wds_shards, make_csv_dataset,
                           make_sharegpt4v_dataset, make_size_class_dataset)
from smartclip.data import DataConfig, DataError, build_train_data, load_image
from smartclip.data.check import check_dataset
from smartclip.data.prepare import prepare_dataset
from smartclip.data.shards import iter_shard

ROOT = Path(__file__).resolve().parents[1]


def micro_cfg(**changes):
    cfg = dict(smartclip.create_model("smartclip-micro").preprocess_cfg)
    cfg.update(changes)
    return cfg


# ViT-B/16's preprocessing (224 px, bicubic, shorter side, centre crop), and variants of it.
RECIPES = {"b16": dict(size=224), "bilinear": dict(size=224, interpolation="bilinear"),
           "squash": dict(size=224, resize_mode="squash"), "b16_crop": dict(size=224)}


def _samples(folder):
    for shard in sorted(Path(folder).glob("*.tar")):
        for key, group in iter_shard(str(shard)):
            yield key, group


@pytest.fixture(scope="module")
def size_classes(tmp_path_factory):
    return make_size_class_dataset(tmp_path_factory.mktemp("sizes"))


@pytest.mark.parametrize("name", list(RECIPES))
def test_stored_images_preprocess_bit_identical(tmp_path, size_classes, name):
    """Every size class and colour repair: the model's preprocessing of the stored image equals
    its preprocessing of the original file, bit for bit. With train.augment: false the training
    loop uses this same transform (`image_transform(model, train=False)`); the loader is compared
    below too."""
    path, captions = size_classes
    pre = micro_cfg(**RECIPES[name])
    store = "crop" if name.endswith("_crop") else "resized"
    result = prepare_dataset(DataConfig(train=path), str(tmp_path / "out"), preprocess_cfg=pre, workers=1,
                             shard_size=4, store=store, progress=False)
    m = result.manifest
    assert m["written"] == m["records"] == len(captions)
    assert m["counts"]["converted_cmyk"] == 1 and m["counts"]["converted_palette"] == 2
    assert m["counts"]["converted_alpha"] == 2 and m["counts"]["converted_grayscale"] == 2
    transform = image_transform_v2(PreprocessCfg(**pre), is_train=False)
    seen = set()
    for key, group in _samples(tmp_path / "out"):
        info = json.loads(group["json"])
        assert set(group) == {"ppm", "txt", "json"} and info["id"] == key
        original = load_image(info["image"])
        stored = load_image(group["ppm"])
        if original.size[0] > 400:
            assert stored.size[0] * stored.size[1] < original.size[0] * original.size[1]  # resized, not copied
        if store == "crop" or RECIPES[name].get("resize_mode") == "squash":
            assert stored.size == (224, 224)
        assert torch.equal(transform(stored), transform(original)), info["image"]
        seen.add(group["txt"].decode())
    assert seen == set(captions.values())

    # The training loader (caption_mode=full so texts identify images): same tensors either way.
    def images(train):
        data = build_train_data(DataConfig(train=train, caption_mode="full", num_workers=0, shuffle_buffer=1),
                                preprocess=transform, tokenizer=smartclip.get_tokenizer("smartclip-micro"),
                                batch_size=3, preprocess_cfg=pre)
        return {t: img for b in data for t, img in zip(b["texts"], b["images"])}
    original, prepared = images(path), images(str(tmp_path / "out"))
    assert set(original) == set(prepared) == set(captions.values())
    assert all(torch.equal(original[t], prepared[t]) for t in original)


def test_manifest_counts_equal_data_check(tmp_path):
    csv_path, _ = make_bad_csv_dataset(tmp_path / "c")
    json_path, _ = make_bad_sharegpt4v_dataset(tmp_path / "j")
    shards, _ = make_bad_wds_shards(tmp_path / "w")
    train = f"{csv_path}::{json_path}::{shards}"
    cfg = DataConfig(train=train, exclude_sharegpt4v_eval=False, max_bad_fraction=0.9)
    report = check_dataset(cfg, workers=1)
    result = prepare_dataset(cfg, str(tmp_path / "out"), preprocess_cfg=micro_cfg(), workers=2, shard_size=7,
                             progress=False)
    m = result.manifest
    assert m["counts"] == {k: int(report.counts[k]) for k in m["counts"]}
    assert m["records"] == report.records and m["written"] == report.good and m["bad"] == report.bad
    assert sum(s["samples"] for s in m["shards"]) == m["written"]
    # every good record exactly once
    where = sorted(json.loads(g["json"])["where"] for _, g in _samples(tmp_path / "out"))
    assert where == sorted(report.good_records)
    assert len(m["events"]) == len(report.events)


def test_rerun_finished_other_settings_and_unfinished(tmp_path, capsys):
    from smartclip.cli import main
    csv_path = make_csv_dataset(tmp_path / "c", 10)
    out = str(tmp_path / "out")
    args = ["data", "prepare", csv_path, "--out", out, "--model", "smartclip-micro", "--workers", "1",
            "--shard-size", "4"]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert "10 samples in 3 shard(s)" in captured.out and "MiB per 1,000 samples" in captured.out
    assert "prepare: 10/10 records (100.0%)" in captured.err and "ETA" in captured.err  # progress, not a tty
    before = {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()}
    assert main(args) == 0
    assert "already prepared: 10 samples in 3 shard(s)" in capsys.readouterr().out
    assert {p.name: p.stat().st_mtime_ns for p in Path(out).iterdir()} == before
    for other in (["--shard-size", "5"], ["--model", "smartclip-tiny"], ["--store", "crop"]):
        assert main(args + other) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "was prepared with other settings" in err, err
    # a changed source is another setting too
    os.utime(csv_path, (1, 1))
    assert main(args) == 2 and "sources" in capsys.readouterr().err
    # a prepared folder is not a source: its images are already resized
    assert main(["data", "prepare", out, "--out", str(tmp_path / "again"), "--model", "smartclip-micro"]) == 2
    assert "is itself a prepared folder" in capsys.readouterr().err
    # a folder that is not a prepare folder is not written into
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "x.txt").write_text("x")
    assert main(args[:3] + ["--out", str(tmp_path / "other")] + args[5:]) == 2
    assert "not a prepare folder" in capsys.readouterr().err


def _run_prepare(source, out, workers=2, shard_size=3):
    env = dict(os.environ, PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", HF_HUB_OFFLINE="1",
               OMP_NUM_THREADS="1")
    return subprocess.Popen([sys.executable, "-m", "smartclip", "data", "prepare", source, "--out", out, "--model",
                             "smartclip-micro", "--workers", str(workers), "--shard-size", str(shard_size), "--quiet"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)


@pytest.mark.slow
def test_sigkill_then_rerun_writes_the_same_samples(tmp_path):
    from PIL import Image
    from data_fixtures import _photo
    # 40 photos of 1500 x 1000: each takes some milliseconds, so the kill lands mid-run.
    (tmp_path / "d" / "images").mkdir(parents=True)
    with open(tmp_path / "d" / "pairs.csv", "w") as f:
        f.write("filepath,title\n")
        for i in range(40):
            img = Image.fromarray(np.roll(np.asarray(_photo(i, (1500, 1000))), i * 7, 1))
            img.save(tmp_path / "d" / "images" / f"{i}.jpg", quality=90)
            f.write(f"images/{i}.jpg,Image {i} of the set. Second sentence.\n")
    source = str(tmp_path / "d" / "pairs.csv")
    whole = tmp_path / "whole"
    proc = _run_prepare(source, str(whole))
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()

    killed = tmp_path / "killed"
    proc = _run_prepare(source, str(killed))
    deadline = time.time() + 300
    while time.time() < deadline:  # kill once a shard is done and another is being written
        state = killed / ".prepare"
        if state.is_dir() and len(list(state.glob("0*.json"))) >= 1 and list(killed.glob("*.tmp")):
            break
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (killed / "manifest.json").exists(), "the run finished before the kill; the test proved nothing"
    with pytest.raises(DataError, match="unfinished"):  # training refuses the half-written folder
        build_train_data(DataConfig(train=str(killed), num_workers=0),
                         preprocess=smartclip.image_transform(smartclip.create_model("smartclip-micro")),
                         tokenizer=smartclip.get_tokenizer("smartclip-micro"), batch_size=2)
    proc = _run_prepare(source, str(killed), workers=3)  # another worker count: same shards
    assert proc.wait(timeout=300) == 0, proc.stderr.read().decode()
    assert not list(killed.glob("*.tmp"))
    a, b = (json.loads((d / "manifest.json").read_text()) for d in (whole, killed))
    assert a["shards"] == b["shards"] and a["counts"] == b["counts"] and a["written"] == 40
    for shard in a["shards"]:
        assert (whole / shard["name"]).read_bytes() == (killed / shard["name"]).read_bytes()


def test_training_refuses_another_recipe(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "c", 8)
    out = str(tmp_path / "out")
    prepare_dataset(DataConfig(train=csv_path), out, preprocess_cfg=micro_cfg(), shard_size=4, progress=False)
    # a prepared folder in a weighted mix with its own source: 16 samples, a third from the csv
    micro = smartclip.create_model("smartclip-micro")
    mixed = build_train_data(DataConfig(train=f"{csv_path}@1::{out}@2", num_workers=0, caption_mode="first"),
                             preprocess=smartclip.image_transform(micro), tokenizer=smartclip.get_tokenizer(micro),
                             batch_size=4, preprocess_cfg=micro.preprocess_cfg)
    assert len(mixed) == 4 and sum(len(b["texts"]) for b in mixed) == 16
    tiny = smartclip.create_model("smartclip-tiny")
    with pytest.raises(DataError) as err:
        build_train_data(DataConfig(train=f"{csv_path}@1::{out}@2", num_workers=0),
                         preprocess=smartclip.image_transform(tiny), tokenizer=smartclip.get_tokenizer(tiny),
                         batch_size=2, preprocess_cfg=tiny.preprocess_cfg)
    message = str(err.value)
    assert "\n" not in message and "32 px bicubic" in message and "64 px bicubic" in message
    # read from the transform when preprocess_cfg is not given
    with pytest.raises(DataError, match="64 px"):
        build_train_data(DataConfig(train=out, num_workers=0), preprocess=smartclip.image_transform(tiny),
                         tokenizer=smartclip.get_tokenizer(tiny), batch_size=2)
    with pytest.raises(DataError, match="bilinear"):
        build_train_data(DataConfig(train=out, num_workers=0), preprocess=smartclip.image_transform(tiny),
                         tokenizer=smartclip.get_tokenizer(tiny), batch_size=2,
                         preprocess_cfg=micro_cfg(interpolation="bilinear"))


@pytest.mark.slow
def test_sharegpt4v_layout_prepare_then_train_two_steps(tmp_path, monkeypatch, capsys):
    """The three ShareGPT4V image folders, the held-out first records, prepare, then `smartclip train`."""
    import smartclip.data.sources as sources
    from smartclip.cli import main
    monkeypatch.setattr(sources, "SHAREGPT4V_EVAL_SIZE", 3)  # the real split is 1,000 records
    data = tmp_path / "sharegpt4v"
    json_path = make_sharegpt4v_dataset(data, 12, eval_records=3, sources=("coco", "llava", "sam"))
    for sub in ("coco/train2017", "llava/llava_pretrain/images", "sam/images"):
        assert any((data / sub).iterdir())
    roots = f"coco={data / 'coco'},llava={data / 'llava'},sam={data / 'sam'}"
    out = tmp_path / "prepared"
    assert main(["data", "prepare", json_path, "--image-roots", roots, "--out", str(out), "--model",
                 "smartclip-tiny", "--workers", "2", "--shard-size", "5", "--quiet"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["written"] == 12 and manifest["records"] == 12  # records [:3] held out
    records = sorted(json.loads(g["json"])["record"] for _, g in _samples(out))
    assert records == list(range(3, 15))
    capsys.readouterr()
    run_dir = tmp_path / "run"
    code = main(["train", str(ROOT / "configs" / "tiny.yaml"), f"data.train={out}", "data.num_workers=0",
                 "train.steps=2", "train.global_batch=4", f"run_dir={run_dir}", "eval.specs=[]",
                 "train.progress=false"])
    assert code == 0
    assert (run_dir / "checkpoints").is_dir()
    # another model's image size is refused before any step
    code = main(["train", str(ROOT / "configs" / "tiny.yaml"), f"data.train={out}", "data.num_workers=0",
                 "model.name=smartclip-micro", "train.steps=2", "train.global_batch=4",
                 f"run_dir={tmp_path / 'run2'}", "eval.specs=[]", "train.progress=false"])
    assert code != 0
    assert "64 px bicubic" in capsys.readouterr().err
    assert not (tmp_path / "run2" / "checkpoints").exists()


# ------------------------------------------------------------------ data.decode: draft

def test_draft_decode_reduces_jpegs_only_to_twice_the_target(size_classes):
    from smartclip.data.images import draft_request
    path, captions = size_classes
    folder = Path(path).parent / "images"
    sam = load_image(folder / "sam.jpg", draft=(224, "shortest"))
    assert sam.size == (1125, 750)                      # 1/2 scale: 1/4 would give 375 < 2 x 224
    assert min(load_image(folder / "sam_portrait.jpg", draft=(224, "shortest")).size) == 750
    assert draft_request(2250, 1500, 224, "shortest") == (672, 448)
    assert draft_request(2250, 1500, 224, "squash") == (448, 448)
    assert draft_request(2250, 1500, [224, 224], "longest") == (448, 299)
    for name in ("coco.jpg", "lcs_large.jpg", "small.jpg", "alpha.png"):  # nothing to gain: decoded exactly
        exact, draft = load_image(folder / name), load_image(folder / name, draft=(224, "shortest"))
        assert np.array_equal(np.asarray(exact), np.asarray(draft))
    repairs = []
    assert load_image(folder / "cmyk.jpg", draft=(100, "shortest"), repairs=repairs).size == (320, 240)
    assert repairs == ["converted_cmyk"]
    # a 4x reduction when the target allows it: still at least twice the target
    assert load_image(folder / "sam.jpg", draft=(150, "shortest")).size == (563, 375)


def test_draft_decode_in_the_loader_is_opt_in_and_close(size_classes):
    path, captions = size_classes
    pre = micro_cfg(size=224)
    transform = image_transform_v2(PreprocessCfg(**pre), is_train=False)

    def images(decode, **kw):
        data = build_train_data(DataConfig(train=path, caption_mode="full", num_workers=0, decode=decode),
                                preprocess=transform, tokenizer=smartclip.get_tokenizer("smartclip-micro"),
                                batch_size=3, **kw)
        return {t: img for b in data for t, img in zip(b["texts"], b["images"])}
    exact, draft = images("exact"), images("draft", preprocess_cfg=pre)
    assert images("exact", preprocess_cfg=pre).keys() == exact.keys()
    differ = {t for t in exact if not torch.equal(exact[t], draft[t])}
    assert differ == {captions["sam"], captions["sam_portrait"]}  # only the images large enough to reduce
    std = torch.tensor(pre["std"]).view(3, 1, 1) * 255
    for t in differ:
        step = ((exact[t] - draft[t]).abs() * std)
        assert step.mean() < 1.0 and step.max() < 40  # close, in 0-255 steps
    assert DataConfig(train=path).decode == "exact"
    with pytest.raises(ValueError, match="data.decode='fast'"):
        DataConfig(train=path, decode="fast").validate()


def test_resize_modes_that_cannot_be_stored_exactly_are_refused(tmp_path):
    csv_path = make_csv_dataset(tmp_path / "c", 2)
    for pre in (micro_cfg(resize_mode="longest"), micro_cfg(size=[32, 48])):
        with pytest.raises(DataError, match="not idempotent"):
            prepare_dataset(DataConfig(train=csv_path), str(tmp_path / "out"), preprocess_cfg=pre, progress=False)
    assert not (tmp_path / "out").exists()
