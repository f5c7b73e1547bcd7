"""The benchmark registry. The paper's benchmarks are one table of data (``PAPER_BENCHMARKS``):
name, task, where the data lives, its published layout and source, the protocol and the
expected size. ``get_benchmark("coco")`` turns a row into a runnable Benchmark.

Where a named benchmark's data is looked for, first match wins:

1. an explicit path in the spec: ``"coco:/data/coco"``;
2. its own environment variable, e.g. ``SMARTCLIP_COCO_ROOT``;
3. ``<data root>/<folder>`` with the data root from ``root=`` (CLI ``--data-root``) or
   ``SMARTCLIP_DATA``.

CLIP_benchmark's classification datasets are registered as ``clip_benchmark/<id>`` (its
torchvision-style root, folder ``<id>``) and ``clip_benchmark/wds/<id>`` (its WebDataset
layout, folder ``wds_<id>``), see ``clip_benchmark.py``. A *suite* names several benchmarks:
``paper-zeroshot`` (``paper-zeroshot:DATA_ROOT``) is the paper's Table 3, each dataset read
from whichever of its two folders exists.
"""
from __future__ import annotations

import difflib
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from . import datasets as ds
from .benchmark import (Benchmark, ClassificationBenchmark, DatasetNotFoundError, RetrievalBenchmark)
from .clip_benchmark import (CLIP_BENCHMARK_DATASETS, PAPER_ZEROSHOT, ClipBenchmarkClassification, paper_row,
                             torchvision_folder, wds_folder)
from .wds import WDS_LAYOUT

__all__ = ["register_benchmark", "list_benchmarks", "get_benchmark", "describe_benchmarks", "resolve_root",
           "expand_suites", "BenchmarkInfo", "DatasetSpec", "PAPER_BENCHMARKS", "SUITES", "DATA_ROOT_ENV"]

DATA_ROOT_ENV = "SMARTCLIP_DATA"
SUITES: Dict[str, Tuple[str, ...]] = {"paper-zeroshot": PAPER_ZEROSHOT}  # the paper's Table 3
RETRIEVAL = "Recall@1/5/10 both directions; image->text hit when any of the image's captions is in the top K, " \
            "text->image over every caption; text tokenised at 248 with truncation (counted)"
ZERO_SHOT = "zero-shot top-1/top-5 and mean per-class recall; class embedding = mean of L2-normalised embeddings " \
            "of OpenAI's 80 ImageNet templates, renormalised; logits 100*cos; prompts tokenised at 248"


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
    clip_benchmark: Optional[dict] = None  # zero-shot sets read by CLIP_benchmark: its id and protocol options


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
        "long-dci", "retrieval", ds.load_long_dci, "dci", "SMARTCLIP_DCI_ROOT",
        "densely_captioned_images/annotations/<name>.json (fields 'image', 'extra_caption') and "
        "densely_captioned_images/photos/<image>: the DCI release, as for dci",
        "https://github.com/facebookresearch/DCI (densely_captioned_images.tgz); Long-DCI as TULIP builds it "
        "(github.com/ivonajdenkoska/tulip, open_clip/data_prep/dci_long_part.py)",
        f"Long-DCI: every annotation file in densely_captioned_images/annotations/ in sorted file-name order, "
        f"caption = extra_caption alone, records with an empty extra_caption skipped (counted in "
        f"counts.empty_extra_caption), one caption per image (7,602 of the release's 7,805); {RETRIEVAL}", 7602),
    DatasetSpec(
        "imagenet", "classification", None, "imagenet", "SMARTCLIP_IMAGENET_ROOT",
        "val/<wnid>/*.JPEG: 1,000 WordNet-id class folders (sorted order = class index); meta.bin or "
        "ILSVRC2012_devkit_t12.tar.gz beside val/ optional",
        "https://image-net.org/download (ILSVRC2012 validation images, sorted into class folders)",
        "ImageNet-1k val: 50,000 images, 1,000 classes, OpenAI class names (the released scripts' protocol)", 50000,
        {"dataset": "imagenet1k"}),
    DatasetSpec(
        "imagenet-v2", "classification", None, "imagenetv2", "SMARTCLIP_IMAGENET_V2_ROOT",
        "imagenetv2-matched-frequency-format-val/<class index 0..999>/*.jpeg (as extracted; CLIP_benchmark's name "
        "for it, ImageNetV2-matched-frequency/, works too)",
        "https://huggingface.co/datasets/vaishaal/ImageNetV2 (imagenetv2-matched-frequency.tar.gz)",
        "ImageNet-V2 matched-frequency: 10,000 images, 1,000 classes, OpenAI class names (the released scripts' "
        "protocol)", 10000, {"dataset": "imagenetv2"}),
    DatasetSpec(
        "cifar10", "classification", None, "cifar", "SMARTCLIP_CIFAR_ROOT",
        "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}: the whole python archive (torchvision "
        "checks its MD5 sums)",
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-10 python version)",
        "CIFAR-10 test: 10,000 images, 10 classes, label names with '_' as space (the released scripts' protocol)",
        10000, {"dataset": "cifar10", "classnames_tidy": True}),
    DatasetSpec(
        "cifar100", "classification", None, "cifar", "SMARTCLIP_CIFAR_ROOT",
        "cifar-100-python/{train, test, meta}: the whole python archive (torchvision checks its MD5 sums)",
        "https://www.cs.toronto.edu/~kriz/cifar.html (CIFAR-100 python version)",
        "CIFAR-100 test: 10,000 images, 100 fine classes, label names with '_' as space (the released scripts' "
        "protocol)", 10000, {"dataset": "cifar100", "classnames_tidy": True}),
)


@dataclass(frozen=True)
class BenchmarkInfo:
    name: str
    factory: Callable[..., Benchmark]
    description: str
    prefix: bool = False
    folder: Optional[str] = None
    env: Optional[str] = None
    layout: str = ""       # what the benchmark reads under its root (shown by --list)
    group: str = ""        # for --list: a family of similar benchmarks


_REGISTRY: Dict[str, BenchmarkInfo] = {}


def register_benchmark(name: str, factory: Callable[..., Benchmark], description: str, prefix: bool = False, *,
                       folder: Optional[str] = None, env: Optional[str] = None, layout: str = "",
                       group: str = "") -> None:
    """Add a benchmark. ``prefix=False``: spec ``name`` (or ``name:ROOT``) calls
    ``factory(root: Path, **options)`` with the root found as the module docstring says
    (``folder`` under the data root, default ``name``; ``env`` an environment variable).
    ``prefix=True``: spec ``name:ARG`` calls ``factory(ARG, **options)``."""
    if not name or ":" in name:
        raise ValueError(f"benchmark name must be non-empty without ':', got {name!r}")
    if name in SUITES:
        raise ValueError(f"{name!r} is a suite name")
    _REGISTRY[name] = BenchmarkInfo(name, factory, description, prefix, folder, env, layout, group)


def list_benchmarks() -> List[str]:
    """Registered names, then suite names; prefix benchmarks are listed as ``name:ARG``."""
    return [f"{n}:{'PATH' if n == 'retrieval' else 'DIR'}" if info.prefix else n
            for n, info in _REGISTRY.items()] + list(SUITES)


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


def expand_suites(specs: Sequence[str], root: Optional[str] = None) -> Tuple[List[Tuple[str, Optional[str]]],
                                                                            Dict[str, str]]:
    """Replace suite names by their members: ``[(spec, suite or None)]`` and, for members with
    no data in either layout, ``{spec: what was looked for}``. A member ``<id>`` of
    ``paper-zeroshot`` is ``clip_benchmark/wds/<id>`` when ``<data root>/wds_<id>`` exists,
    else ``clip_benchmark/<id>`` (``<data root>/<id>``)."""
    out: List[Tuple[str, Optional[str]]] = []
    absent: Dict[str, str] = {}
    for spec in specs:
        name, _, arg = spec.partition(":")
        if name not in SUITES:
            out.append((spec, None))
            continue
        base = arg or root or os.environ.get(DATA_ROOT_ENV)
        if not base:
            raise DatasetNotFoundError(f"{name}: no data root. Give --data-root DIR (or {DATA_ROOT_ENV}=DIR, or the "
                                       f"spec '{name}:DIR') holding each dataset as wds_<id>/ or <id>/")
        base_path = Path(base).expanduser()
        for dataset_id in SUITES[name]:
            candidates = [(f"clip_benchmark/wds/{dataset_id}", base_path / wds_folder(dataset_id)),
                          (f"clip_benchmark/{dataset_id}", base_path / torchvision_folder(dataset_id))]
            found = next(((n, p) for n, p in candidates if p.is_dir()), None)
            if found is None:
                member = candidates[0][0]
                # first line: what was looked for; then each layout (the CLI shows the first line)
                absent[member] = (f"{dataset_id}: neither {candidates[0][1]} nor {candidates[1][1]} exists\n"
                                  f"    {candidates[0][1]}: CLIP_benchmark's WebDataset layout: {WDS_LAYOUT}\n"
                                  f"    {candidates[1][1]}: {CLIP_BENCHMARK_DATASETS[dataset_id].layout}")
                out.append((member, name))
            else:
                out.append((f"{found[0]}:{found[1]}" if arg else found[0], name))
    return out, absent


def absent_result(spec: str, looked_for: str) -> dict:
    """The result of a suite member with no data, run with partial results allowed."""
    result = {"benchmark": spec, "protocol": "not run: no data", "metrics": {}, "counts": {}, "partial": True,
              "missing": [looked_for], "seconds": 0.0}
    paper = paper_row(spec.split(":")[0].split("/")[-1])
    return {**result, "paper": paper} if paper else result


def suggest_benchmarks(name: str, limit: int = 8) -> List[str]:
    """Registered names close to ``name``: spelled alike (``flikr30k`` -> ``flickr30k``), or
    containing it (``sun397`` -> ``clip_benchmark/sun397``)."""
    names = list(_REGISTRY) + list(SUITES)
    leaf = name.split("/")[-1]
    by_leaf: Dict[str, List[str]] = {}
    for n in names:
        by_leaf.setdefault(n.split("/")[-1], []).append(n)
    close = [n for m in difflib.get_close_matches(leaf, list(by_leaf), n=limit, cutoff=0.75) for n in by_leaf[m]]
    close += difflib.get_close_matches(name, names, n=limit, cutoff=0.9)
    close += [n for n in names if leaf and leaf in n]
    shown = {n: f"{n}:{'PATH' if n == 'retrieval' else 'DIR'}" if n in _REGISTRY and _REGISTRY[n].prefix else n
             for n in names}
    return list(dict.fromkeys(shown[n] for n in close))[:limit]


def get_benchmark(spec: str, root: Optional[str] = None, **options) -> Benchmark:
    """A runnable benchmark from a spec: ``"coco"``, ``"coco:/data/coco"``, ``"retrieval:pairs.csv"``,
    ``"classification:DIR"``, ``"scenes:DIR"``. ``options`` go to the factory (e.g.
    ``expected_images``, ``masked``, ``num_workers``)."""
    name, _, arg = spec.partition(":")
    if name in SUITES:
        raise KeyError(f"{name!r} is a suite of benchmarks; expand it with expand_suites() (evaluate() does)")
    if name not in _REGISTRY:
        close = suggest_benchmarks(name)
        raise KeyError(f"unknown benchmark {name!r}; " + (f"did you mean: {', '.join(close)}? " if close else "")
                       + "see smartclip eval --list")
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
    if spec.clip_benchmark is not None:
        return _legacy_zero_shot(spec, root, expected_images, masked, num_workers, templates, loader_options)

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


def _legacy_zero_shot(spec: DatasetSpec, root: Path, expected_images, masked, num_workers, templates,
                      loader_options) -> Benchmark:
    """``imagenet``, ``imagenet-v2``, ``cifar10``, ``cifar100``: read by CLIP_benchmark like its
    own entries (one code path), with the released scripts' templates and class names."""
    if loader_options:
        raise TypeError(f"{spec.name}: unknown options {sorted(loader_options)}")
    notes = []
    if expected_images == -1:
        expected_images = spec.expected_images
    elif expected_images != spec.expected_images:
        notes.append(f"SIZE OVERRIDDEN: expected_images={expected_images}, protocol has {spec.expected_images}")
    template_list = _read_templates(templates)
    if template_list is not None:
        notes.append(f"TEMPLATES OVERRIDDEN: {len(template_list)} templates instead of OpenAI's 80")
    cb = dict(spec.clip_benchmark)
    return ClipBenchmarkClassification(
        spec.name, cb.pop("dataset"), root, "torchvision", templates=template_list or "openai",
        expected_images=expected_images, description=spec.protocol, notes=notes, folder=spec.folder, masked=masked,
        num_workers=num_workers, **cb)


def _clip_benchmark(dataset_id: str, layout: str, root: Path, *, expected_images: Optional[int] = -1, templates=None,
                    masked: bool = False, num_workers: int = 0) -> Benchmark:
    """``clip_benchmark/<id>`` and ``clip_benchmark/wds/<id>``: CLIP_benchmark's protocol.
    ``expected_images`` overrides the split's size (``None``: unchecked); ``templates`` (a
    list or a file) replaces CLIP_benchmark's."""
    known = CLIP_BENCHMARK_DATASETS[dataset_id].expected_images
    notes = []
    if expected_images == -1:
        expected_images = known
    elif expected_images != known:
        notes.append(f"SIZE OVERRIDDEN: expected_images={expected_images}, the split has {known}")
    template_list = _read_templates(templates)
    name = f"clip_benchmark/{'wds/' if layout == 'wds' else ''}{dataset_id}"
    return ClipBenchmarkClassification(name, dataset_id, root, layout, templates=template_list,
                                       expected_images=expected_images, notes=notes, masked=masked,
                                       num_workers=num_workers)


def _layout_message(spec: DatasetSpec, root: Path, problem: str) -> str:
    return (f"{spec.name}: {problem}.\nExpected under {root}: {spec.layout}\nPublished at: {spec.source}\n"
            f"Point to it with the spec '{spec.name}:PATH', {spec.env}=PATH, or a data root holding "
            f"'{spec.folder}/'.")


def _retrieval_csv(path: str, *, masked: bool = False, num_workers: int = 0) -> Benchmark:
    p = Path(path).expanduser()
    if not p.is_file():  # checked here, before any model is loaded
        raise DatasetNotFoundError(f"retrieval:{path}: no such file (a CSV of image paths and captions)")
    protocol = f"retrieval:{p.name}: every row of the CSV, captions grouped by image; {RETRIEVAL}"
    return RetrievalBenchmark(f"retrieval:{p.name}", protocol, lambda: ds.load_retrieval_csv(p), root=p.parent,
                              masked=masked, num_workers=num_workers)


def _class_folders(path: str, *, classnames: Optional[str] = None, templates: Optional[str] = None,
                   masked: bool = False, num_workers: int = 0) -> Benchmark:
    p = Path(path).expanduser()
    if not p.is_dir():
        raise DatasetNotFoundError(f"classification:{path}: no such folder (one sub-folder of images per class)")
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
                       env=_spec.env, layout=_spec.layout, group="paper")
for _id, _info in CLIP_BENCHMARK_DATASETS.items():
    register_benchmark(f"clip_benchmark/{_id}", partial(_clip_benchmark, _id, "torchvision"),
                       f"CLIP_benchmark {_id}, torchvision layout", folder=torchvision_folder(_id),
                       layout=_info.layout, group="clip_benchmark")
    register_benchmark(f"clip_benchmark/wds/{_id}", partial(_clip_benchmark, _id, "wds"),
                       f"CLIP_benchmark {_id}, WebDataset layout", folder=wds_folder(_id), layout=WDS_LAYOUT,
                       group="clip_benchmark")
register_benchmark("retrieval", _retrieval_csv,
                   "image/text retrieval over a CSV of image,caption rows (several captions per image allowed); "
                   + RETRIEVAL, prefix=True)
register_benchmark("classification", _class_folders,
                   "zero-shot classification over one folder per class (names from folders or classnames.txt); "
                   + ZERO_SHOT, prefix=True)
register_benchmark("scenes", _scenes, "the embedded scene benchmark (smartclip.scenes.evaluate.SceneBenchmark) on a "
                   "dataset written by smartclip.scenes", prefix=True)
