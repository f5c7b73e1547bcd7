"""CLIP_benchmark's zero-shot classification datasets, read by CLIP_benchmark itself.

Every classification dataset CLIP_benchmark knows is a benchmark here, in both on-disk
layouts it reads: ``clip_benchmark/<id>`` (the torchvision-style root its
``build_dataset`` expects) and ``clip_benchmark/wds/<id>`` (its WebDataset layout, the
published ``clip-benchmark/wds_*`` sets). CLIP_benchmark constructs the dataset and gives
its English class names and templates; we encode (trimmed text, our preprocessing) and
score with its metric definitions (``metrics.py``: top-1/top-5, mean per-class recall,
mAP for multi-label sets).

Nothing is downloaded. CLIP_benchmark's builder downloads (``wget``, ``kaggle``,
``requests``) when a root is missing or incomplete, so every layout is checked first
(a missing path raises :class:`DatasetNotFoundError` naming the layout and the path),
``download=False`` is passed, and those download hooks are disabled while it builds.

Bad input is reported by kind with counts (``result["problems"]``): missing files,
unreadable images, and for WebDataset shards everything :mod:`.wds` finds. A score over
a partial set is refused unless ``allow_partial``; it is then marked partial.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import time
import types
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import wds
from .benchmark import (DatasetFormatError, DatasetNotFoundError, IncompleteBenchmarkError, _FileBenchmark,
                        cached_classifier)
from .encode import encode_dataset
from .zeroshot import classify, classify_multilabel, openai_templates

__all__ = ["CBDataset", "CLIP_BENCHMARK_DATASETS", "PAPER_TABLE3", "PAPER_ZEROSHOT", "ClipBenchmarkClassification",
           "clip_benchmark_version", "paper_row", "torchvision_folder", "wds_folder"]

CB_SOURCE = "https://github.com/LAION-AI/CLIP_benchmark"


@dataclass(frozen=True)
class CBDataset:
    """One CLIP_benchmark classification dataset, as data: its torchvision-layout root."""
    id: str
    layout: str                       # what CLIP_benchmark reads under the root
    required: Tuple[str, ...]         # paths under the root checked before CLIP_benchmark is called
    source: str                       # where the dataset is published
    needs: Tuple[str, ...] = ()       # Python modules its reader imports
    expected_images: Optional[int] = None  # the test split's size, where it is well known
    multilabel: bool = False
    class_folders: Optional[str] = None    # for folder-per-class readers: the folder holding the class folders


_VOC = ("VOCdevkit/VOC2007/ImageSets/Main/aeroplane_test.txt", "VOCdevkit/VOC2007/Annotations",
        "VOCdevkit/VOC2007/JPEGImages")
_VOC_LAYOUT = ("VOCdevkit/VOC2007/{ImageSets/Main/aeroplane_test.txt, Annotations/<id>.xml, JPEGImages/<id>.jpg} "
               "(VOCtest_06-Nov-2007.tar)")
_VOC_SOURCE = "http://host.robots.ox.ac.uk/pascal/VOC/voc2007/ (VOCtest_06-Nov-2007.tar)"
_IMAGENET_SOURCE = "https://image-net.org/download (ILSVRC2012 validation images, sorted into class folders)"
_HENDRYCKS = "https://people.eecs.berkeley.edu/~hendrycks/{}.tar"

_TORCHVISION_LAYOUT = (
    CBDataset("cifar10", "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: the whole python "
              "archive, whose files torchvision checks against their MD5 sums",
              ("cifar-10-batches-py/test_batch", "cifar-10-batches-py/batches.meta"),
              "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)", expected_images=10000),
    CBDataset("cifar100", "cifar-100-python/{train, test, meta}: the whole python archive (MD5-checked)",
              ("cifar-100-python/test", "cifar-100-python/meta"),
              "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version)", expected_images=10000),
    CBDataset("imagenet1k", "val/<wnid>/*.JPEG (1,000 WordNet-id folders, sorted = class index); with meta.bin or "
              "ILSVRC2012_devkit_t12.tar.gz beside val/ read as CLIP_benchmark's imagenet1k (torchvision ImageNet), "
              "without them as its imagenet1k-unverified (the same folders)", ("val",), _IMAGENET_SOURCE,
              expected_images=50000, class_folders="val"),
    CBDataset("imagenet1k-unverified", "val/<wnid>/* (1,000 WordNet-id folders, sorted = class index)", ("val",),
              _IMAGENET_SOURCE, expected_images=50000, class_folders="val"),
    CBDataset("imagenetv2", "ImageNetV2-matched-frequency/<class index 0..999>/*.jpeg (the archive's folder name "
              "imagenetv2-matched-frequency-format-val/ is accepted too)", (),
              "https://huggingface.co/datasets/vaishaal/ImageNetV2 (imagenetv2-matched-frequency.tar.gz)",
              expected_images=10000),
    CBDataset("imagenet_sketch", "<wnid>/*.JPEG (the 1,000 WordNet-id folders of ImageNet-Sketch.zip's sketch/)",
              ("",), "https://github.com/HaohanWang/ImageNet-Sketch (ImageNet-Sketch.zip)", class_folders=""),
    CBDataset("imagenet-a", "<wnid>/*.jpg (the 200 WordNet-id folders of imagenet-a.tar)", ("",),
              _HENDRYCKS.format("imagenet-a"), expected_images=7500, class_folders=""),
    CBDataset("imagenet-r", "<wnid>/*.jpg (the 200 WordNet-id folders of imagenet-r.tar)", ("",),
              _HENDRYCKS.format("imagenet-r"), expected_images=30000, class_folders=""),
    CBDataset("imagenet-o", "<wnid>/*.jpg (the 200 WordNet-id folders of imagenet-o.tar)", ("",),
              _HENDRYCKS.format("imagenet-o"), expected_images=2000, class_folders=""),
    CBDataset("objectnet", "folder_to_objectnet_label.json, objectnet_to_imagenet_1k.json, "
              "pytorch_to_imagenet_2012_id.json, imagenet_to_label_2012_v2 (objectnet-1.0/mappings/, copied to the "
              "root) and objectnet-1.0/images/<folder>/*",
              ("folder_to_objectnet_label.json", "objectnet_to_imagenet_1k.json", "pytorch_to_imagenet_2012_id.json",
               "imagenet_to_label_2012_v2", "objectnet-1.0/images"),
              "https://objectnet.dev/download.html (objectnet-1.0.zip)"),
    CBDataset("voc2007", _VOC_LAYOUT + "; one sample per object box, cropped", _VOC, _VOC_SOURCE),
    CBDataset("voc2007_multilabel", _VOC_LAYOUT + "; one sample per image, target = the classes of its boxes", _VOC,
              _VOC_SOURCE, expected_images=4952, multilabel=True),
    CBDataset("food101", "food-101/{meta/test.json, images/<class>/<id>.jpg}", ("food-101/meta/test.json",
              "food-101/images"), "https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/ (food-101.tar.gz)"),
    CBDataset("sun397", "SUN397/{ClassName.txt, <letter>/<class>/sun_*.jpg}: the whole set (CLIP_benchmark uses no "
              "split)", ("SUN397/ClassName.txt",), "https://vision.princeton.edu/projects/2010/SUN/ (SUN397.tar.gz)"),
    CBDataset("cars", "stanford_cars/{devkit/cars_meta.mat, cars_test_annos_withlabels.mat, cars_test/*.jpg}",
              ("stanford_cars/devkit/cars_meta.mat", "stanford_cars/cars_test_annos_withlabels.mat",
               "stanford_cars/cars_test"), "https://ai.stanford.edu/~jkrause/cars/car_dataset.html", needs=("scipy",)),
    CBDataset("fgvc_aircraft", "fgvc-aircraft-2013b/data/{variants.txt, images_variant_test.txt, images/<id>.jpg}",
              ("fgvc-aircraft-2013b/data/variants.txt", "fgvc-aircraft-2013b/data/images_variant_test.txt",
               "fgvc-aircraft-2013b/data/images"),
              "https://www.robots.ox.ac.uk/~vgg/data/fgvc-aircraft/ (fgvc-aircraft-2013b.tar.gz)",
              expected_images=3333),
    CBDataset("dtd", "dtd/dtd/{labels/test1.txt, images/<class>/*.jpg} (dtd-r1.0.1.tar.gz extracted into ROOT/dtd)",
              ("dtd/dtd/labels/test1.txt", "dtd/dtd/images"), "https://www.robots.ox.ac.uk/~vgg/data/dtd/"),
    CBDataset("pets", "oxford-iiit-pet/{annotations/test.txt, images/<name>.jpg}",
              ("oxford-iiit-pet/annotations/test.txt", "oxford-iiit-pet/images"),
              "https://www.robots.ox.ac.uk/~vgg/data/pets/ (images.tar.gz, annotations.tar.gz)"),
    CBDataset("caltech101", "caltech101/101_ObjectCategories/<class>/image_*.jpg (every image, no split)",
              ("caltech101/101_ObjectCategories",), "https://data.caltech.edu/records/mzrjq-6wc02"),
    CBDataset("flowers", "flowers-102/{jpg/image_*.jpg, imagelabels.mat, setid.mat} (the .mat files MD5-checked)",
              ("flowers-102/jpg", "flowers-102/imagelabels.mat", "flowers-102/setid.mat"),
              "https://www.robots.ox.ac.uk/~vgg/data/flowers/102/", needs=("scipy",)),
    CBDataset("mnist", "MNIST/raw/{train,t10k}-images-idx3-ubyte and {train,t10k}-labels-idx1-ubyte (uncompressed)",
              ("MNIST/raw/t10k-images-idx3-ubyte", "MNIST/raw/t10k-labels-idx1-ubyte"),
              "http://yann.lecun.com/exdb/mnist/", expected_images=10000),
    CBDataset("stl10", "stl10_binary/{test_X.bin, test_y.bin, train_X.bin, train_y.bin, unlabeled_X.bin, "
              "class_names.txt, fold_indices.txt}: the whole binary archive (MD5-checked)",
              ("stl10_binary/test_X.bin", "stl10_binary/test_y.bin"), "https://cs.stanford.edu/~acoates/stl10/",
              expected_images=8000),
    CBDataset("eurosat", "eurosat/2750/<class>/*.jpg (EuroSAT.zip, RGB; every image, no split)", ("eurosat/2750",),
              "https://github.com/phelber/EuroSAT", class_folders="eurosat/2750"),
    CBDataset("gtsrb", "gtsrb/{GT-final_test.csv, GTSRB/Final_Test/Images/*.ppm}",
              ("gtsrb/GT-final_test.csv", "gtsrb/GTSRB/Final_Test/Images"),
              "https://benchmark.ini.rub.de/gtsrb_dataset.html (GTSRB_Final_Test_Images.zip, GTSRB_Final_Test_GT.zip)",
              expected_images=12630),
    CBDataset("country211", "country211/test/<ISO country code>/*.jpg", ("country211/test",),
              "https://github.com/openai/CLIP/blob/main/data/country211.md (country211.tgz)", expected_images=21100,
              class_folders="country211/test"),
    CBDataset("pcam", "pcam/camelyonpatch_level_2_split_test_{x,y}.h5 (uncompressed)",
              ("pcam/camelyonpatch_level_2_split_test_x.h5", "pcam/camelyonpatch_level_2_split_test_y.h5"),
              "https://github.com/basveeling/pcam", needs=("h5py",)),
    CBDataset("renderedsst2", "rendered-sst2/test/{negative,positive}/*.png", ("rendered-sst2/test",),
              "https://github.com/openai/CLIP/blob/main/data/rendered-sst2.md"),
    CBDataset("fer2013", "test/<emotion>/*.jpg (7 folders, angry ... surprise: the Kaggle msambare/fer2013 archive)",
              ("test",), "https://www.kaggle.com/datasets/msambare/fer2013", expected_images=7178,
              class_folders="test"),
)

# VTAB sets in CLIP_benchmark's collections, read from a TensorFlow Datasets data_dir through
# task_adaptation's VTAB splits; the value is the TFDS dataset folder.
_VTAB = {"caltech101": "caltech101", "cifar10": "cifar10", "cifar100": "cifar100", "clevr_count_all": "clevr",
         "clevr_closest_object_distance": "clevr", "diabetic_retinopathy": "diabetic_retinopathy_detection",
         "dmlab": "dmlab", "dsprites_label_orientation": "dsprites", "dsprites_label_x_position": "dsprites",
         "dtd": "dtd", "eurosat": "eurosat", "kitti_closest_vehicle_distance": "kitti",
         "flowers": "oxford_flowers102", "pets": "oxford_iiit_pet", "pcam": "patch_camelyon", "resisc45": "resisc45",
         "smallnorb_label_azimuth": "smallnorb", "smallnorb_label_elevation": "smallnorb", "svhn": "svhn_cropped"}

CLIP_BENCHMARK_DATASETS: Dict[str, CBDataset] = {d.id: d for d in _TORCHVISION_LAYOUT}
for _name, _tfds in _VTAB.items():
    CLIP_BENCHMARK_DATASETS[f"vtab/{_name}"] = CBDataset(
        f"vtab/{_name}", f"a TensorFlow Datasets data_dir holding {_tfds}/ (prepared with tensorflow_datasets; read "
        "through task_adaptation's VTAB splits)", (_tfds,), "https://github.com/google-research/task_adaptation",
        needs=("tensorflow_datasets", "task_adaptation"))

# SmartCLIP (CVPR 2025) Table 3: ViT-L/14, CLIP_benchmark, top-1 % (voc2007_multilabel: mAP %)
PAPER_TABLE3 = {  # id: (SmartCLIP, CLIP, Long-CLIP)
    "country211": (26.9, 31.8, 28.1), "fer2013": (58.6, 49.0, 57.8), "fgvc_aircraft": (30.4, 31.7, 30.6),
    "gtsrb": (52.4, 50.2, 48.9), "imagenet1k": (72.5, 75.3, 72.9), "imagenetv2": (66.6, 69.7, 66.9),
    "voc2007": (78.6, 78.3, 77.5), "voc2007_multilabel": (83.7, 79.0, 82.1), "sun397": (72.1, 67.5, 72.5)}
PAPER_ZEROSHOT = tuple(PAPER_TABLE3)
PAPER_MODELS = ("SmartCLIP ViT-L/14", "CLIP ViT-L/14", "Long-CLIP ViT-L/14")
PAPER_SOURCE = "SmartCLIP (CVPR 2025) Table 3: ViT-L/14, zero-shot with CLIP_benchmark"

def paper_row(dataset_id: str) -> Optional[dict]:
    """The paper's Table 3 numbers for a CLIP_benchmark id, as results carry them (None if absent)."""
    if dataset_id not in PAPER_TABLE3:
        return None
    metric = "mAP" if CLIP_BENCHMARK_DATASETS[dataset_id].multilabel else "top1"
    return {"source": PAPER_SOURCE, "metric": metric, **dict(zip(PAPER_MODELS, PAPER_TABLE3[dataset_id]))}


METRICS = ("top-1 and top-5 accuracy (ties count against the model; CLIP_benchmark's topk breaks them in kernel "
           "order), mean per-class recall (CLIP_benchmark's mean_per_class_recall)")
MULTILABEL_METRIC = "mAP: mean over classes of average precision (CLIP_benchmark's average_precision_per_class)"


def clip_benchmark_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("clip-benchmark")
    except PackageNotFoundError:
        return "not installed"


def torchvision_folder(dataset_id: str) -> str:
    """Default folder under a data root: the id with '/' as '-' (CLIP_benchmark's ``dataset_cleaned``)."""
    return dataset_id.replace("/", "-")


def wds_folder(dataset_id: str) -> str:
    """Default folder under a data root: the name of the published set, ``wds_<id with / as ->``."""
    return "wds_" + dataset_id.replace("/", "-")


def _require_clip_benchmark(needs: Sequence[str] = ()) -> None:
    import importlib.util
    missing = [m for m in ("clip_benchmark", "requests", *needs) if importlib.util.find_spec(m) is None]
    if missing:
        raise ImportError(f"reading CLIP_benchmark datasets needs {', '.join(missing)}: pip install "
                          f"'smartclip[clip-benchmark]'" + (f" {' '.join(needs)}" if needs else ""))


@contextlib.contextmanager
def _no_downloads(allowed_v2_images: Optional[int] = None):
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


def _sample_files(ds) -> Optional[List[str]]:
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


def _walk_stats(root: Path, relative: Sequence[str]) -> List[str]:
    out = []
    for rel in relative:
        path = root / rel
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
        out.extend(f"{p}|{p.stat().st_size}|{p.stat().st_mtime_ns}" for p in files)
    return out


class ClipBenchmarkClassification(_FileBenchmark):
    """Zero-shot classification on a dataset CLIP_benchmark constructs.

    ``layout``: ``"torchvision"`` (its ``build_dataset(id, root)``) or ``"wds"`` (its
    ``build_dataset("wds/" + id, root)``). ``templates``: ``None`` for CLIP_benchmark's own,
    ``"openai"`` for OpenAI's 80 ImageNet templates (the released scripts' protocol), or a
    list. ``classnames_tidy``: write '_' as space in class names (the released scripts'
    CIFAR protocol). ``expected_images``: the protocol's size (``None``: not checked)."""

    def __init__(self, name: str, dataset_id: str, root, layout: str = "torchvision", *, templates=None,
                 classnames_tidy: bool = False, expected_images: Optional[int] = None, description: str = "",
                 notes: Sequence[str] = (), folder: Optional[str] = None, masked: bool = False, num_workers: int = 0):
        if layout not in ("torchvision", "wds"):
            raise ValueError(f"layout must be 'torchvision' or 'wds', got {layout!r}")
        self.info = CLIP_BENCHMARK_DATASETS[dataset_id]
        self.dataset_id, self.layout = dataset_id, layout
        self.template_choice, self.classnames_tidy = templates, classnames_tidy
        self.description, self.notes = description, list(notes)
        self.folder = folder or (wds_folder(dataset_id) if layout == "wds" else torchvision_folder(dataset_id))
        super().__init__(name, "", None, root=Path(root), expected_images=expected_images, masked=masked,
                         num_workers=num_workers)
        self.protocol = self._protocol()

    # ---------------------------------------------------------------- protocol
    def _protocol(self, n_templates: Optional[int] = None) -> str:
        where = wds.WDS_LAYOUT if self.layout == "wds" else self.info.layout
        scoring = "masked scoring <u(i,q), tn_q> (SPEC 5)" if self.masked else \
            "cosine similarity of unmasked L2-normalised features"
        return (f"{self.description + ': ' if self.description else ''}CLIP_benchmark {self.dataset_id} "
                f"({self.layout} layout: {where}); {self._zero_shot_text(n_templates)}; {scoring}"
                + "".join(f" [{note}]" for note in self.notes))

    def _zero_shot_text(self, n_templates: Optional[int] = None) -> str:
        if isinstance(self.template_choice, (list, tuple)):
            templates = f"{len(self.template_choice)} templates given by the user (TEMPLATES OVERRIDDEN)"
        elif self.template_choice == "openai":
            templates = "OpenAI's 80 ImageNet templates"
        else:
            source = "the set's zeroshot_classification_templates.txt" if self.layout == "wds" else \
                "en_zeroshot_classification_templates.json"
            templates = f"CLIP_benchmark's templates ({n_templates if n_templates else 'its'} from {source})"
        names = "the set's classnames.txt" if self.layout == "wds" else "CLIP_benchmark's English class names"
        if self.classnames_tidy:
            names += " with '_' as space"
        metric = MULTILABEL_METRIC if self.info.multilabel else METRICS
        return (f"class names: {names}; {templates}; class embedding = mean of L2-normalised template embeddings, "
                f"renormalised; logits 100*cos; prompts tokenised at 248; {metric}")

    # ---------------------------------------------------------------- construction
    def _check_layout(self) -> None:
        root = self.root
        if self.layout == "wds":
            return  # wds.inventory checks it
        missing = [rel or "." for rel in self.info.required if not (root / rel).exists()]
        folders = self.info.class_folders
        if not missing and folders is not None and not any(p.is_dir() for p in (root / folders).iterdir()):
            missing = [f"{folders or '.'}/<class folders>"]
        if not root.is_dir() or missing:
            problem = f"data root {root} does not exist" if not root.is_dir() else \
                f"not found under {root}: {', '.join(missing)}"
            raise DatasetNotFoundError(
                f"{self.name}: {problem}.\nExpected under the root ({self.layout} layout of CLIP_benchmark's "
                f"{self.dataset_id}): {self.info.layout}\nPublished at: {self.info.source}\nNothing is downloaded; "
                f"give the root as '{self.name}:PATH' or put it at <data root>/{self.folder}.")

    def _imagenetv2_location(self) -> Tuple[Path, int, Optional[tempfile.TemporaryDirectory]]:
        """CLIP_benchmark reads ``<location>/ImageNetV2-matched-frequency``; the archive
        extracts to ``imagenetv2-matched-frequency-format-val``, which is linked under that
        name in a temporary folder rather than renamed."""
        for name in ("ImageNetV2-matched-frequency", "imagenetv2-matched-frequency-format-val"):
            folder = self.root / name
            if folder.is_dir():
                count = sum(1 for _ in folder.glob("**/*.jpeg"))
                if name == "ImageNetV2-matched-frequency":
                    return self.root, count, None
                view = tempfile.TemporaryDirectory(prefix="smartclip-imagenetv2-")
                os.symlink(folder.resolve(), Path(view.name) / "ImageNetV2-matched-frequency")
                return Path(view.name), count, view
        raise DatasetNotFoundError(
            f"{self.name}: neither {self.root / 'ImageNetV2-matched-frequency'} nor "
            f"{self.root / 'imagenetv2-matched-frequency-format-val'} exists.\nExpected: {self.info.layout}\n"
            f"Published at: {self.info.source}\nNothing is downloaded.")

    def _build(self, location: Path, build_name: str, v2_images: Optional[int] = None):
        from clip_benchmark.datasets.builder import build_dataset
        try:
            with _no_downloads(v2_images) as captured:
                ds = build_dataset(build_name, root=str(location), transform=None, split="test", download=False,
                                   task="zeroshot_classification")
        except (DatasetNotFoundError, ImportError):
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error
            raise DatasetFormatError(self._reader_failure(exc)) from None
        notes = [line for line in captured["output"].getvalue().splitlines() if line.strip()]
        return ds, notes + captured["warnings"]

    def _reader_failure(self, exc: Exception) -> str:
        text = f"{type(exc).__name__}: {exc}"
        empty = re.search(r"Found no valid file for the classes (.*?)\. Supported", str(exc))
        kind = ""
        if empty:
            kind = f" (empty_class_folder: {len(empty.group(1).split(', '))}: {empty.group(1)[:200]})"
        elif "corrupted" in str(exc) or "not found" in str(exc).lower():
            kind = " (the files are absent or fail the reader's integrity check, e.g. MD5 sums of the archive)"
        where = wds.WDS_LAYOUT if self.layout == "wds" else self.info.layout
        return (f"{self.name}: CLIP_benchmark could not read {self.dataset_id} under {self.root}{kind}: "
                f"{text[:500]}\nExpected ({self.layout} layout): {where}")

    def _check_class_folders(self, ds) -> None:
        """A folder-per-class reader numbers the folders it finds: a missing folder shifts
        every label after it, so a count short of the dataset's classes cannot be scored."""
        folders = getattr(ds, "wnid_to_idx", None) or getattr(ds, "class_to_idx", None)
        if folders is None or not hasattr(ds, "samples") or hasattr(ds, "label_map"):
            return
        if len(folders) != len(ds.classes):
            missing = ""
            if len(ds.classes) == 1000:
                from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids
                absent = sorted(set(all_imagenet_wordnet_ids) - set(folders))
                missing = f"; absent: {', '.join(absent[:20])}{' ...' if len(absent) > 20 else ''}"
            raise DatasetFormatError(
                f"{self.name}: {len(folders)} class folders under {self.root}, but CLIP_benchmark's "
                f"{self.dataset_id} has {len(ds.classes)} classes (missing_class_folder: "
                f"{abs(len(ds.classes) - len(folders))}{missing}). Labels are the folders' sorted positions, "
                f"so they would not line up: complete the data.")

    # ---------------------------------------------------------------- run
    def run(self, model, *, tokenizer, preprocess, device="cpu", batch_size=64, allow_partial=False,
            progress=True, feature_cache=None) -> dict:
        started = time.time()
        self._check_layout()
        _require_clip_benchmark(self.info.needs if self.layout == "torchvision" else ())
        with contextlib.ExitStack() as stack:
            if self.layout == "wds":
                source = self._open_wds(allow_partial, stack)
            else:
                source = self._open_torchvision(allow_partial, stack)
            features, targets, problems, missing, counts = self._encode(
                source, model, preprocess, device, batch_size, allow_partial, progress, feature_cache, stack)
        classnames = list(source["dataset"].classes)
        if self.classnames_tidy:
            classnames = [c.replace("_", " ") for c in classnames]
        templates = self._templates(source["dataset"])
        classifier = cached_classifier(model, tokenizer, classnames, templates, self.masked, batch_size, device,
                                       progress, feature_cache)
        if self.info.multilabel:
            metrics = classify_multilabel(features, targets, classifier, masked=self.masked)
            counts["classes_without_positives"] = int((targets.sum(0) == 0).sum())
        else:
            metrics = classify(features, targets, classifier, ks=(1, 5), masked=self.masked)
        counts.update({"images": features.shape[0], "classes": len(classnames), "templates": len(templates),
                       "truncated_prompts": classifier["truncated"], "missing": len(missing),
                       "problems": dict(problems)})
        self.protocol = self._protocol(len(templates))
        result = self._result(metrics, counts, missing, bool(missing), time.time() - started)
        result["zeroshot"] = {"clip_benchmark_version": clip_benchmark_version(), "dataset": self.dataset_id,
                              "layout": self.layout, "read_as": source["read_as"], "classnames": classnames,
                              "templates": templates, "metric": "mAP" if self.info.multilabel else "top1",
                              "notes": source["notes"]}
        if paper_row(self.dataset_id):
            result["paper"] = paper_row(self.dataset_id)
        return result

    def _templates(self, ds) -> List[str]:
        if isinstance(self.template_choice, (list, tuple)):
            return list(self.template_choice)
        if self.template_choice == "openai":
            return openai_templates()
        templates = getattr(ds, "templates", None)
        if not templates or not isinstance(templates, list):
            raise DatasetFormatError(f"{self.name}: CLIP_benchmark gives no list of templates for {self.dataset_id}")
        return list(templates)

    def _open_torchvision(self, allow_partial: bool, stack: contextlib.ExitStack) -> dict:
        location, build_name, v2_images = self.root, self.dataset_id, None
        problems: Counter = Counter()
        missing: List[str] = []
        if self.dataset_id == "imagenetv2":
            location, v2_images, view = self._imagenetv2_location()
            if view is not None:
                stack.callback(view.cleanup)
            self._size_check(v2_images, problems, missing)
            if missing and not allow_partial:
                raise IncompleteBenchmarkError(self.name, missing, {"images_found": v2_images,
                                                                    "problems": dict(problems)})
        elif self.dataset_id == "imagenet1k" and not any(
                (self.root / f).is_file() for f in ("meta.bin", "ILSVRC2012_devkit_t12.tar.gz")):
            build_name = "imagenet1k-unverified"  # the same val/<wnid> folders, without the devkit check
        ds, notes = self._build(location, build_name, v2_images)
        self._check_class_folders(ds)
        files = _sample_files(ds)
        present = list(range(len(ds)))
        if files is not None:
            absent = [i for i, f in enumerate(files) if not os.path.isfile(f)]
            if absent:
                problems["missing_image"] += len(absent)
            missing.extend(f"{self._relative(files[i])} (missing_image)" for i in absent)
            present = sorted(set(present) - set(absent))
        if self.dataset_id != "imagenetv2":
            self._size_check(len(ds), problems, missing)
        if missing and not allow_partial:  # before any encoding
            raise IncompleteBenchmarkError(self.name, missing, {"images_listed": len(ds), "problems": dict(problems)})
        fingerprint = files if files is not None else _walk_stats(self.root, self.info.required)
        return {"dataset": ds, "indices": present, "files": files, "problems": problems, "missing": missing,
                "fingerprint": [build_name, *fingerprint], "notes": notes,
                "read_as": f"clip_benchmark build_dataset({build_name!r})"}

    def _open_wds(self, allow_partial: bool, stack: contextlib.ExitStack) -> dict:
        try:
            inv = wds.inventory(self.root)
        except DatasetNotFoundError as exc:
            published = f"https://huggingface.co/datasets/clip-benchmark/{wds_folder(self.dataset_id)}"
            raise DatasetNotFoundError(
                f"{self.name}: {exc}\nPublished at: {published}\nNothing is downloaded; give the root as "
                f"'{self.name}:PATH' or put it at <data root>/{self.folder}.") from None
        return self._wds_source(inv, allow_partial, stack)

    def _wds_source(self, inv: wds.WdsInventory, allow_partial: bool, stack: contextlib.ExitStack) -> dict:
        problems = Counter(inv.problems)
        missing = inv.missing()
        self._size_check(inv.samples, problems, missing, listed_exact=not inv.bad_shards)
        if missing and not allow_partial:
            raise IncompleteBenchmarkError(self.name, missing, {"samples": inv.samples, "problems": dict(problems)})
        location = self.root
        if not inv.clean:
            location = wds.write_view(inv, stack.enter_context(tempfile.TemporaryDirectory(prefix="smartclip-wds-")))
        ds, notes = self._build(location, f"wds/{self.dataset_id}")
        return {"dataset": ds, "indices": None, "files": None, "problems": problems, "missing": missing,
                "fingerprint": ["wds", *inv.fingerprint()], "notes": notes, "inventory": inv,
                "read_as": f"clip_benchmark build_dataset('wds/{self.dataset_id}')" +
                           (" on a view without the bad samples" if not inv.clean else "")}

    def _size_check(self, listed: int, problems: Counter, missing: List[str], listed_exact: bool = True) -> None:
        expected = self.expected_images
        if expected is None:
            return
        if listed > expected and listed_exact:
            raise DatasetFormatError(f"{self.name}: found {listed} images but the protocol has {expected}; is this "
                                     f"the right split? (pass expected_images=N for a deliberate subset)")
        if listed < expected:
            problems["short_of_protocol"] += expected - listed
            missing.append(f"{expected - listed} of the protocol's {expected} images are not in the data found "
                           f"(short_of_protocol)")

    def _relative(self, path: str) -> str:
        try:
            return Path(path).relative_to(self.root).as_posix()
        except ValueError:
            return str(path)

    def _encode(self, source, model, preprocess, device, batch_size, allow_partial, progress, cache, stack):
        counts = {"images_listed": len(source["dataset"]) if source["indices"] is not None else
                  source["inventory"].samples}
        if self.expected_images is not None:
            counts["expected_images"] = self.expected_images

        def compute(dataset, indices):
            features, targets, rows, failures = encode_dataset(
                model, dataset, preprocess, indices, batch_size, device, progress, self.num_workers,
                desc=f"{self.name} images")
            return torch.cat([features, targets.float().reshape(len(targets), -1)], 1), {
                "dim": features.shape[1], "rows": rows, "failures": {str(k): v for k, v in failures.items()},
                "integer_targets": not targets.is_floating_point()}

        key = self._feature_key("images", source["fingerprint"], model, (source["indices"],))
        try:
            stacked, info = cache.fetch(key, lambda: compute(source["dataset"], source["indices"])) if cache else \
                compute(source["dataset"], source["indices"])
        except Exception as exc:  # noqa: BLE001 - a decoding error stops a WebDataset pipeline
            if source["indices"] is not None:
                raise
            stacked, info = self._rerun_without_unreadable(source, exc, allow_partial, compute, stack)
        problems, missing = source["problems"], source["missing"]
        for index, error in info["failures"].items():
            problems["unreadable_image"] += 1
            files = source["files"]
            missing.append(f"{self._relative(files[int(index)]) if files else 'sample ' + index} "
                           f"(unreadable_image: {error})")
        if missing and not allow_partial:
            raise IncompleteBenchmarkError(self.name, missing, {**counts, "problems": dict(problems)})
        features, targets = stacked[:, :info["dim"]], stacked[:, info["dim"]:]
        targets = targets.squeeze(1).long() if info["integer_targets"] else targets
        return features, targets, problems, missing, counts

    def _rerun_without_unreadable(self, source, exc, allow_partial, compute, stack):
        """CLIP_benchmark's WebDataset pipeline stops at the first image it cannot decode.
        Refused unless partial results are allowed; then every image is decoded to find the
        bad ones, and the run repeats on a view without them."""
        inv = source["inventory"]
        first = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        if not allow_partial:
            raise IncompleteBenchmarkError(self.name, source["missing"] + [
                f"an image CLIP_benchmark's WebDataset pipeline could not decode (unreadable_image: {first}); "
                f"with allow_partial every image is checked and the bad ones are left out"],
                {"samples": inv.samples, "problems": {**source["problems"], "unreadable_image": 1}})
        if not wds.verify_images(inv):
            raise exc
        rebuilt = self._wds_source(inv, True, stack)
        source.update(rebuilt)
        return compute(rebuilt["dataset"], None)
