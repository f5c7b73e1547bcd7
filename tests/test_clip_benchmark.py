"""CLIP_benchmark's classification datasets through `smartclip eval`: the same numbers as
CLIP_benchmark's own code path on fixtures in the real layouts, the paper's Table 3 suite,
metrics against CLIP_benchmark's definitions, no downloads, and bad input by kind."""
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch

import smartclip
from clip_benchmark_fixtures import (FER_FOLDERS, write_fer2013, write_fgvc_aircraft, write_gtsrb, write_sun397,
                                     write_voc2007, write_wds)
from smartclip.cli import main
from smartclip.eval import (CLIP_BENCHMARK_DATASETS, DatasetFormatError, DatasetNotFoundError,
                            IncompleteBenchmarkError, average_precision_per_class, evaluate, get_benchmark,
                            list_benchmarks, mean_per_class_recall, openai_templates, read_results)
from smartclip.eval.clip_benchmark import PAPER_TABLE3, ClipBenchmarkClassification
from smartclip.eval.clip_benchmark_compat import no_downloads


# ----------------------------------------------------------------------------- metrics
def test_metrics_follow_clip_benchmark_definitions():
    from clip_benchmark.metrics.zeroshot_classification import average_precision_per_class as cb_ap
    from sklearn.metrics import balanced_accuracy_score
    from smartclip.eval import classify, classify_multilabel
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 12, generator=g)
    labels = torch.randint(0, 12, (200,), generator=g)
    labels[labels == 11] = 3  # a class with no samples: left out of the per-class mean, as scikit-learn does
    pred = logits.argmax(1)
    assert mean_per_class_recall(pred == labels, labels) == pytest.approx(
        100 * balanced_accuracy_score(labels, pred), abs=1e-9)
    # top-K and per-class recall from a classifier whose logits are exactly these
    weights = torch.eye(12)
    ours = classify(logits, labels, {"weights": weights}, ks=(1, 5))
    top = logits.topk(5, 1).indices
    assert ours["top1"] == pytest.approx(100 * (top[:, 0] == labels).double().mean().item())
    assert ours["top5"] == pytest.approx(100 * (top == labels[:, None]).any(1).double().mean().item())
    # cosine logits: classify normalises the features, so compare on normalised inputs
    normalised = torch.nn.functional.normalize(logits, dim=-1)
    assert classify(normalised, labels, {"weights": weights})["mean_per_class_recall"] == pytest.approx(
        100 * balanced_accuracy_score(labels, normalised.argmax(1)))
    targets = (torch.rand(200, 12, generator=g) < 0.2).float()
    targets[:, 7] = 0  # a class without positives counts as AP 0, as CLIP_benchmark does
    assert torch.allclose(average_precision_per_class(logits, targets), 100 * cb_ap(logits, targets).double(),
                          atol=1e-5)
    assert classify_multilabel(normalised, targets, {"weights": weights})["mAP"] == pytest.approx(
        100 * cb_ap(100 * normalised, targets).mean().item(), abs=1e-4)


def test_ties_count_against_the_model():
    labels = torch.tensor([0, 1])
    tied = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    assert mean_per_class_recall(torch.tensor([False, False]), labels) == 0.0
    ap = average_precision_per_class(tied, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    assert ap.tolist() == [50.0, 50.0]  # each positive shares its rank with a negative


# ------------------------------------------------------------------- CLIP_benchmark's own path
def _clip_benchmark_reference(export_dir, name, root, batch_size=8):
    """What CLIP_benchmark computes: the exported model loaded with open_clip, its dataset
    builder, zero_shot_classifier and run_classification (no AMP: fp32 like ours), and its
    metric definitions (its `accuracy` helper fails under numpy 2: written out here)."""
    import open_clip
    from clip_benchmark.datasets.builder import build_dataset, get_dataset_collate_fn
    from clip_benchmark.metrics.zeroshot_classification import (average_precision_per_class as cb_ap,
                                                                run_classification, zero_shot_classifier)
    from sklearn.metrics import balanced_accuracy_score
    model, _, transform = open_clip.create_model_and_transforms(f"local-dir:{export_dir}")
    model.eval()
    tokenizer = open_clip.get_tokenizer(f"local-dir:{export_dir}")
    ds = build_dataset(name, root=str(root), transform=transform, split="test", download=False,
                       task="zeroshot_classification")
    if name.startswith("wds/"):
        loader = torch.utils.data.DataLoader(ds.batched(batch_size), batch_size=None)
    else:
        loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, collate_fn=get_dataset_collate_fn(name))
    classifier = zero_shot_classifier(model, tokenizer, ds.classes, ds.templates, "cpu", amp=False)
    logits, target = run_classification(model, classifier, loader, "cpu", amp=False)
    if target.dim() == 2:
        return {"mAP": cb_ap(logits, target).mean().item()}
    ks = (1, 5) if len(ds.classes) >= 5 else (1,)
    pred = logits.topk(max(ks), 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    out = {f"top{k}": correct[:k].reshape(-1).float().sum().item() / len(target) for k in ks}
    out["mean_per_class_recall"] = balanced_accuracy_score(target, logits.argmax(1))
    return out


def content_dependent_micro_model():
    """A random micro model whose image features differ from image to image: at
    initialisation they share one dominant direction (cosine ~0.998 between any two images),
    so every image gets the same class and a parity check would hold trivially. That
    direction, measured on a few real photos, is projected out of ``visual.proj``."""
    from clip_benchmark_fixtures import digit
    from conftest import real_images
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro").eval()
    preprocess = smartclip.image_transform(model, train=False)
    proj = model.visual.proj.data.clone()
    with torch.no_grad():
        model.visual.proj.data = torch.eye(proj.shape[0])
        pooled = model.visual(torch.stack([preprocess(im) for im in real_images(6, 64)]
                                          + [preprocess(digit(i)) for i in range(200, 230)]))
        common = pooled.mean(0, keepdim=True)
        model.visual.proj.data = proj - common.T @ (common @ proj) / (common @ common.T)
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A micro model saved as our checkpoint and exported with `smartclip export --format open_clip`."""
    model = content_dependent_micro_model()
    base = tmp_path_factory.mktemp("model")
    checkpoint = smartclip.save_checkpoint(model, base / "micro")
    assert main(["export", str(checkpoint), "--format", "open_clip", "--out", str(base / "open_clip")]) == 0
    return checkpoint, base / "open_clip"


@pytest.fixture(scope="module")
def paper_root(tmp_path_factory):
    """Seven of the paper's nine sets under one data root, in the layouts users have: country211
    in CLIP_benchmark's WebDataset layout, the others in their torchvision layouts."""
    root = tmp_path_factory.mktemp("paper")
    write_wds(root / "wds_country211", 24)
    write_fer2013(root / "fer2013")
    write_fgvc_aircraft(root / "fgvc_aircraft")
    write_gtsrb(root / "gtsrb")
    write_sun397(root / "sun397")
    write_voc2007(root / "voc2007")
    write_voc2007(root / "voc2007_multilabel")
    write_wds(root / "multilabel" / "wds_voc2007_multilabel", 18, shards=2, multilabel=True)
    return root


@pytest.mark.slow
def test_paper_suite_gives_clip_benchmarks_numbers_beside_the_papers(exported, paper_root, tmp_path, capsys):
    checkpoint, export_dir = exported
    multilabel_wds = f"clip_benchmark/wds/voc2007_multilabel:{paper_root / 'multilabel' / 'wds_voc2007_multilabel'}"
    args = ["eval", "--model", str(checkpoint), "--benchmarks", "paper-zeroshot", multilabel_wds,
            "--data-root", str(paper_root), "--out", str(tmp_path), "--device", "cpu", "--workers", "0",
            "--batch-size", "8", "--no-progress", "--set", "paper-zeroshot.expected_images=null",
            "--set", f"{multilabel_wds}.expected_images=null"]
    # two of the nine are absent: refused, naming both layouts and paths looked for ...
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "no data for 2 of 10 benchmarks" in err and "also missing: imagenetv2" in err and "--allow-partial" in err
    assert "imagenet1k: neither" in err and str(paper_root / "wds_imagenet1k") in err
    assert main(args + ["--verbose"]) == 2  # every missing set with both layouts
    err = capsys.readouterr().err
    assert "imagenet1k: neither" in err and "val/<wnid>" in err and "imagenetv2: neither" in err
    # ... and with partial results allowed, the others run and the absent ones are shown as not run
    assert main(args + ["--allow-partial"]) == 0
    run = read_results(next(tmp_path.glob("eval_*.json")))
    results = run["results"]
    read_as = {
        "clip_benchmark/wds/country211": ("wds/country211", paper_root / "wds_country211"),
        "clip_benchmark/fer2013": ("fer2013", paper_root / "fer2013"),
        "clip_benchmark/fgvc_aircraft": ("fgvc_aircraft", paper_root / "fgvc_aircraft"),
        "clip_benchmark/gtsrb": ("gtsrb", paper_root / "gtsrb"),
        "clip_benchmark/sun397": ("sun397", paper_root / "sun397"),
        "clip_benchmark/voc2007": ("voc2007", paper_root / "voc2007"),
        "clip_benchmark/voc2007_multilabel": ("voc2007_multilabel", paper_root / "voc2007_multilabel"),
        multilabel_wds: ("wds/voc2007_multilabel", paper_root / "multilabel" / "wds_voc2007_multilabel"),
    }
    assert set(results) == set(read_as) | {"clip_benchmark/wds/imagenet1k", "clip_benchmark/wds/imagenetv2"}
    for key, (name, root) in read_as.items():
        result = results[key]
        assert not result["partial"] and result["missing"] == [] and result["counts"]["problems"] == {}, key
        reference = _clip_benchmark_reference(export_dir, name, root)
        assert set(result["metrics"]) == set(reference), key
        for metric, value in reference.items():
            assert result["metrics"][metric] / 100 == pytest.approx(value, abs=1e-6), (key, metric)
        assert result["zeroshot"]["clip_benchmark_version"] == "1.6.2"
    for key in ("clip_benchmark/wds/imagenet1k", "clip_benchmark/wds/imagenetv2"):
        assert results[key]["partial"] and results[key]["metrics"] == {} and "neither" in results[key]["missing"][0]
    # the paper's numbers beside ours, with the protocol
    assert results["clip_benchmark/sun397"]["paper"] == {
        "source": "SmartCLIP (CVPR 2025) Table 3: ViT-L/14, zero-shot with CLIP_benchmark", "metric": "top1",
        "SmartCLIP ViT-L/14": 72.1, "CLIP ViT-L/14": 67.5, "Long-CLIP ViT-L/14": 72.5}
    assert results["clip_benchmark/voc2007_multilabel"]["paper"]["metric"] == "mAP"
    assert results["clip_benchmark/sun397"]["zeroshot"]["templates"] == ["a photo of a {c}.",
                                                                         "a photo of the {c}."]
    assert results["clip_benchmark/sun397"]["zeroshot"]["classnames"] == ["abbey", "beach", "kitchen",
                                                                          "market outdoor"]
    md = next(tmp_path.glob("eval_*.md")).read_text()
    table = md[md.index("## Zero-shot classification beside the paper"):md.index("Protocols:")]
    sun = results["clip_benchmark/sun397"]["metrics"]["top1"]
    assert f"| clip_benchmark/sun397 | top1 | {sun:.2f} | 72.10 | 67.50 | 72.50 | 4 | 2 | no |" in table
    assert "| clip_benchmark/wds/imagenet1k | top1 |  | 72.50 | 75.30 | 72.90 |" in table and "not run" in table
    assert "CLIP_benchmark 1.6.2" in table
    assert len([line for line in table.splitlines() if line.startswith("| clip_benchmark/")]) == 10


# ------------------------------------------------------------------ registry and layouts
def test_every_clip_benchmark_classification_dataset_is_registered(capsys):
    from clip_benchmark.datasets.builder import dataset_collection
    ids = {d for name in ("vtab", "vtab+", "imagenet_robustness") for d in dataset_collection[name]}
    ids |= {"cars", "dtd", "pets", "flowers", "food101", "caltech101", "stl10", "eurosat", "mnist", "renderedsst2",
            "pcam", "objectnet", "imagenet-a", "imagenet-r", "imagenet_sketch", "imagenet-o", "cifar10", "cifar100",
            *PAPER_TABLE3}
    names = set(list_benchmarks())
    for dataset_id in ids:
        assert dataset_id in CLIP_BENCHMARK_DATASETS
        assert f"clip_benchmark/{dataset_id}" in names and f"clip_benchmark/wds/{dataset_id}" in names
    assert "paper-zeroshot" in names
    assert main(["eval", "--list"]) == 0
    listing = capsys.readouterr().out
    assert "clip_benchmark/wds/vtab/svhn" in listing and "SUN397/{ClassName.txt" in listing
    assert "paper-zeroshot" in listing and "test/nshards.txt" in listing


def test_existing_zero_shot_names_are_clip_benchmark_entries(tmp_path):
    """`imagenet` and `clip_benchmark/imagenet1k` are one code path with the same protocol;
    CIFAR keeps the released scripts' templates and class names."""
    import clip_benchmark.datasets
    (tmp_path / "imagenet").mkdir()
    imagenet, native = get_benchmark("imagenet", root=str(tmp_path)), get_benchmark("clip_benchmark/imagenet1k:x")
    assert isinstance(imagenet, ClipBenchmarkClassification) and isinstance(native, ClipBenchmarkClassification)
    assert imagenet.dataset_id == native.dataset_id == "imagenet1k"
    assert imagenet._templates(None) == openai_templates()  # which are CLIP_benchmark's imagenet1k templates
    package = Path(clip_benchmark.datasets.__file__).parent
    templates = json.loads((package / "en_zeroshot_classification_templates.json").read_text())
    assert [t.replace("{c}", "{}") for t in templates["imagenet1k"]] == openai_templates()
    names = json.loads((package / "en_classnames.json").read_text())
    assert names["imagenet1k"] == smartclip.eval.imagenet_classnames()
    (tmp_path / "cifar").mkdir()
    cifar = get_benchmark("cifar100", root=str(tmp_path))
    assert cifar.dataset_id == "cifar100" and cifar.classnames_tidy and cifar.template_choice == "openai"
    v2 = get_benchmark(f"imagenet-v2:{tmp_path}")
    assert v2.dataset_id == "imagenetv2" and v2.expected_images == 10000


@pytest.mark.parametrize("dataset_id", [d for d in CLIP_BENCHMARK_DATASETS if not d.startswith("vtab/")])
def test_missing_data_names_layout_and_path_and_never_reaches_clip_benchmark(dataset_id, tmp_path, monkeypatch,
                                                                              micro_model):
    import clip_benchmark.datasets.builder as builder
    monkeypatch.setattr(builder, "build_dataset", lambda *a, **k: pytest.fail("CLIP_benchmark was called"))
    empty = tmp_path / "empty"
    empty.mkdir()
    info = CLIP_BENCHMARK_DATASETS[dataset_id]
    for layout, root in (("", empty), ("wds/", empty), ("", tmp_path / "absent")):
        bench = get_benchmark(f"clip_benchmark/{layout}{dataset_id}:{root}")
        with pytest.raises(DatasetNotFoundError) as err:
            bench.run(micro_model, tokenizer=None, preprocess=None, progress=False)
        message = str(err.value)
        assert str(root) in message and "Nothing is downloaded" in message, message
        assert (info.layout if not layout else "test/nshards.txt") in message
    assert not any(empty.iterdir())  # nothing was written either


def test_download_hooks_are_disabled_while_clip_benchmark_builds(tmp_path):
    from clip_benchmark.datasets import imagenetv2
    from clip_benchmark.datasets.builder import build_dataset
    with no_downloads():
        # its fer2013 branch shells out to `which kaggle` and `kaggle datasets download` for a missing root
        with pytest.raises(DatasetNotFoundError, match="never downloads"):
            build_dataset("fer2013", root=str(tmp_path / "nothing"), transform=None)
        # ImageNet-V2 calls requests.get when the folder does not hold exactly 10,000 images
        (tmp_path / "ImageNetV2-matched-frequency").mkdir()
        with pytest.raises(DatasetNotFoundError, match="never downloads"):
            build_dataset("imagenetv2", root=str(tmp_path), transform=None)
    assert imagenetv2.V2_DATASET_SIZE == 10000 and imagenetv2.requests.__name__ == "requests"


def test_vtab_sets_need_tensorflow_datasets(tmp_path, micro_model):
    import importlib.util
    if importlib.util.find_spec("tensorflow_datasets") is not None:
        pytest.skip("tensorflow_datasets is installed here")
    (tmp_path / "svhn_cropped").mkdir()
    bench = get_benchmark(f"clip_benchmark/vtab/svhn:{tmp_path}")
    with pytest.raises(ImportError, match="tensorflow_datasets, task_adaptation"):
        bench.run(micro_model, tokenizer=None, preprocess=None, progress=False)


# ------------------------------------------------------------------------ bad input
def _run(model, spec, **kw):
    return evaluate(model, [spec], options={spec: {"expected_images": None}}, progress=False, batch_size=4,
                    **kw)[spec]


def _rewrite_shard(shard, edit):
    """Rewrite a shard with each member's bytes replaced by ``edit(name, data)``; None drops it."""
    with tarfile.open(shard) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(shard, "w") as tar:
        for member, data in members:
            data = edit(member.name, data)
            if data is not None:
                member.size = len(data)
                tar.addfile(member, io.BytesIO(data))


def _drop_from_shard(shard, keys):
    """Rewrite a shard without the members of ``keys``."""
    _rewrite_shard(shard, lambda name, data: None if name.split(".")[0] in keys else data)


@pytest.mark.slow
def test_wds_bad_input_is_counted_by_kind_and_partial_scores_only_when_allowed(tmp_path, micro_model):
    good = tmp_path / "wds_good"
    write_wds(good, 24, shards=3)
    bad = tmp_path / "wds_bad"
    shutil.copytree(good, bad)
    # shard 0: a sample loses its label, one gets a label out of range, one an image that cannot be decoded
    edits = {"s000000.cls": None, "s000003.cls": b"11", "s000006.png": b"this is not an image"}
    _rewrite_shard(bad / "test" / "0.tar", lambda name, data: edits[name] if name in edits else data)
    # shard 2 is a Git LFS pointer that was never pulled; nshards.txt names a fourth shard that is absent
    (bad / "test" / "2.tar").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 1\n")
    (bad / "test" / "nshards.txt").write_text("4\n")
    spec = f"clip_benchmark/wds/mnist:{bad}"
    with pytest.raises(IncompleteBenchmarkError) as err:
        _run(micro_model, spec)
    message = str(err.value)
    for kind in ("sample_without_label 1", "bad_label 1", "lfs_pointer_shard 1", "missing_shard 1"):
        assert kind in message, message
    assert "test/0.tar:s000000" in message and "git lfs pull" in message
    result = _run(micro_model, spec, allow_partial=True)
    assert result["partial"]
    assert result["counts"]["problems"] == {"sample_without_label": 1, "bad_label": 1, "lfs_pointer_shard": 1,
                                            "missing_shard": 1, "unreadable_image": 1}
    # scored on exactly the good samples: shards 0 (minus 3 samples) and 1
    kept = tmp_path / "wds_kept"
    shutil.copytree(good, kept)
    _drop_from_shard(kept / "test" / "0.tar", {"s000000", "s000003", "s000006"})
    (kept / "test" / "2.tar").unlink()
    (kept / "test" / "nshards.txt").write_text("2\n")
    clean = _run(micro_model, f"clip_benchmark/wds/mnist:{kept}")
    assert result["counts"]["images"] == clean["counts"]["images"] == 13
    assert result["metrics"] == pytest.approx(clean["metrics"])
    # a decoding failure alone (the inventory reads no image data) is refused the same way
    only_bad_image = tmp_path / "wds_undecodable"
    shutil.copytree(good, only_bad_image)
    _rewrite_shard(only_bad_image / "test" / "1.tar",
                   lambda name, data: data[: len(data) // 2] if name == "s000004.png" else data)
    with pytest.raises(IncompleteBenchmarkError, match="unreadable_image"):
        _run(micro_model, f"clip_benchmark/wds/mnist:{only_bad_image}")
    partial = _run(micro_model, f"clip_benchmark/wds/mnist:{only_bad_image}", allow_partial=True)
    assert partial["counts"]["problems"] == {"unreadable_image": 1} and partial["counts"]["images"] == 23
    assert any("test/1.tar:s000004" in m for m in partial["missing"])


def test_torchvision_layout_bad_input_by_kind(tmp_path, micro_model):
    root = tmp_path / "fgvc"
    written = write_fgvc_aircraft(root)
    written["files"][0].unlink()                          # listed in images_variant_test.txt, absent
    written["files"][3].write_bytes(b"\x89PNG garbage")   # present, undecodable
    spec = f"clip_benchmark/fgvc_aircraft:{root}"
    with pytest.raises(IncompleteBenchmarkError) as err:
        _run(micro_model, spec)
    assert "missing_image 1" in str(err.value) and written["files"][0].name in str(err.value)
    result = _run(micro_model, spec, allow_partial=True)
    assert result["partial"] and result["counts"]["images"] == len(written["files"]) - 2
    assert result["counts"]["problems"] == {"missing_image": 1, "unreadable_image": 1}
    assert any(written["files"][3].name in m and "unreadable_image" in m for m in result["missing"])
    # a folder-per-class set with a class folder missing cannot be scored: labels would shift
    fer = tmp_path / "fer"
    write_fer2013(fer)
    shutil.rmtree(fer / "test" / FER_FOLDERS[2])
    with pytest.raises(DatasetFormatError, match=r"6 class folders .* has 7 classes \(missing_class_folder: 1"):
        _run(micro_model, f"clip_benchmark/fer2013:{fer}", allow_partial=True)
    for image in (fer / "test" / FER_FOLDERS[0]).iterdir():
        image.unlink()
    with pytest.raises(DatasetFormatError, match="empty_class_folder: 1: angry"):
        _run(micro_model, f"clip_benchmark/fer2013:{fer}")


def test_protocol_size_is_checked(tmp_path, micro_model):
    root = tmp_path / "gtsrb"
    write_gtsrb(root, n=6)
    spec = f"clip_benchmark/gtsrb:{root}"
    with pytest.raises(IncompleteBenchmarkError, match="short_of_protocol 12624"):
        evaluate(micro_model, [spec], progress=False)
    result = evaluate(micro_model, [spec], progress=False, options={spec: {"expected_images": 6}})[spec]
    assert "SIZE OVERRIDDEN: expected_images=6" in result["protocol"] and not result["partial"]
    with pytest.raises(DatasetFormatError, match="found 6 images but the protocol has 5"):
        evaluate(micro_model, [spec], progress=False, options={spec: {"expected_images": 5}})


@pytest.mark.slow
def test_imagenetv2_accepts_the_archive_folder_and_partial_sets_without_downloading(tmp_path, micro_model):
    from clip_benchmark_fixtures import digit
    folder = tmp_path / "imagenetv2-matched-frequency-format-val"
    for label in (3, 42, 999):
        (folder / str(label)).mkdir(parents=True)
        digit(label, 24).save(folder / str(label) / f"{label}a.jpeg", format="JPEG")
    with pytest.raises(IncompleteBenchmarkError, match="9997 of the protocol's 10000"):
        evaluate(micro_model, [f"imagenet-v2:{tmp_path}"], progress=False)
    spec = f"clip_benchmark/imagenetv2:{tmp_path}"
    result = evaluate(micro_model, [spec], progress=False, allow_partial=True,
                      options={spec: {"templates": ["a photo of a {}."]}})[spec]
    assert result["partial"] and result["counts"]["images"] == 3 and result["counts"]["classes"] == 1000
    assert result["counts"]["problems"] == {"short_of_protocol": 9997}
    assert not (tmp_path / "ImageNetV2-matched-frequency").exists()  # linked in a temporary folder, not renamed


def test_feature_cache_covers_clip_benchmark_sets(tmp_path):
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro").eval()
    write_wds(tmp_path / "wds_mnist", 12, shards=2)
    spec = f"clip_benchmark/wds/mnist:{tmp_path / 'wds_mnist'}"
    opts = {spec: {"expected_images": None}}
    first = evaluate(model, [spec], cache_dir=tmp_path / "cache", options=opts, progress=False)
    files = sorted((tmp_path / "cache").rglob("*.safetensors"))
    assert len(files) == 2  # image features with their labels, and the class embeddings
    stamps = [f.stat().st_mtime_ns for f in files]
    again = evaluate(model, [spec], cache_dir=tmp_path / "cache", options=opts, progress=False)
    assert [f.stat().st_mtime_ns for f in files] == stamps and again[spec]["metrics"] == first[spec]["metrics"]
    shard = tmp_path / "wds_mnist" / "test" / "1.tar"
    _drop_from_shard(shard, {"s000001"})  # new shard contents -> new key
    third = evaluate(model, [spec], cache_dir=tmp_path / "cache", options=opts, progress=False)
    assert third[spec]["counts"]["images"] == 11


def test_suite_without_data_root_is_a_clear_error(micro_model, monkeypatch):
    monkeypatch.delenv("SMARTCLIP_DATA", raising=False)
    with pytest.raises(DatasetNotFoundError, match="paper-zeroshot: no data root"):
        evaluate(micro_model, ["paper-zeroshot"], progress=False)
    with pytest.raises(KeyError, match="is a suite"):
        get_benchmark("paper-zeroshot")
    with pytest.raises(KeyError, match="did you mean: .*clip_benchmark/sun397"):
        get_benchmark("sun397")
