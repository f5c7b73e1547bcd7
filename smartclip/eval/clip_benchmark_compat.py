"""Everything that reaches into CLIP_benchmark's internals, in one place.

CLIP_benchmark is a command-line tool rather than a library: building one of its datasets
without a download, or finding which image file a sample reads, means patching module
attributes and reading private fields of its dataset classes. A new CLIP_benchmark release
that renames one of those is then a change to this module alone:

- :func:`build`: its ``build_dataset`` with every download hook refused (:func:`no_downloads`),
  its prints and warnings captured;
- :func:`sample_files`: the image file of each sample, for the readers that read one per sample;
- :func:`class_folders`, :func:`imagenet_wordnet_ids`: what a folder-per-class reader found;
- :func:`dataset_templates`: the templates it attaches to a dataset;
- :func:`imagenetv2_location`: the folder name its ImageNet-V2 reader insists on;
- :func:`wds_decode_errors`: what its WebDataset pipeline raises for an image that does not decode.
"""
from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import tempfile
import types
import warnings
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from .benchmark import DatasetNotFoundError
from .encode import UNREADABLE

__all__ = ["clip_benchmark_version", "require_clip_benchmark", "no_downloads", "build", "sample_files",
           "class_folders", "imagenet_wordnet_ids", "dataset_templates", "imagenetv2_location", "wds_decode_errors"]

IMAGENETV2_FOLDER = "ImageNetV2-matched-frequency"           # what CLIP_benchmark's reader reads
IMAGENETV2_ARCHIVE_FOLDER = "imagenetv2-matched-frequency-format-val"  # what the archive extracts to


def clip_benchmark_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("clip-benchmark")
    except PackageNotFoundError:
        return "not installed"


def require_clip_benchmark(needs: Sequence[str] = ()) -> None:
    missing = [m for m in ("clip_benchmark", "requests", *needs) if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"reading CLIP_benchmark datasets needs {', '.join(missing)}: pip install "
                          f"'smartclip[clip-benchmark]'" + (f" {' '.join(needs)}" if needs else ""))


@contextlib.contextmanager
def no_downloads(allowed_v2_images: Optional[int] = None):
    """While CLIP_benchmark builds: every download hook it has raises instead (shell
    ``wget``/``kaggle``/``gdown`` calls, ImageNet-V2's ``requests.get``, TFDS preparation),
    its prints and warnings are captured (returned in the yielded dict). ImageNet-V2's
    reader downloads unless it finds exactly ``V2_DATASET_SIZE`` images, so that constant
    is set to the number found (checked against the protocol by the caller)."""
    from clip_benchmark.datasets import builder, imagenetv2
    from clip_benchmark.datasets import tfds as cb_tfds

    def refuse(*args, **kwargs):
        raise DatasetNotFoundError(f"CLIP_benchmark tried to download or run {str(args[0])[:120] if args else ''!r}; "
                                   f"smartclip never downloads datasets: put the data on disk in the layout shown")
    patches = [(builder, "call", refuse), (imagenetv2, "requests", types.SimpleNamespace(get=refuse)),
               (cb_tfds, "download_tfds_dataset", refuse)]
    if allowed_v2_images is not None:
        patches.append((imagenetv2, "V2_DATASET_SIZE", allowed_v2_images))
    saved = [(module, name, getattr(module, name)) for module, name, _ in patches]
    captured = {"output": io.StringIO(), "warnings": []}
    try:
        for module, name, value in patches:
            setattr(module, name, value)
        with contextlib.redirect_stdout(captured["output"]), warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield captured
        captured["warnings"] = [str(w.message) for w in caught]
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def build(build_name: str, location: Path, v2_images: Optional[int] = None) -> Tuple[object, List[str]]:
    """``(dataset, notes)``: CLIP_benchmark's test split of ``build_name`` under ``location``,
    yielding ``(PIL image, target)``, built with downloads refused; ``notes`` are the lines it
    printed and the warnings it gave. Its exceptions are raised as they are."""
    from clip_benchmark.datasets.builder import build_dataset
    with no_downloads(v2_images) as captured:
        ds = build_dataset(build_name, root=str(location), transform=None, split="test", download=False,
                           task="zeroshot_classification")
    notes = [line for line in captured["output"].getvalue().splitlines() if line.strip()]
    return ds, notes + captured["warnings"]


def sample_files(ds) -> Optional[List[str]]:
    """The image file of every sample, for the datasets that read one file per sample."""
    if hasattr(ds, "bndboxes") and hasattr(ds, "path_images"):      # voc2007 (crops)
        return [os.path.join(ds.path_images, p + ".jpg") for p, _, _ in ds.bndboxes]
    if hasattr(ds, "paths") and hasattr(ds, "path_images"):         # voc2007_multilabel
        return [os.path.join(ds.path_images, p + ".jpg") for p in ds.paths]
    for attr in ("samples", "_samples"):                            # ImageFolder family, GTSRB, RenderedSST2, cars
        if isinstance(getattr(ds, attr, None), list):
            return [str(s[0]) for s in getattr(ds, attr)]
    for attr in ("_image_files", "_images", "fnames"):              # Food101, SUN397, DTD, FGVC, flowers, pets, V2
        if isinstance(getattr(ds, attr, None), list):
            return [str(p) for p in getattr(ds, attr)]
    return None


def class_folders(ds) -> Optional[dict]:
    """For a reader that numbers the class folders it finds (sorted position = label): the
    folders it found, ``{name: label}``; None for any other reader."""
    folders = getattr(ds, "wnid_to_idx", None) or getattr(ds, "class_to_idx", None)
    if folders is None or not hasattr(ds, "samples") or hasattr(ds, "label_map"):
        return None
    return folders


def imagenet_wordnet_ids() -> List[str]:
    """The 1,000 WordNet ids of ImageNet's classes, in label order, as CLIP_benchmark lists them."""
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids
    return list(all_imagenet_wordnet_ids)


def dataset_templates(ds) -> Optional[List[str]]:
    """The prompt templates CLIP_benchmark attached to ``ds`` (None where it gave no list)."""
    templates = getattr(ds, "templates", None)
    return list(templates) if templates and isinstance(templates, list) else None


def imagenetv2_location(root: Path) -> Optional[Tuple[Path, int, Optional[tempfile.TemporaryDirectory]]]:
    """CLIP_benchmark reads ``<location>/ImageNetV2-matched-frequency``; the archive extracts to
    ``imagenetv2-matched-frequency-format-val``, which is linked under the name it reads in a
    temporary folder rather than renamed. ``(location, images found, the temporary folder or
    None)``, or None when neither folder exists."""
    for name in (IMAGENETV2_FOLDER, IMAGENETV2_ARCHIVE_FOLDER):
        folder = root / name
        if folder.is_dir():
            count = sum(1 for _ in folder.glob("**/*.jpeg"))
            if name == IMAGENETV2_FOLDER:
                return root, count, None
            view = tempfile.TemporaryDirectory(prefix="smartclip-imagenetv2-")
            os.symlink(folder.resolve(), Path(view.name) / IMAGENETV2_FOLDER)
            return Path(view.name), count, view
    return None


def wds_decode_errors() -> Tuple[type, ...]:
    """What CLIP_benchmark's WebDataset pipeline raises when an image does not decode: webdataset
    wraps its decoders' failures in ``DecodingError`` (older releases let PIL's through)."""
    from webdataset.autodecode import DecodingError
    return (DecodingError, *UNREADABLE)
