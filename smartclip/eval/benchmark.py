"""The Benchmark protocol and the two generic runners (retrieval, zero-shot classification).

A dataset only has to produce a :class:`RetrievalData` or :class:`ClassificationData`
(files and labels in its own published layout, see ``datasets.py``); the runners do the
rest the same way for every dataset: check that every file is there, encode once
(through the feature cache), score, and report counts, missing files and the protocol.
Datasets that CLIP_benchmark constructs have their own runner (``clip_benchmark.py``),
sharing the classifier (:func:`cached_classifier`), the metrics and the reporting.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .encode import encode_image_items, encode_text_items
from .metrics import retrieval_recall
from .zeroshot import build_classifier, classify, openai_templates

__all__ = ["Benchmark", "RetrievalBenchmark", "ClassificationBenchmark", "RetrievalData", "ClassificationData",
           "FeatureCache", "DatasetNotFoundError", "DatasetFormatError", "IncompleteBenchmarkError",
           "cached_classifier"]

MAX_LISTED = 20  # missing names quoted in an error message (all of them go into the result)


class DatasetNotFoundError(FileNotFoundError):
    """A benchmark's data root or annotation file is absent; the message names the expected
    layout and where the dataset is published."""


class DatasetFormatError(ValueError):
    """An annotation file that does not parse, naming the file, record and field."""


class IncompleteBenchmarkError(RuntimeError):
    """Images or captions of a benchmark are missing and partial results were not allowed."""

    def __init__(self, benchmark: str, missing: List[str], counts: dict):
        self.benchmark, self.missing, self.counts = benchmark, missing, counts
        shown = "\n  ".join(missing[:MAX_LISTED])
        more = f"\n  ... and {len(missing) - MAX_LISTED} more" if len(missing) > MAX_LISTED else ""
        kinds = counts.get("problems") or {}
        by_kind = f" by kind: {', '.join(f'{k} {v}' for k, v in kinds.items())};" if kinds else ""
        super().__init__(
            f"{benchmark}: {len(missing)} missing item(s);{by_kind} refusing to report a score on a partial "
            f"set (counts: {counts}). Missing or unreadable:\n  {shown}{more}\n"
            f"Complete the data, or pass allow_partial=True (CLI: --allow-partial) to score what is "
            f"present; the result is then marked partial.")


@dataclass
class RetrievalData:
    """``images[i]`` a path (or in-memory image); ``captions[k]`` belongs to image
    ``text_to_image[k]``. Every image the annotations name is listed, even when its file
    is absent (the runner reports it) or it has no caption (reported as such);
    ``missing`` holds other defects found while reading (e.g. an empty caption file)."""
    images: List[Union[str, Path, np.ndarray]]
    captions: List[str]
    text_to_image: List[int]
    missing: List[str] = field(default_factory=list)
    notes: Dict[str, object] = field(default_factory=dict)


@dataclass
class ClassificationData:
    images: List[Union[str, Path, np.ndarray]]
    labels: List[int]
    classnames: List[str]
    missing: List[str] = field(default_factory=list)
    notes: Dict[str, object] = field(default_factory=dict)


class FeatureCache:
    """Features keyed by model hash + benchmark + a digest of the exact inputs (paths with
    size and mtime, or pixel bytes; caption strings; preprocessing; context length). Kept in
    memory, and in ``directory/<model hash>/`` as safetensors when a directory is given."""

    def __init__(self, model_hash: str, directory: Optional[Union[str, Path]] = None):
        self.model_hash = model_hash
        self.directory = Path(directory) / model_hash if directory else None
        self._memory: Dict[str, Tuple[torch.Tensor, dict]] = {}
        self.hits = 0
        self.misses = 0

    def fetch(self, key: str, compute: Callable[[], Tuple[torch.Tensor, dict]]) -> Tuple[torch.Tensor, dict]:
        """``(features, info)`` for ``key``, computing and storing them on a miss."""
        if key in self._memory:
            self.hits += 1
            return self._memory[key]
        path = self.directory / f"{key}.safetensors" if self.directory else None
        if path is not None and path.is_file():
            from safetensors import safe_open
            with safe_open(str(path), framework="pt") as f:
                value = (f.get_tensor("features"), json.loads(f.metadata()["info"]))
            self.hits += 1
            self._memory[key] = value
            return value
        self.misses += 1
        features, info = compute()
        self._memory[key] = (features, info)
        if path is not None:
            from safetensors.torch import save_file
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            save_file({"features": features.contiguous()}, str(tmp), metadata={"info": json.dumps(info)})
            os.replace(tmp, path)
        return features, info


def _digest(parts: Sequence[object]) -> str:
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            h.update(part.tobytes())
        elif isinstance(part, (str, os.PathLike)) and os.path.isfile(part):
            st = os.stat(part)
            h.update(f"{os.fspath(part)}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(repr(part).encode())
        h.update(b"\0")
    return h.hexdigest()[:20]


def cached_classifier(model, tokenizer, classnames: Sequence[str], templates: Sequence[str], masked: bool,
                      batch_size: int, device, progress: bool, cache: Optional[FeatureCache]) -> Dict[str, object]:
    """:func:`build_classifier` through the feature cache, keyed by class names, templates and
    context length only: benchmarks sharing them (ImageNet and ImageNet-V2) share one."""
    def compute():
        c = build_classifier(model, tokenizer, classnames, templates, max(batch_size, 64), device, progress,
                             with_masks=masked)
        stacked = torch.cat([c["weights"], c["masks"]]) if masked else c["weights"]
        return stacked, {"truncated": c["truncated"]}
    key = "classifier-" + _digest(["classifier", getattr(tokenizer, "context_length", None), masked,
                                   *classnames, "|", *templates])
    stacked, info = cache.fetch(key, compute) if cache else compute()
    n_classes = len(classnames)
    classifier = {"weights": stacked[:n_classes], "truncated": info["truncated"]}
    if masked:
        classifier["masks"] = stacked[n_classes:]
    return classifier


def _name_of(item, root: Optional[Path]) -> str:
    if isinstance(item, (str, os.PathLike)):
        p = Path(item)
        if root is not None:
            try:
                return p.relative_to(root).as_posix()
            except ValueError:
                pass
        return p.as_posix()
    return f"<in-memory image {type(item).__name__}>"


class Benchmark:
    """What every benchmark provides: ``name``, ``protocol`` (exactly what is measured) and
    ``run(model, *, tokenizer, preprocess, ...)`` returning
    ``{"benchmark", "protocol", "metrics", "counts", "partial", "missing"}``."""

    name: str = "benchmark"
    protocol: str = ""

    def run(self, model, *, tokenizer, preprocess, device="cpu", batch_size=64, allow_partial=False,
            progress=True, feature_cache: Optional[FeatureCache] = None) -> dict:  # pragma: no cover
        raise NotImplementedError


class _FileBenchmark(Benchmark):
    """Shared checks of the two runners."""

    def __init__(self, name: str, protocol: str, load: Callable[[], object], root: Optional[Path] = None,
                 expected_images: Optional[int] = None, masked: bool = False, num_workers: int = 0):
        self.name, self.root, self.expected_images = name, Path(root) if root else None, expected_images
        self.masked, self.num_workers = bool(masked), int(num_workers)
        self._load = load
        self.protocol = protocol + ("; masked scoring <u(i,q), tn_q> (docs/method.md §5)" if masked
                                    else "; cosine similarity of unmasked L2-normalised features")

    def _present(self, data) -> Tuple[List[int], List[str], dict]:
        """Indices of images that exist, the full list of missing names, and base counts
        (``counts["problems"]``: the missing and bad items by kind)."""
        missing = list(data.missing)
        problems = {"reader": len(data.missing)} if data.missing else {}
        present = []
        for i, item in enumerate(data.images):
            if isinstance(item, (str, os.PathLike)) and not os.path.isfile(item):
                missing.append(_name_of(item, self.root))
                problems["missing_image"] = problems.get("missing_image", 0) + 1
            else:
                present.append(i)
        listed = len(data.images)
        counts = {"images_listed": len(data.images)}
        if self.expected_images is not None:
            counts["expected_images"] = self.expected_images
            if len(data.images) > self.expected_images:
                raise DatasetFormatError(
                    f"{self.name}: the annotations list {len(data.images)} images but the protocol has "
                    f"{self.expected_images}; is this the right file? (pass expected_images=N for a "
                    f"deliberate subset)")
            if listed < self.expected_images:
                missing.append(f"{self.expected_images - listed} of the protocol's {self.expected_images} images "
                               f"are not listed in the data found (file names unknown)")
                problems["short_of_protocol"] = self.expected_images - listed
        counts.update({k: v for k, v in data.notes.items() if isinstance(v, (int, float, str))})
        counts["problems"] = problems
        return present, missing, counts

    def _feature_key(self, kind: str, parts: Sequence[object], model, extra=()) -> str:
        return f"{self.name}-{kind}-" + _digest([kind, model.preprocess_cfg, *extra, *parts])

    def _images(self, model, preprocess, items, device, batch_size, progress, cache) -> Tuple[torch.Tensor, dict]:
        def compute():
            features, failures = encode_image_items(model, preprocess, items, batch_size, device, progress,
                                                    self.num_workers, desc=f"{self.name} images")
            return features, {"failures": {str(k): v for k, v in failures.items()}}
        if cache is None:
            return compute()
        return cache.fetch(self._feature_key("images", items, model), compute)

    def _readable_images(self, data, model, preprocess, device, batch_size, allow_partial, progress, cache):
        """Encode the images that exist and decode. Returns ``(present, features of the
        readable ones, keep, missing, counts)``: ``keep`` indexes ``present``; ``missing`` names
        every absent or unreadable file. Refuses a partial set unless ``allow_partial``."""
        present, missing, counts = self._present(data)
        if missing and not allow_partial:
            raise IncompleteBenchmarkError(self.name, missing, counts)
        images = [data.images[i] for i in present]
        features, info = self._images(model, preprocess, images, device, batch_size, progress, cache)
        failed = {int(k) for k in info["failures"]}
        for k in sorted(failed):
            missing.append(f"{_name_of(images[k], self.root)} (unreadable: {info['failures'][str(k)]})")
        if failed:
            counts["problems"]["unreadable_image"] = len(failed)
        if failed and not allow_partial:
            raise IncompleteBenchmarkError(self.name, missing, counts)
        keep = [j for j in range(len(images)) if j not in failed]
        return present, features, keep, missing, counts

    def _result(self, metrics, counts, missing, partial, seconds) -> dict:
        return {"benchmark": self.name, "protocol": self.protocol, "metrics": metrics, "counts": counts,
                "partial": bool(partial), "missing": missing, "seconds": round(seconds, 2)}

    def run(self, model, *, tokenizer, preprocess, device="cpu", batch_size=64, allow_partial=False,
            progress=True, feature_cache=None) -> dict:
        """Load the data, encode the images that exist and decode, then :meth:`_score` them."""
        started = time.time()
        data = self._load()
        present, image_features, keep, missing, counts = self._readable_images(
            data, model, preprocess, device, batch_size, allow_partial, progress, feature_cache)
        settings = _RunSettings(model, tokenizer, device, batch_size, allow_partial, progress, feature_cache)
        metrics = self._score(data, _Images(present, image_features, keep), missing, counts, settings)
        counts["missing"] = len(missing)
        return self._result(metrics, counts, missing, bool(missing), time.time() - started)

    def _score(self, data, images: "_Images", missing: List[str], counts: dict,
               settings: "_RunSettings") -> Dict[str, float]:  # pragma: no cover
        """The metrics of one run; may add to ``missing`` and ``counts``."""
        raise NotImplementedError


@dataclass
class _Images:
    """The images of a run: ``present`` indexes the data's images (the ones that exist),
    ``features`` has a row for each of them, ``keep`` indexes ``present`` (those that decoded)."""
    present: List[int]
    features: torch.Tensor
    keep: List[int]


@dataclass
class _RunSettings:
    model: object
    tokenizer: object
    device: object
    batch_size: int
    allow_partial: bool
    progress: bool
    cache: Optional[FeatureCache]


class RetrievalBenchmark(_FileBenchmark):
    """Image <-> text Recall@K over a :class:`RetrievalData` (several captions per image)."""

    def __init__(self, name, protocol, load, root=None, expected_images=None, masked=False, num_workers=0,
                 ks: Sequence[int] = (1, 5, 10)):
        super().__init__(name, protocol, load, root, expected_images, masked, num_workers)
        self.ks = tuple(ks)

    def _score(self, data: RetrievalData, images: _Images, missing, counts, settings: _RunSettings):
        present, keep = images.present, images.keep
        model, tokenizer, device, batch_size = settings.model, settings.tokenizer, settings.device, settings.batch_size
        new_index = {present[j]: n for n, j in enumerate(keep)}
        text_rows = [k for k, i in enumerate(data.text_to_image) if i in new_index]
        captions = [data.captions[k] for k in text_rows]
        t2i = [new_index[data.text_to_image[k]] for k in text_rows]
        with_caption = set(t2i)
        orphans = [j for j in range(len(keep)) if j not in with_caption]
        if orphans:  # images whose captions are all missing
            missing.extend(f"{_name_of(data.images[present[keep[j]]], self.root)} (no caption)" for j in orphans)
            if not settings.allow_partial:
                raise IncompleteBenchmarkError(self.name, missing, counts)
            keep_rows = [j for j in range(len(keep)) if j in with_caption]
            remap = {j: n for n, j in enumerate(keep_rows)}
            t2i = [remap[j] for j in t2i]
            keep = [keep[j] for j in keep_rows]
        image_features = images.features[keep]

        def compute_text():
            features, truncated = encode_text_items(model, tokenizer, captions, max(batch_size, 64), device,
                                                    settings.progress, desc=f"{self.name} captions")
            return features, {"truncated": truncated}
        key = self._feature_key("texts", captions, model, (getattr(tokenizer, "context_length", None),))
        text_features, text_info = settings.cache.fetch(key, compute_text) if settings.cache else compute_text()
        text_masks = None
        if self.masked:
            text_masks = _text_masks(model, tokenizer, captions, device, batch_size)
        metrics = retrieval_recall(image_features, text_features, t2i, ks=self.ks, text_masks=text_masks)
        counts.update({"images": len(keep), "texts": len(captions), "truncated_texts": text_info["truncated"]})
        return metrics


def _text_masks(model, tokenizer, texts, device, batch_size) -> torch.Tensor:
    if not model.mask_trained:
        raise ValueError("masked scoring needs a model whose mask network was trained "
                         "(model.mask_trained is False)")
    out = []
    with torch.no_grad():
        for start in range(0, len(texts), batch_size):
            out.append(model.text_mask(tokenizer(texts[start:start + batch_size]).to(device), soft=False).float().cpu())
    return torch.cat(out)


class ClassificationBenchmark(_FileBenchmark):
    """Zero-shot top-1 / top-5 over a :class:`ClassificationData` with prompt ensembling."""

    def __init__(self, name, protocol, load, root=None, expected_images=None, masked=False, num_workers=0,
                 templates: Optional[Sequence[str]] = None, ks: Sequence[int] = (1, 5)):
        super().__init__(name, protocol, load, root, expected_images, masked, num_workers)
        self.templates = list(templates) if templates is not None else openai_templates()
        self.ks = tuple(ks)

    def _score(self, data: ClassificationData, images: _Images, missing, counts, settings: _RunSettings):
        labels = [data.labels[images.present[j]] for j in images.keep]
        classifier = cached_classifier(settings.model, settings.tokenizer, data.classnames, self.templates,
                                       self.masked, settings.batch_size, settings.device, settings.progress,
                                       settings.cache)
        metrics = classify(images.features[images.keep], labels, classifier, self.ks, masked=self.masked)
        counts.update({"images": len(images.keep), "classes": len(data.classnames), "templates": len(self.templates),
                       "truncated_prompts": classifier["truncated"]})
        return metrics
