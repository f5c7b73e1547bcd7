"""CLIP_benchmark's zero-shot classification datasets, read by CLIP_benchmark itself.

Every classification dataset CLIP_benchmark knows is a benchmark here, in both on-disk
layouts it reads: ``clip_benchmark/<id>`` (the torchvision-style root its
``build_dataset`` expects) and ``clip_benchmark/wds/<id>`` (its WebDataset layout, the
published ``clip-benchmark/wds_*`` sets). CLIP_benchmark constructs the dataset and gives
its English class names and templates; we encode (trimmed text, our preprocessing) and
score with its metric definitions (``metrics.py``: top-1/top-5, mean per-class recall,
mAP for multi-label sets). The sets themselves, as data, are in ``clip_benchmark_catalogue.py``;
every use of CLIP_benchmark's internals is in ``clip_benchmark_compat.py``.

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
import dataclasses
import os
import re
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import torch

from . import clip_benchmark_compat as compat
from . import wds
from .benchmark import DatasetFormatError, DatasetNotFoundError, IncompleteBenchmarkError, _FileBenchmark, \
    cached_classifier
from .clip_benchmark_catalogue import (CLIP_BENCHMARK_DATASETS, METRICS, MULTILABEL_METRIC, PAPER_MODELS,
                                       PAPER_SOURCE, PAPER_TABLE3, PAPER_ZEROSHOT, CBDataset, paper_row,
                                       torchvision_folder, wds_folder)
from .clip_benchmark_compat import clip_benchmark_version
from .encode import ImageLoadError, encode_dataset
from .zeroshot import classify, classify_multilabel, openai_templates

__all__ = ["CBDataset", "CLIP_BENCHMARK_DATASETS", "PAPER_TABLE3", "PAPER_ZEROSHOT", "PAPER_MODELS", "PAPER_SOURCE",
           "METRICS", "MULTILABEL_METRIC", "ClipBenchmarkClassification", "OpenedSet", "clip_benchmark_version",
           "paper_row", "torchvision_folder", "wds_folder"]


@dataclass
class OpenedSet:
    """A CLIP_benchmark dataset built and checked, ready to encode, with what was found wrong on
    the way (``problems`` by kind, ``missing`` by name). Map-style sets have ``indices`` (the
    samples present) and, for one-file-per-sample readers, ``files``; WebDataset sets have the
    ``inventory`` of their shards instead."""
    dataset: object                   # what CLIP_benchmark's build_dataset returned
    read_as: str                      # how it was built, for the result
    fingerprint: List[object]         # what the feature cache keys the images by
    notes: List[str]                  # what CLIP_benchmark printed or warned while building
    problems: Counter = field(default_factory=Counter)
    missing: List[str] = field(default_factory=list)
    indices: Optional[List[int]] = None
    files: Optional[List[str]] = None
    inventory: Optional[wds.WdsInventory] = None

    @property
    def listed(self) -> int:
        """Samples the data lists: the map-style set's length, or the shards' sample count."""
        return self.inventory.samples if self.inventory is not None else len(self.dataset)


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
        scoring = "masked scoring <u(i,q), tn_q> (docs/method.md §5)" if self.masked else \
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
        found = compat.imagenetv2_location(self.root)
        if found is None:
            raise DatasetNotFoundError(
                f"{self.name}: neither {self.root / compat.IMAGENETV2_FOLDER} nor "
                f"{self.root / compat.IMAGENETV2_ARCHIVE_FOLDER} exists.\nExpected: {self.info.layout}\n"
                f"Published at: {self.info.source}\nNothing is downloaded.")
        return found

    def _build(self, location: Path, build_name: str, v2_images: Optional[int] = None):
        try:
            return compat.build(build_name, location, v2_images)
        except (DatasetNotFoundError, ImportError):
            raise
        except Exception as exc:  # noqa: BLE001 - any reader failure becomes one clear error (its cause chained)
            raise DatasetFormatError(self._reader_failure(exc)) from exc

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
        folders = compat.class_folders(ds)
        if folders is None or len(folders) == len(ds.classes):
            return
        missing = ""
        if len(ds.classes) == 1000:
            absent = sorted(set(compat.imagenet_wordnet_ids()) - set(folders))
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
        compat.require_clip_benchmark(self.info.needs if self.layout == "torchvision" else ())
        with contextlib.ExitStack() as stack:  # temporary views of the data live until the images are encoded
            opened = self._open_wds(allow_partial, stack) if self.layout == "wds" else \
                self._open_torchvision(allow_partial, stack)
            opened, features, targets, counts = self._encode(opened, model, preprocess, device, batch_size,
                                                             allow_partial, progress, feature_cache, stack)
        classnames = list(opened.dataset.classes)
        if self.classnames_tidy:
            classnames = [c.replace("_", " ") for c in classnames]
        templates = self._templates(opened.dataset)
        classifier = cached_classifier(model, tokenizer, classnames, templates, self.masked, batch_size, device,
                                       progress, feature_cache)
        if self.info.multilabel:
            metrics = classify_multilabel(features, targets, classifier, masked=self.masked)
            counts["classes_without_positives"] = int((targets.sum(0) == 0).sum())
        else:
            metrics = classify(features, targets, classifier, ks=(1, 5), masked=self.masked)
        counts.update({"images": features.shape[0], "classes": len(classnames), "templates": len(templates),
                       "truncated_prompts": classifier["truncated"], "missing": len(opened.missing),
                       "problems": dict(opened.problems)})
        self.protocol = self._protocol(len(templates))
        result = self._result(metrics, counts, opened.missing, bool(opened.missing), time.time() - started)
        result["zeroshot"] = {"clip_benchmark_version": clip_benchmark_version(), "dataset": self.dataset_id,
                              "layout": self.layout, "read_as": opened.read_as, "classnames": classnames,
                              "templates": templates, "metric": "mAP" if self.info.multilabel else "top1",
                              "notes": opened.notes}
        if paper_row(self.dataset_id):
            result["paper"] = paper_row(self.dataset_id)
        return result

    def _templates(self, ds) -> List[str]:
        if isinstance(self.template_choice, (list, tuple)):
            return list(self.template_choice)
        if self.template_choice == "openai":
            return openai_templates()
        templates = compat.dataset_templates(ds)
        if templates is None:
            raise DatasetFormatError(f"{self.name}: CLIP_benchmark gives no list of templates for {self.dataset_id}")
        return templates

    # ---------------------------------------------------------------- opening a set
    def _open_torchvision(self, allow_partial: bool, stack: contextlib.ExitStack) -> OpenedSet:
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
        files = compat.sample_files(ds)
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
        return OpenedSet(ds, f"clip_benchmark build_dataset({build_name!r})", [build_name, *fingerprint], notes,
                         problems, missing, indices=present, files=files)

    def _open_wds(self, allow_partial: bool, stack: contextlib.ExitStack) -> OpenedSet:
        try:
            inv = wds.inventory(self.root)
        except DatasetNotFoundError as exc:
            published = f"https://huggingface.co/datasets/clip-benchmark/{wds_folder(self.dataset_id)}"
            raise DatasetNotFoundError(
                f"{self.name}: {exc}\nPublished at: {published}\nNothing is downloaded; give the root as "
                f"'{self.name}:PATH' or put it at <data root>/{self.folder}.") from None
        return self._open_inventory(inv, allow_partial, stack)

    def _open_inventory(self, inv: wds.WdsInventory, allow_partial: bool, stack: contextlib.ExitStack) -> OpenedSet:
        """The WebDataset set of ``inv``: where it has bad samples, read from a view without them."""
        problems = Counter(inv.problems)
        missing = inv.missing()
        self._size_check(inv.samples, problems, missing, listed_exact=not inv.bad_shards)
        if missing and not allow_partial:
            raise IncompleteBenchmarkError(self.name, missing, {"samples": inv.samples, "problems": dict(problems)})
        location = self.root
        if not inv.clean:
            location = wds.write_view(inv, stack.enter_context(tempfile.TemporaryDirectory(prefix="smartclip-wds-")))
        ds, notes = self._build(location, f"wds/{self.dataset_id}")
        read_as = f"clip_benchmark build_dataset('wds/{self.dataset_id}')" + \
            (" on a view without the bad samples" if not inv.clean else "")
        return OpenedSet(ds, read_as, ["wds", *inv.fingerprint()], notes, problems, missing, inventory=inv)

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

    # ---------------------------------------------------------------- encoding
    def _encode(self, opened: OpenedSet, model, preprocess, device, batch_size, allow_partial, progress, cache,
                stack) -> Tuple[OpenedSet, torch.Tensor, torch.Tensor, Dict[str, object]]:
        """Encode the images of ``opened`` (through the feature cache). Returns the set as
        scored (its unreadable images added to its problems; for a WebDataset set with an image
        that does not decode, rebuilt on a view without it), features, targets and counts."""
        counts: Dict[str, object] = {"images_listed": opened.listed}
        if self.expected_images is not None:
            counts["expected_images"] = self.expected_images
        decoding = {"decode_errors": compat.wds_decode_errors()} if opened.inventory is not None else {}

        def compute(o: OpenedSet):
            features, targets, rows, failures = encode_dataset(
                model, o.dataset, preprocess, o.indices, batch_size, device, progress, self.num_workers,
                desc=f"{self.name} images", **decoding)
            return torch.cat([features, targets.float().reshape(len(targets), -1)], 1), {
                "dim": features.shape[1], "rows": rows, "failures": {str(k): v for k, v in failures.items()},
                "integer_targets": not targets.is_floating_point()}

        key = self._feature_key("images", opened.fingerprint, model, (opened.indices,))
        try:
            stacked, info = cache.fetch(key, lambda: compute(opened)) if cache else compute(opened)
        except ImageLoadError as exc:  # CLIP_benchmark's WebDataset pipeline stops at an image it cannot decode
            if opened.inventory is None:
                raise
            opened = self._without_undecodable(opened, exc, allow_partial, stack)
            stacked, info = compute(opened)
        opened = self._with_unreadable(opened, info["failures"])
        if opened.missing and not allow_partial:
            raise IncompleteBenchmarkError(self.name, opened.missing, {**counts, "problems": dict(opened.problems)})
        features, targets = stacked[:, :info["dim"]], stacked[:, info["dim"]:]
        targets = targets.squeeze(1).long() if info["integer_targets"] else targets
        return opened, features, targets, counts

    def _with_unreadable(self, opened: OpenedSet, failures: Dict[str, str]) -> OpenedSet:
        """``opened`` with the samples that failed to load (``{index: error}``) counted and named."""
        if not failures:
            return opened
        problems, missing = Counter(opened.problems), list(opened.missing)
        for index, error in failures.items():
            problems["unreadable_image"] += 1
            name = self._relative(opened.files[int(index)]) if opened.files else f"sample {index}"
            missing.append(f"{name} (unreadable_image: {error})")
        return dataclasses.replace(opened, problems=problems, missing=missing)

    def _without_undecodable(self, opened: OpenedSet, exc: ImageLoadError, allow_partial: bool,
                             stack: contextlib.ExitStack) -> OpenedSet:
        """CLIP_benchmark's WebDataset pipeline stops at the first image it cannot decode.
        Refused unless partial results are allowed; then every image is decoded to find the
        bad ones, and the set is opened again on a view without them."""
        inv = opened.inventory
        if not allow_partial:
            raise IncompleteBenchmarkError(self.name, opened.missing + [
                f"an image CLIP_benchmark's WebDataset pipeline could not decode (unreadable_image: "
                f"{str(exc)[:300]}); with allow_partial every image is checked and the bad ones are left out"],
                {"samples": inv.samples, "problems": {**opened.problems, "unreadable_image": 1}}) from exc
        if not wds.verify_images(inv):
            raise exc
        return self._open_inventory(inv, True, stack)
