"""Every benchmark end to end through `smartclip eval` on fixtures written in each dataset's
published layout (tiny, real images), checked against a direct computation from the same
files; plus missing data, partial results, result files, --compare and the registry."""
import json
import pickle
import sys
import types

import numpy as np
import pytest
import torch

import smartclip
from clip_benchmark_fixtures import write_imagenet_val
from conftest import real_images
from smartclip.cli import main
from smartclip.eval import (DatasetFormatError, DatasetNotFoundError, IncompleteBenchmarkError, build_classifier, classify,
                            encode_images, encode_texts, evaluate, get_benchmark, imagenet_classnames,
                            list_benchmarks, read_results, register_benchmark, retrieval_recall)

CAPTIONS = ["an astronaut in a white suit", "a cup of coffee on a saucer", "a tabby cat looking up",
            "a rocket on the launch pad", "a stained tissue under a microscope", "galaxies in deep space"]


def _save(images, folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for im, name in zip(images, names):
        im.save(folder / name)


def write_fixtures(root, with_imagenet: bool = False):
    """Every dataset in its own layout under one data root; returns what each should contain
    as (image paths, captions, text_to_image) or (image paths, labels, classnames). ImageNet's
    1,000 class folders only ``with_imagenet``."""
    ims = real_images(6, 48)
    expected = {}

    # ShareGPT4V: json array; first N records; gpt turn is the caption; images under the root
    records = []
    for i in range(5):
        records.append({"id": str(i), "image": f"coco/train2017/{i:012d}.jpg", "conversations": [
            {"from": "human", "value": "<image>\nWhat is in the image?"},
            {"from": "gpt", "value": f"{CAPTIONS[i]}.\nIt is a long caption number {i}."}]})
    (root / "sharegpt4v").mkdir()
    (root / "sharegpt4v" / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps(records, indent=1))
    _save(ims[:5], root / "sharegpt4v" / "coco" / "train2017", [f"{i:012d}.jpg" for i in range(5)])
    expected["sharegpt4v-1k"] = ([root / "sharegpt4v" / r["image"] for r in records[:4]],
                                 [f"{CAPTIONS[i]}. It is a long caption number {i}." for i in range(4)], [0, 1, 2, 3])

    # Urban1k: image/<stem>.jpg + caption/<stem>.txt
    u = root / "Urban1k"
    _save(ims[:4], u / "image", [f"{i}.jpg" for i in range(1, 5)])
    (u / "caption").mkdir()
    for i in range(1, 5):
        (u / "caption" / f"{i}.txt").write_text(CAPTIONS[i - 1] + " in a city.\n")
    expected["urban1k"] = ([u / "image" / f"{i}.jpg" for i in range(1, 5)],
                           [CAPTIONS[i] + " in a city." for i in range(4)], [0, 1, 2, 3])

    # DCI: densely_captioned_images/{splits.json, annotations/, photos/}
    d = root / "dci" / "densely_captioned_images"
    (d / "annotations").mkdir(parents=True)
    _save(ims[:3], d / "photos", [f"sa_{i}.jpg" for i in range(3)])
    for i in range(3):
        (d / "annotations" / f"sa_{i}.json").write_text(json.dumps(
            {"image": f"sa_{i}.jpg", "short_caption": CAPTIONS[i], "extra_caption": f"More detail {i}.",
             "mask_data": {}}))
    (d / "splits.json").write_text(json.dumps({"train": ["sa_0.json", "sa_1.json"], "test": ["sa_2.json"]}))
    expected["dci"] = ([d / "photos" / f"sa_{i}.jpg" for i in range(3)],
                       [f"{CAPTIONS[i]}\nMore detail {i}." for i in range(3)], [0, 1, 2])
    # Long-DCI: the same release, extra_caption alone (tests/test_long_dci.py covers its rules)
    expected["long-dci"] = ([d / "photos" / f"sa_{i}.jpg" for i in range(3)], [f"More detail {i}." for i in range(3)],
                            [0, 1, 2])

    # DOCCI: docci_descriptions.jsonlines + images/
    o = root / "docci"
    _save(ims[:4], o / "images", [f"test_{i:05d}.jpg" for i in range(4)])
    lines = [{"example_id": f"test_{i:05d}", "split": "test" if i != 1 else "train", "image_file": f"test_{i:05d}.jpg",
              "description": CAPTIONS[i] + ", described at length."} for i in range(4)]
    o.joinpath("docci_descriptions.jsonlines").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    expected["docci"] = ([o / "images" / f"test_{i:05d}.jpg" for i in (0, 2, 3)],
                         [CAPTIONS[i] + ", described at length." for i in (0, 2, 3)], [0, 1, 2])

    # COCO: annotations/captions_val2017.json + val2017/; image 1 has 6 captions (first 5 used)
    c = root / "coco"
    names = [f"{i:012d}.jpg" for i in (139, 285, 632)]
    _save(ims[:3], c / "val2017", names)
    anns, caps, t2i = [], [], []
    for k, image_id in enumerate((139, 285, 632)):
        n = 6 if k == 1 else 5
        for j in range(n):
            anns.append({"id": len(anns), "image_id": image_id, "caption": f"{CAPTIONS[k]}, view {j}"})
            if j < 5:
                caps.append(f"{CAPTIONS[k]}, view {j}")
                t2i.append(k)
    (c / "annotations").mkdir()
    (c / "annotations" / "captions_val2017.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f"{i:012d}.jpg"} for i in (139, 285, 632)], "annotations": anns[::-1]}))
    # annotation order reversed in the file: captions are taken in file order per image
    caps_file_order = []
    for k, image_id in enumerate((139, 285, 632)):
        own = [a["caption"] for a in anns[::-1] if a["image_id"] == image_id][:5]
        caps_file_order.extend(own)
    expected["coco"] = ([c / "val2017" / n for n in names], caps_file_order, t2i)

    # Flickr30k: results_20130124.token, dataset_flickr30k.json, flickr30k-images/
    f = root / "flickr30k"
    fnames = ["1000092795.jpg", "10002456.jpg", "1000268201.jpg", "1000344755.jpg"]
    _save(ims[:4], f / "flickr30k-images", fnames)
    token_lines, fcaps, ft2i = [], [], []
    for k, name in enumerate(fnames):
        for j in range(5):
            token_lines.append(f"{name}#{j}\t{CAPTIONS[k]} , number {j} .")
            fcaps.append(f"{CAPTIONS[k]} , number {j} .")
            ft2i.append(k)
    (f / "results_20130124.token").write_text("\n".join(token_lines) + "\n")
    expected["flickr30k"] = ([f / "flickr30k-images" / n for n in fnames], fcaps, ft2i)
    (f / "dataset_flickr30k.json").write_text(json.dumps({"images": [
        {"filename": n, "split": "test" if k in (1, 3) else "train",
         "sentences": [{"raw": f"Karpathy {CAPTIONS[k]} {j}", "tokens": []} for j in range(5)]}
        for k, n in enumerate(fnames)], "dataset": "flickr30k"}))
    expected["flickr30k-karpathy"] = ([f / "flickr30k-images" / fnames[k] for k in (1, 3)],
                                      [f"Karpathy {CAPTIONS[k]} {j}" for k in (1, 3) for j in range(5)],
                                      [0] * 5 + [1] * 5)

    # ImageNet: val/<wnid>/ with the 1,000 WordNet-id folders (one small image each, photos in three)
    if with_imagenet:
        written = write_imagenet_val(root / "imagenet", with_images={0: 1, 7: 1, 999: 1})
        expected["imagenet"] = (written["files"], written["labels"], imagenet_classnames())

    # ImageNet-V2: imagenetv2-matched-frequency-format-val/<class index>/*.jpeg
    v = root / "imagenetv2" / "imagenetv2-matched-frequency-format-val"
    vpaths, vlabels = [], []
    for label, i in ((3, 0), (42, 4), (500, 5)):
        (v / str(label)).mkdir(parents=True)
        p = v / str(label) / f"{i}abc.jpeg"
        ims[i].save(p, format="JPEG")
        vpaths.append(p)
        vlabels.append(label)
    expected["imagenet-v2"] = (vpaths, vlabels, imagenet_classnames())

    # CIFAR python archives as Python 2 wrote them (str keys once read with latin1): data [N, 3072] as R, G, B
    # planes. torchvision checks the archive's MD5 sums, which only the real files match: the tests that read
    # these fixtures lift that check (cifar_checksums_lifted).
    arrays = [np.asarray(im.resize((32, 32))) for im in ims[:5]]
    data = np.stack([a.transpose(2, 0, 1).reshape(-1) for a in arrays]).astype(np.uint8)
    c10 = root / "cifar" / "cifar-10-batches-py"
    c10.mkdir(parents=True)
    names10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(c10 / "test_batch", "wb") as fh:
        pickle.dump({"batch_label": "testing batch 1 of 1", "labels": [3, 0, 8, 9, 1], "data": data,
                     "filenames": ["a.png"] * 5}, fh, protocol=2)
    with open(c10 / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": names10, "num_vis": 3072}, fh, protocol=2)
    expected["cifar10"] = (arrays, [3, 0, 8, 9, 1], names10)
    c100 = root / "cifar" / "cifar-100-python"
    c100.mkdir(parents=True)
    names100 = [f"class_{i}" for i in range(100)]
    with open(c100 / "test", "wb") as fh:
        pickle.dump({"fine_labels": [5, 99, 0, 12, 50], "coarse_labels": [0] * 5, "data": data}, fh, protocol=2)
    with open(c100 / "meta", "wb") as fh:
        pickle.dump({"fine_label_names": names100, "coarse_label_names": []}, fh, protocol=2)
    expected["cifar100"] = (arrays, [5, 99, 0, 12, 50], [f"class {i}" for i in range(100)])
    return expected


SIZES = {"sharegpt4v-1k": 4, "urban1k": 4, "dci": 3, "long-dci": 3, "docci": 3, "coco": 3, "flickr30k": 4,
         "flickr30k-karpathy": 2, "imagenet": 1003, "imagenet-v2": 3, "cifar10": 5, "cifar100": 5}
FAST_TEMPLATES = ["a photo of a {}.", "itap of a {}."]  # ImageNet's 1,000 x 80 prompts are slow on CPU


@pytest.fixture()
def cifar_checksums_lifted(monkeypatch):
    import torchvision.datasets.cifar
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args, **kwargs: True)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return root, write_fixtures(root, with_imagenet=True)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro").eval()
    return smartclip.save_checkpoint(model, tmp_path_factory.mktemp("ckpt") / "micro")


def _settings(names):
    out = []
    for name in names:
        out += ["--set", f"{name}.expected_images={SIZES[name]}"]
    out += ["--set", "sharegpt4v-1k.count=4"] if "sharegpt4v-1k" in names else []
    for name in ("imagenet", "imagenet-v2"):
        if name in names:
            out += ["--set", f"{name}.templates={json.dumps(FAST_TEMPLATES)}"]
    return out


@pytest.mark.slow
def test_every_paper_benchmark_end_to_end_through_the_cli(data_root, checkpoint, tmp_path, capsys,
                                                          cifar_checksums_lifted):
    root, expected = data_root
    names = list(SIZES)
    out = tmp_path / "out"
    code = main(["eval", "--model", str(checkpoint), "--benchmarks", *names, "--data-root", str(root),
                 "--out", str(out), "--device", "cpu", "--workers", "0", "--no-progress", "--batch-size", "4",
                 *_settings(names)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    files = list(out.glob("eval_*.json"))
    assert len(files) == 1 and files[0].with_suffix(".md").is_file()
    run = read_results(files[0])
    model, preprocess, tokenizer = smartclip.load(str(checkpoint))
    assert run["checkpoint_hash"] == smartclip.state_dict_hash(model)
    assert run["context_length"] == 248 and run["model"] == str(checkpoint)
    for name in names:
        result = run["results"][name]
        assert result["benchmark"] == name and not result["partial"] and result["missing"] == []
        assert "SIZE OVERRIDDEN" in result["protocol"]  # fixtures are subsets: the protocol says so
        assert name in printed
        if name.startswith(("imagenet", "cifar")):
            paths, labels, classnames = expected[name]
            templates = FAST_TEMPLATES if name.startswith("imagenet") else None
            clf = build_classifier(model, tokenizer, classnames, templates)
            direct = classify(encode_images(model, preprocess, paths, batch_size=3), labels, clf, ks=(1, 5))
            assert result["counts"]["images"] == len(paths)
            assert result["counts"]["classes"] == len(classnames)
            assert result["counts"]["templates"] == (2 if templates else 80)
            assert result["zeroshot"]["read_as"].startswith("clip_benchmark build_dataset")
            assert result["metrics"] == pytest.approx(direct), name
        else:
            paths, captions, t2i = expected[name]
            direct = retrieval_recall(encode_images(model, preprocess, paths, batch_size=3),
                                      encode_texts(model, tokenizer, captions), t2i)
            assert result["counts"]["images"] == len(paths) and result["counts"]["texts"] == len(captions), name
            assert result["metrics"] == pytest.approx(direct), name
    # the Markdown table lists every benchmark with its protocol
    md = files[0].with_suffix(".md").read_text()
    for name in names:
        assert f"| {name} |" in md and f"**{name}**" in md


def test_generic_retrieval_csv_and_class_folders(tmp_path, checkpoint, micro_model):
    ims = real_images(5, 40)
    (tmp_path / "imgs").mkdir()
    for i, im in enumerate(ims[:3]):
        im.save(tmp_path / "imgs" / f"{i}.png")
    rows = ["image,caption", "imgs/0.png,an astronaut", "imgs/1.png,a cup of coffee", "imgs/0.png,\"a person, in space\"",
            "imgs/2.png,a cat"]
    (tmp_path / "pairs.csv").write_text("\n".join(rows) + "\n")
    for cls, idx in (("tabby_cat", [2, 3]), ("space_rocket", [4])):
        (tmp_path / "classes" / cls).mkdir(parents=True)
        for i in idx:
            ims[i].save(tmp_path / "classes" / cls / f"{i}.jpg")
    model, preprocess, tokenizer = smartclip.load(str(checkpoint))
    res = evaluate(model, [f"retrieval:{tmp_path / 'pairs.csv'}", f"classification:{tmp_path / 'classes'}"],
                   progress=False, batch_size=2)
    r = res[f"retrieval:{tmp_path / 'pairs.csv'}"]
    assert r["counts"]["images"] == 3 and r["counts"]["texts"] == 4
    paths = [tmp_path / "imgs" / f"{i}.png" for i in range(3)]
    direct = retrieval_recall(encode_images(model, preprocess, paths),
                              encode_texts(model, tokenizer, ["an astronaut", "a person, in space", "a cup of coffee",
                                                              "a cat"]), [0, 0, 1, 2])
    assert r["metrics"] == pytest.approx(direct)
    c = res[f"classification:{tmp_path / 'classes'}"]
    assert c["counts"] == {**c["counts"], "images": 3, "classes": 2, "templates": 80}
    clf = build_classifier(model, tokenizer, ["space rocket", "tabby cat"])  # sorted folders, '_' as space
    direct = classify(encode_images(model, preprocess, [tmp_path / "classes" / "space_rocket" / "4.jpg",
                                                        tmp_path / "classes" / "tabby_cat" / "2.jpg",
                                                        tmp_path / "classes" / "tabby_cat" / "3.jpg"]),
                      [0, 1, 1], clf, ks=(1,))
    assert c["metrics"]["top1"] == pytest.approx(direct["top1"])
    # a class-names file renames the classes
    (tmp_path / "classes" / "classnames.txt").write_text("space_rocket\ta rocket\ntabby_cat\ta cat\n")
    assert get_benchmark(f"classification:{tmp_path / 'classes'}")._load().classnames == ["a rocket", "a cat"]
    bad = tmp_path / "bad.csv"
    bad.write_text("path,text\na.png,b\n")
    with pytest.raises(Exception, match=r"bad.csv: header must name an image column"):
        get_benchmark(f"retrieval:{bad}")._load()


def test_missing_images_refused_then_partial(tmp_path, checkpoint, capsys):
    root = tmp_path
    write_fixtures(root)
    (root / "coco" / "val2017" / "000000000285.jpg").unlink()
    (root / "Urban1k" / "caption" / "2.txt").unlink()
    base = ["eval", "--model", str(checkpoint), "--benchmarks", "coco", "urban1k", "--data-root", str(root),
            "--workers", "0", "--no-progress", "--device", "cpu", *_settings(["coco", "urban1k"])]
    assert main(base) == 2
    err = capsys.readouterr().err
    assert "coco: 1 missing item(s)" in err and "val2017/000000000285.jpg" in err and "--allow-partial" in err
    assert main(base + ["--allow-partial", "--out", str(tmp_path / "o")]) == 0
    printed = capsys.readouterr().out
    assert "PARTIAL (1 missing)" in printed
    run = read_results(next((tmp_path / "o").glob("eval_*.json")))
    coco, urban = run["results"]["coco"], run["results"]["urban1k"]
    assert coco["partial"] and coco["missing"] == ["val2017/000000000285.jpg"]
    assert coco["counts"]["images"] == 2 and coco["counts"]["texts"] == 10
    assert urban["partial"] and urban["missing"] == ["image/2.jpg (no caption)"]
    assert urban["counts"]["images"] == 3


def test_unreadable_image_and_incomplete_protocol(tmp_path, micro_model):
    write_fixtures(tmp_path)
    (tmp_path / "docci" / "images" / "test_00002.jpg").write_bytes(b"not a jpeg")
    bench = get_benchmark("docci", root=str(tmp_path), expected_images=3)
    tok, pre = smartclip.get_tokenizer(micro_model), smartclip.image_transform(micro_model)
    with pytest.raises(IncompleteBenchmarkError, match=r"images/test_00002.jpg \(unreadable: UnidentifiedImageError"):
        bench.run(micro_model, tokenizer=tok, preprocess=pre, progress=False)
    r = bench.run(micro_model, tokenizer=tok, preprocess=pre, progress=False, allow_partial=True)
    assert r["partial"] and r["counts"]["images"] == 2
    # without the size override the protocol's 5,000 test images are expected
    with pytest.raises(IncompleteBenchmarkError, match="4997 of the protocol's 5000 images are not listed"):
        get_benchmark("docci", root=str(tmp_path)).run(micro_model, tokenizer=tok, preprocess=pre, progress=False)


def test_missing_root_names_layout_and_source(tmp_path, monkeypatch):
    monkeypatch.delenv("SMARTCLIP_DATA", raising=False)
    monkeypatch.delenv("SMARTCLIP_COCO_ROOT", raising=False)
    with pytest.raises(DatasetNotFoundError, match="--data-root DIR or SMARTCLIP_DATA"):
        get_benchmark("coco")
    with pytest.raises(DatasetNotFoundError, match=r"(?s)Expected under .*annotations/captions_val2017.json.*"
                                                    r"cocodataset.org"):
        get_benchmark("coco", root=str(tmp_path))
    (tmp_path / "Urban1k").mkdir()
    with pytest.raises(DatasetNotFoundError, match=r"(?s)folder not found: .*Urban1k/image.*huggingface.co"):
        get_benchmark("urban1k", root=str(tmp_path))._load()
    # an explicit path and the per-dataset variable win over the data root
    monkeypatch.setenv("SMARTCLIP_COCO_ROOT", str(tmp_path / "elsewhere"))
    with pytest.raises(DatasetNotFoundError, match="elsewhere"):
        get_benchmark("coco", root=str(tmp_path))
    with pytest.raises(DatasetNotFoundError, match="explicit"):
        get_benchmark(f"coco:{tmp_path / 'explicit'}", root=str(tmp_path))
    with pytest.raises(KeyError, match="unknown benchmark 'cocoa'"):
        get_benchmark("cocoa")


def test_malformed_annotations_name_file_record_field(tmp_path):
    write_fixtures(tmp_path)
    f = tmp_path / "flickr30k" / "results_20130124.token"
    f.write_text(f.read_text() + "broken line without tab\n")
    with pytest.raises(Exception, match=r"results_20130124.token line 21: expected"):
        get_benchmark("flickr30k", root=str(tmp_path))._load()
    s = tmp_path / "sharegpt4v" / "share-captioner_coco_lcs_sam_1246k_1107.json"
    recs = json.loads(s.read_text())
    del recs[1]["image"]
    s.write_text(json.dumps(recs))
    with pytest.raises(Exception, match=r"record 1: missing field 'image'"):
        get_benchmark("sharegpt4v-1k", root=str(tmp_path))._load()
    # a tampered CIFAR pickle fails torchvision's MD5 check before anything is unpickled
    evil = tmp_path / "cifar" / "cifar-10-batches-py" / "test_batch"
    evil.write_bytes(pickle.dumps(types.SimpleNamespace(a=1)))
    model = smartclip.create_model("smartclip-micro")
    with pytest.raises(DatasetFormatError, match="(?s)integrity check.*cifar-10-batches-py"):
        get_benchmark("cifar10", root=str(tmp_path)).run(model, tokenizer=None, preprocess=None, progress=False)


def test_sharegpt4v_head_reader_streams(tmp_path):
    from smartclip.eval.datasets import read_json_array_head
    records = [{"i": i, "text": "x" * (i * 37 % 500), "nested": [1, {"a": "]"}]} for i in range(300)]
    p = tmp_path / "big.json"
    p.write_text(json.dumps(records, indent=2))
    assert read_json_array_head(p, 250, chunk_chars=64) == records[:250]
    assert read_json_array_head(p, 1000, chunk_chars=100) == records


def test_feature_cache_keyed_by_weights(tmp_path, data_root):
    root, _ = data_root
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro").eval()
    cache_dir = tmp_path / "cache"
    opts = {"urban1k": {"expected_images": 4}}
    first = evaluate(model, ["urban1k"], root=str(root), cache_dir=cache_dir, options=opts, progress=False)
    files = sorted(cache_dir.rglob("*.safetensors"))
    assert len(files) == 2 and files[0].parent.name == smartclip.state_dict_hash(model)
    stamps = [f.stat().st_mtime_ns for f in files]
    again = evaluate(model, ["urban1k"], root=str(root), cache_dir=cache_dir, options=opts, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps  # read, not recomputed
    assert again["urban1k"]["metrics"] == first["urban1k"]["metrics"]
    with torch.no_grad():
        model.visual.proj.mul_(-1)  # new weights -> new hash -> new features
    evaluate(model, ["urban1k"], root=str(root), cache_dir=cache_dir, options=opts, progress=False)
    assert len(list(cache_dir.iterdir())) == 2


def test_evaluate_restores_training_mode(data_root):
    root, _ = data_root
    model = smartclip.create_model("smartclip-micro").train()
    evaluate(model, ["urban1k"], root=str(root), options={"urban1k": {"expected_images": 4}}, progress=False)
    assert model.training


def test_compare_side_by_side(tmp_path, capsys):
    def run(hash_, value, protocol="P", partial=False):
        return {"format": "smartclip-eval-v1", "model": "m", "checkpoint_hash": hash_, "context_length": 248,
                "results": {"coco": {"benchmark": "coco", "protocol": protocol, "partial": partial, "missing": [],
                                     "metrics": {"i2t@1": value, "t2i@1": 1.0}, "counts": {}}}}
    (tmp_path / "a.json").write_text(json.dumps(run("aaaa1111", 50.0)))
    (tmp_path / "b.json").write_text(json.dumps(run("bbbb2222", 61.9, protocol="Q")))
    assert main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    assert "| coco (protocols differ) | i2t@1 | 50.00 | 61.90 | +11.90 |" in out
    (tmp_path / "c.json").write_text("{}")
    assert main(["eval", "--compare", str(tmp_path / "a.json"), str(tmp_path / "c.json")]) == 2
    assert "not a smartclip eval results file" in capsys.readouterr().err


def test_registry_lists_paper_benchmarks_and_scenes_is_lazy(tmp_path, monkeypatch, capsys):
    names = list_benchmarks()
    for n in ["sharegpt4v-1k", "urban1k", "dci", "long-dci", "docci", "coco", "flickr30k", "flickr30k-karpathy",
              "imagenet", "imagenet-v2", "cifar10", "cifar100", "retrieval:PATH", "classification:DIR", "scenes:DIR"]:
        assert n in names
    assert main(["eval", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "results_20130124.token" in listing and "SMARTCLIP_COCO_ROOT" in listing
    calls = []
    fake = types.ModuleType("smartclip.scenes.evaluate")
    fake.SceneBenchmark = lambda root_dir, **options: calls.append((root_dir, options)) or "bench"
    monkeypatch.setitem(sys.modules, "smartclip.scenes.evaluate", fake)
    assert get_benchmark(f"scenes:{tmp_path}", seed=3) == "bench"
    assert calls == [(str(tmp_path), {"seed": 3})]
    from smartclip.eval import registry
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_benchmark("toy", lambda root, **o: ("toy", root, o), "a toy", folder="toys")
    assert get_benchmark("toy", root=str(tmp_path), k=1) == ("toy", tmp_path / "toys", {"k": 1})


def test_masked_scoring_through_the_runner(data_root, micro_model):
    root, expected = data_root
    paths, captions, t2i = expected["urban1k"]
    res = evaluate(micro_model, ["urban1k"], root=str(root), progress=False,
                   options={"urban1k": {"expected_images": 4, "masked": True}})["urban1k"]
    assert "masked scoring" in res["protocol"]
    tok, pre = smartclip.get_tokenizer(micro_model), smartclip.image_transform(micro_model)
    with torch.no_grad():
        masks = micro_model.text_mask(tok(captions), soft=False)
    direct = retrieval_recall(encode_images(micro_model, pre, paths), encode_texts(micro_model, tok, captions), t2i,
                              text_masks=masks)
    assert res["metrics"] == pytest.approx(direct)
    micro_model.mask_trained = False  # a plain CLIP's mask network means nothing: refused
    with pytest.raises(ValueError, match="mask network was trained"):
        evaluate(micro_model, ["urban1k"], root=str(root), progress=False,
                 options={"urban1k": {"expected_images": 4, "masked": True}})
