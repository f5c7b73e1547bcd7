"""The benchmark registry. The paper's benchmarks are one table of data (``PAPER_BENCHMARKS``):
name, task, where the data lives, its published layout and source, the protocol and the
expected size. ``get_benchmark("coco")`` turns a row into a runnable Benchmark.

Where a named benchmark's data is looked for, first match wins:

1. an explicit path in the spec: ``"coco:/data/coco"``;
2. its own environment variable, e.g. ``SMARTCLIP_COCO_ROOT``;
3. ``<data root>/<folder>`` with the data root from ``root=`` (CLI ``--data-root``) or
   ``SMARTCLIP_DATA``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import datasets as ds
from .benchmark import (Benchmark, ClassificationBenchmark, DatasetNotFoundError, RetrievalBenchmark)

__all__ = ["register_benchmark", "list_benchmarks", "get_benchmark", "describe_benchmarks", "resolve_root",
           "BenchmarkInfo", "DatasetSpec", "PAPER_BENCHMARKS", "DATA_ROOT_ENV"]

DATA_ROOT_ENV = "SMARTCLIP_DATA"
RETRIEVAL = "Recall@1/5/10 both directions; image->text hit when any of the image's captions is in the top K, " \
            "text->image over every caption; text tokenised at 248 with truncation (counted)"
ZERO_SHOT = "zero-shot top-1/top-5; class embedding = mean of L2-normalised embeddings of OpenAI's 80 ImageNet " \
            "templates, renormalised; logits 100*cos; prompts tokenised at 248"


@dataclass(frozen=True)
class DatasetSpec:
    """One benchmark of the paper, as data."""
    name: str
    task: str              # "retrieval" | "classification"
    loader: Callable       # (root: Path, **loader options) -> RetrievalData | ClassificationData
    folder: str            # default folder under the data root
    env: str               # environment variable holding this dataset's root
    layout: str            # the published layout under the root
    source: str            # where the dataset is published
    protocol: str          # exactly what is measured
    expected_images: int


PAPER_BENCHMARKS = (
    DatasetSpec(
        "sharegpt4v-1k", "retrieval", ds.load_sharegpt4v, "sharegpt4v", "SMARTCLIP_SHAREGPT4V_ROOT",
        f"{ds.SHAREGPT4V_JSON} (a JSON array of records with 'image' and 'conversations'); images at the "
        "paths the records name, relative to the root (coco/train2017/..., llava/llava_pretrain/images/..., "
        "sam/images/...)",
        "https://huggingface.co/datasets/Lin-Chen/ShareGPT4V (json); COCO train2017, LLaVA-Pretrain LCS-558K, SA-1B "
        "images",
        f"ShareGPT4V-1k: the first 1,000 records of {ds.SHAREGPT4V_JSON}, full long caption (the gpt turn, "
        f"newlines as spaces), 1,000 x 1,000; {RETRIEVAL}", 1000),
    DatasetSpec(
        "urban1k", "retrieval", ds.load_urban1k, "Urban1k", "SMARTCLIP_URBAN1K_ROOT",
        "image/<stem>.jpg and caption/<stem>.txt, matched by file stem",
        "https://huggingface.co/datasets/BeichenZhang/Urban1k (Long-CLIP)",
        f"Urban1k: 1,000 images x 1,000 long captions matched by stem; {RETRIEVAL}", 1000),
    DatasetSpec(
        "dci", "retrieval", ds.load_dci, "dci", "SMARTCLIP_DCI_ROOT",
        "densely_captioned_images/splits.json, densely_captioned_images/annotations/<name>.json (fields 'image', "
        "'short_caption', 'extra_caption'), densely_captioned_images/photos/<image>",
        "https://github.com/facebookresearch/DCI (densely_captioned_images.tgz)",
        f"DCI: every annotation of every split in splits.json (7,805 SA-1B images), caption = short_caption + "
        f"newline + extra_caption, one per image; {RETRIEVAL}", 7805),
    DatasetSpec(
        "docci", "retrieval", ds.load_docci, "docci", "SMARTCLIP_DOCCI_ROOT",
        "docci_descriptions.jsonlines (fields 'split', 'image_file', 'description') and images/<image_file>",
        "https://google.github.io/docci/ (docci_descriptions.jsonlines, docci_images.tar.gz)",
        f"DOCCI: the 5,000 records with split 'test', one description per image; {RETRIEVAL}", 5000),
    DatasetSpec(
        "coco", "retrieval", ds.load_coco, "coco", "SMARTCLIP_COCO_ROOT",
        "annotations/captions_val2017.json and val2017/<file_name>",
        "https://cocodataset.org/#download (2017 Val images, 2017 Train/Val annotations)",
        f"COCO val2017: 5,000 images x their first 5 captions in annotation order (25,000 texts); {RETRIEVAL}",
        5000),
    DatasetSpec(
        "flickr30k", "retrieval", ds.load_flickr30k_full, "flickr30k", "SMARTCLIP_FLICKR30K_ROOT",
        "results_20130124.token ('<name>.jpg#<n><TAB><caption>' lines) and flickr30k-images/<name>.jpg",
        "https://shannon.cs.illinois.edu/DenotationGraph/ (flickr30k.tar.gz, flickr30k-images.tar)",
        f"Flickr30k full (as the paper): every line of results_20130124.token, 31,783 images x 5 captions "
        f"(158,915 texts); {RETRIEVAL}", 31783),
    DatasetSpec(
        "flickr30k-karpathy", "retrieval", ds.load_flickr30k_karpathy, "flickr30k", "SMARTCLIP_FLICKR30K_ROOT",
        "dataset_flickr30k.json (Karpathy split: 'images' with 'filename', 'split', 'sentences'[].'raw') and "
        "flickr30k-images/<filename>",
        "https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip; images as for flickr30k",
        f"Flickr30k Karpathy test: the 1,000 images with split 'test' x 5 sentences (5,000 texts); {RETRIEVAL}",
        1000),
    DatasetSpec(
        "imagenet", "classification", ds.load_imagenet, "imagenet", "SMARTCLIP_IMAGENET_ROOT",
        "val/<wnid>/*.JPEG: 1,000 WordNet-id class folders (sorted order = class index)",
        "https://image-net.org/download (ILSVRC2012 validation images, sorted into class folders)",
        f"ImageNet-1k val: 50,000 images, 1,000 classes, OpenAI class names; {ZERO_SHOT}", 50000),
    DatasetSpec(
        "imagenet-v2", "classification", ds.load_imagenet_v2, "imagenetv2", "SMARTCLIP_IMAGENET_V2_ROOT",
        f"{ds.IMAGENET_V2_FOLDER}/<class index 0..999>/*.jpeg",
        "https://huggingface.co/datasets/vaishaal/ImageNetV2 (imagenetv2-matched-frequency.tar.gz)",
        f"ImageNet-V2 matched-frequency: 10,000 images, 1,000 classes, OpenAI class names; {ZERO_SHOT}", 10000),
    DatasetSpec(
        "cifar10", "classification", partial(ds.load_cifar, classes=10), "cifar", "SMARTCLIP_CIFAR_ROOT",
        "cifar-10-batches-py/test_batch and cifar-10-batches-py/batches.meta (python pickles)",
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)",
        f"CIFAR-10 test: 10,000 images, 10 classes (label_names, '_' as space); {ZERO_SHOT}", 10000),
    DatasetSpec(
        "cifar100", "classification", partial(ds.load_cifar, classes=100), "cifar", "SMARTCLIP_CIFAR_ROOT",
        "cifar-100-python/test and cifar-100-python/meta (python pickles)",
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version)",
        f"CIFAR-100 test: 10,000 images, 100 fine classes (fine_label_names, '_' as space); {ZERO_SHOT}", 10000),
)


@dataclass(frozen=True)
class BenchmarkInfo:
    name: str
    factory: Callable[..., Benchmark]
    description: str
    prefix: bool = False
    folder: Optional[str] = None
    env: Optional[str] = None


_REGISTRY: Dict[str, BenchmarkInfo] = {}


def register_benchmark(name: str, factory: Callable[..., Benchmark], description: str, prefix: bool = False, *,
                       folder: Optional[str] = None, env: Optional[str] = None) -> None:
    """Add a benchmark. ``prefix=False``: spec ``name`` (or ``name:ROOT``) calls
    ``factory(root: Path, **options)`` with the root found as the module docstring says
    (``folder`` under the data root, default ``name``; ``env`` an environment variable).
    ``prefix=True``: spec ``name:ARG`` calls ``factory(ARG, **options)``."""
    if not name or ":" in name:
        raise ValueError(f"benchmark name must be non-empty without ':', got {name!r}")
    _REGISTRY[name] = BenchmarkInfo(name, factory, description, prefix, folder, env)


def list_benchmarks() -> List[str]:
    """Registered names; prefix benchmarks are listed as ``name:ARG``."""
    return [f"{n}:{'PATH' if n == 'retrieval' else 'DIR'}" if info.prefix else n for n, info in _REGISTRY.items()]


def describe_benchmarks() -> List[BenchmarkInfo]:
    return list(_REGISTRY.values())


def resolve_root(info: BenchmarkInfo, explicit: Optional[str], root: Optional[str]) -> Path:
    if explicit:
        return Path(explicit).expanduser()
    if info.env and os.environ.get(info.env):
        return Path(os.environ[info.env]).expanduser()
    base = root or os.environ.get(DATA_ROOT_ENV)
    if base:
        return Path(base).expanduser() / (info.folder or info.name)
    raise DatasetNotFoundError(
        f"{info.name}: no data location. Give a data root (--data-root DIR or {DATA_ROOT_ENV}=DIR, read from "
        f"DIR/{info.folder or info.name}), {info.env + '=PATH, ' if info.env else ''}or the spec "
        f"'{info.name}:PATH'.")


def get_benchmark(spec: str, root: Optional[str] = None, **options) -> Benchmark:
    """A runnable benchmark from a spec: ``"coco"``, ``"coco:/data/coco"``, ``"retrieval:pairs.csv"``,
    ``"classification:DIR"``, ``"scenes:DIR"``. ``options`` go to the factory (e.g.
    ``expected_images``, ``masked``, ``num_workers``)."""
    name, _, arg = spec.partition(":")
    if name not in _REGISTRY:
        raise KeyError(f"unknown benchmark {name!r}; registered: {', '.join(list_benchmarks())}")
    info = _REGISTRY[name]
    if info.prefix:
        if not arg:
            raise ValueError(f"benchmark {name!r} needs an argument: '{name}:PATH'")
        return info.factory(arg, **options)
    return info.factory(resolve_root(info, arg or None, root), **options)


# ------------------------------------------------------------------------ factories
def _read_templates(templates) -> Optional[List[str]]:
    if templates is None or isinstance(templates, (list, tuple)):
        return list(templates) if templates is not None else None
    path = Path(templates)
    if not path.is_file():
        raise FileNotFoundError(f"templates file not found: {path} (one template per line, '{{}}' for the class)")
    return [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]


def _dataset_benchmark(spec: DatasetSpec, root: Path, *, expected_images: Optional[int] = -1, masked: bool = False,
                       num_workers: int = 0, templates=None, **loader_options) -> Benchmark:
    """``expected_images``: the protocol's size by default; an int for a deliberate subset
    (recorded in the protocol text), None to skip the size check. ``templates`` (zero-shot
    only): a list or a file of prompt templates replacing OpenAI's 80 (recorded too)."""
    if not root.exists():
        raise DatasetNotFoundError(_layout_message(spec, root, f"data root {root} does not exist"))

    def load():
        try:
            return spec.loader(root, **loader_options)
        except DatasetNotFoundError as exc:
            raise DatasetNotFoundError(_layout_message(spec, root, str(exc))) from None

    protocol = spec.protocol
    if expected_images == -1:
        expected_images = spec.expected_images
    elif expected_images != spec.expected_images:
        protocol += f" [SIZE OVERRIDDEN: expected_images={expected_images}, protocol has {spec.expected_images}]"
    if loader_options:
        protocol += f" [loader options: {loader_options}]"
    if spec.task == "retrieval":
        if templates is not None:
            raise TypeError(f"{spec.name} is a retrieval benchmark; 'templates' applies to zero-shot ones")
        return RetrievalBenchmark(spec.name, protocol, load, root=root, expected_images=expected_images,
                                  masked=masked, num_workers=num_workers)
    template_list = _read_templates(templates)
    if template_list is not None:
        protocol += f" [TEMPLATES OVERRIDDEN: {len(template_list)} templates instead of OpenAI's 80]"
    return ClassificationBenchmark(spec.name, protocol, load, root=root, expected_images=expected_images,
                                   masked=masked, num_workers=num_workers, templates=template_list)


def _layout_message(spec: DatasetSpec, root: Path, problem: str) -> str:
    return (f"{spec.name}: {problem}.\nExpected under {root}: {spec.layout}\nPublished at: {spec.source}\n"
            f"Point to it with the spec '{spec.name}:PATH', {spec.env}=PATH, or a data root holding "
            f"'{spec.folder}/'.")


def _retrieval_csv(path: str, *, masked: bool = False, num_workers: int = 0) -> Benchmark:
    p = Path(path).expanduser()
    protocol = f"retrieval:{p.name}: every row of the CSV, captions grouped by image; {RETRIEVAL}"
    return RetrievalBenchmark(f"retrieval:{p.name}", protocol, lambda: ds.load_retrieval_csv(p), root=p.parent,
                              masked=masked, num_workers=num_workers)


def _class_folders(path: str, *, classnames: Optional[str] = None, templates: Optional[str] = None,
                   masked: bool = False, num_workers: int = 0) -> Benchmark:
    p = Path(path).expanduser()
    template_list = _read_templates(templates)
    source = "class names from " + (classnames or "classnames.txt if present, else folder names")
    zero_shot = ZERO_SHOT if not templates else ZERO_SHOT.replace("OpenAI's 80 ImageNet templates",
                                                                  f"{len(template_list)} templates from {templates}")
    protocol = f"classification:{p.name}: one folder per class, every image; {source}; {zero_shot}"
    return ClassificationBenchmark(f"classification:{p.name}", protocol,
                                   lambda: ds.load_class_folders(p, classnames), root=p, masked=masked,
                                   num_workers=num_workers, templates=template_list)


def _scenes(root_dir: str, **options) -> Benchmark:
    # imported on use: the scene benchmark is its own subsystem (smartclip.scenes)
    from smartclip.scenes.evaluate import SceneBenchmark
    return SceneBenchmark(root_dir, **options)


for _spec in PAPER_BENCHMARKS:
    register_benchmark(_spec.name, partial(_dataset_benchmark, _spec), _spec.protocol, folder=_spec.folder,
                       env=_spec.env)
register_benchmark("retrieval", _retrieval_csv,
                   "image/text retrieval over a CSV of image,caption rows (several captions per image allowed); "
                   + RETRIEVAL, prefix=True)
register_benchmark("classification", _class_folders,
                   "zero-shot classification over one folder per class (names from folders or classnames.txt); "
                   + ZERO_SHOT, prefix=True)
register_benchmark("scenes", _scenes, "the embedded scene benchmark (smartclip.scenes.evaluate.SceneBenchmark) on a "
                   "dataset written by smartclip.scenes", prefix=True)
