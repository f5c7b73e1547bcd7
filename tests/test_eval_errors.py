"""Errors that surface: evaluation reports the failures it expects (an image that is absent or
does not decode) by kind, and lets every other failure (a broken ``preprocess``, a model that
runs out of memory, a reader's own error) surface as itself, with its cause."""

import pytest
from PIL import Image

import smartclip
from clip_benchmark_fixtures import FER_FOLDERS, write_fer2013, write_wds
from smartclip.eval import DatasetFormatError, ImageLoadError, IncompleteBenchmarkError, encode_images, evaluate
from smartclip.eval.clip_benchmark import ClipBenchmarkClassification
from smartclip.eval.encode import encode_dataset, encode_image_items


def broken_preprocess(image):
    raise TypeError("preprocess got an argument it does not take")


def out_of_memory(images):
    raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture()
def images(tmp_path):
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"{i}.png")
        Image.new("RGB", (20, 20), (40 * i, 90, 200)).save(paths[-1])
    return paths


def test_a_broken_preprocess_surfaces_as_itself_not_as_unreadable_images(micro_model, images):
    with pytest.raises(TypeError, match="does not take"):
        encode_images(micro_model, broken_preprocess, images, batch_size=2)
    with pytest.raises(TypeError, match="does not take"):
        encode_image_items(micro_model, broken_preprocess, images, batch_size=2)
    # a map-style dataset (CLIP_benchmark's torchvision layouts) the same way
    dataset = [(Image.open(p).convert("RGB"), 0) for p in images]
    with pytest.raises(TypeError, match="does not take"):
        encode_dataset(micro_model, dataset, broken_preprocess, batch_size=2)


def test_unreadable_images_are_still_reported_per_file(micro_model, images):
    preprocess = smartclip.image_transform(micro_model, train=False)
    images[1].write_bytes(b"\x89PNG garbage")
    images[2].unlink()
    features, failures = encode_image_items(micro_model, preprocess, images, batch_size=2)
    assert features.shape[0] == 3 and sorted(failures) == [1, 2]
    assert failures[1].startswith("UnidentifiedImageError") and failures[2].startswith("FileNotFoundError")
    with pytest.raises(ImageLoadError, match="2 of 3 images could not be read"):
        encode_images(micro_model, preprocess, images)

    class Dataset:  # a sample whose file went missing after the dataset was listed
        def __len__(self):
            return 3

        def __getitem__(self, index):
            if index == 1:
                raise FileNotFoundError("gone.jpg")
            return Image.new("RGB", (20, 20)), index

    _, targets, rows, failures = encode_dataset(micro_model, Dataset(), preprocess, batch_size=2)
    assert rows == [0, 2] and targets.tolist() == [0, 2] and list(failures) == [1]


@pytest.fixture()
def wds_root(tmp_path):
    write_wds(tmp_path / "wds_mnist", 8, shards=2)
    return tmp_path / "wds_mnist"


def _wds_run(model, root, allow_partial, preprocess=None):
    bench = ClipBenchmarkClassification("clip_benchmark/wds/mnist", "mnist", root, "wds", templates=["a {}."])
    return bench.run(model, tokenizer=smartclip.get_tokenizer(model), batch_size=4, allow_partial=allow_partial,
                     progress=False, preprocess=preprocess or smartclip.image_transform(model, train=False))


@pytest.mark.parametrize("allow_partial", [False, True])
def test_a_model_out_of_memory_on_a_webdataset_set_is_not_an_unreadable_image(micro_model, wds_root, monkeypatch,
                                                                             allow_partial):
    assert _wds_run(micro_model, wds_root, allow_partial)["counts"]["images"] == 8  # the set itself is fine
    monkeypatch.setattr(micro_model, "encode_image", out_of_memory)
    with pytest.raises(RuntimeError, match="CUDA out of memory") as err:
        _wds_run(micro_model, wds_root, allow_partial)
    assert not isinstance(err.value, IncompleteBenchmarkError)


@pytest.mark.parametrize("allow_partial", [False, True])
def test_a_broken_preprocess_on_a_webdataset_set_surfaces_as_itself(micro_model, wds_root, allow_partial):
    with pytest.raises(TypeError, match="does not take"):
        _wds_run(micro_model, wds_root, allow_partial, preprocess=broken_preprocess)


def test_an_undecodable_webdataset_image_is_still_refused_by_kind(micro_model, wds_root, tmp_path):
    from test_clip_benchmark import _rewrite_shard
    _rewrite_shard(wds_root / "test" / "1.tar", lambda name, data: data[:40] if name.endswith(".png") else data)
    with pytest.raises(IncompleteBenchmarkError, match="unreadable_image: a sample could not be decoded") as err:
        _wds_run(micro_model, wds_root, False)
    assert isinstance(err.value.__cause__, ImageLoadError)


def test_a_reader_failure_keeps_its_cause(micro_model, tmp_path):
    fer = tmp_path / "fer"
    write_fer2013(fer)
    for image in (fer / "test" / FER_FOLDERS[0]).iterdir():
        image.unlink()
    with pytest.raises(DatasetFormatError, match="empty_class_folder") as err:
        evaluate(micro_model, [f"clip_benchmark/fer2013:{fer}"], options={f"clip_benchmark/fer2013:{fer}": {
            "expected_images": None}}, progress=False)
    assert isinstance(err.value.__cause__, FileNotFoundError)  # torchvision's own error, with its traceback
    assert err.value.__cause__.__traceback__ is not None
