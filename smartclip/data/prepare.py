"""``prepare``: decode and resize a dataset once, into WebDataset shards training reads exactly.

The paper trains with no augmentation, so the only image work is deterministic: open_clip's
resize (shorter side to the model's size, bicubic), a centre crop and the normalisation.
``prepare`` stores each image right after that resize, losslessly; when training reads it,
the model's resize finds the size it would produce and returns the image unchanged, so the
tensors equal those from the original file (tests/test_data_prepare.py checks it bit for bit).

Layout of the output folder ``DIR``::

    DIR/000000.tar ...       samples "{n:09d}": .ppm (or .png) image, .txt caption, .json provenance
    DIR/manifest.json        written last: counts by kind, per-shard samples and sha256, the recipe
    DIR/.prepare/recipe.json the settings, written first (a rerun with others is refused)
    DIR/.prepare/NNNNNN.json one per finished shard (what a resumed run skips)

Records are numbered in source order after the same scan training makes (same readers, the
ShareGPT4V-1k rule, missing/empty files left out) and record ``i`` always goes to shard
``i // shard_size``, so the shards do not depend on the number of workers or on
interruptions: a shard is written to ``.tar.tmp`` and renamed, then its marker is written;
a rerun redoes exactly the shards without a marker.
"""
from __future__ import annotations

import gzip
import io
import json
import logging
import multiprocessing as mp
import os
import sys
import tarfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2
from PIL import Image
from torchvision.transforms import CenterCrop, Resize

from .. import __version__
from ..fileio import atomic_write_json, sha256_file
from ..tokenizer import Tokenizer
from .config import DataConfig
from .errors import ALL_KINDS, REPAIRED_KINDS, SKIPPED_KINDS, BadCaption, BadImage, DataError
from .images import load_image
from .prepared import MANIFEST, STATE_DIR, describe_recipe, find_prepared, image_recipe, read_manifest
from .records import RecordTable
from .shards import IMAGE_EXTENSIONS, index_shard, read_sample, shard_caption
from .sources import read_map_source

__all__ = ["PrepareResult", "prepare_dataset", "prepared_recipe", "STORE_MODES", "IMAGE_FORMATS"]

log = logging.getLogger("smartclip.data")

LAYOUT_VERSION = 1
STORE_MODES = ("resized", "crop")     # the image after the model's resize / after its centre crop too
IMAGE_FORMATS = ("ppm", "png")        # lossless formats PIL reads; PPM is uncompressed (fastest to read)
Event = Tuple[str, str, str]


# ------------------------------------------------------------------ recipe


def _source_files(cfg: DataConfig) -> List[dict]:
    out = []
    for spec in cfg.sources():
        files = []
        for path in spec.files:
            st = os.stat(path)
            files.append({"path": os.path.abspath(path), "size": st.st_size, "mtime": st.st_mtime})
        out.append({"spec": spec.spec, "kind": spec.kind, "files": files})
    return out


def prepared_recipe(cfg: DataConfig, preprocess_cfg: dict, *, context_length: int, shard_size: int,
                    store: str, image_format: str) -> dict:
    """Everything that decides the samples of a prepared folder (compared on every rerun)."""
    return {"layout": LAYOUT_VERSION, "image": image_recipe(preprocess_cfg), "store": store,
            "image_format": image_format, "shard_size": shard_size, "context_length": context_length,
            "sources": _source_files(cfg),
            "data": {"csv_image_key": cfg.csv_image_key, "csv_caption_key": cfg.csv_caption_key,
                     "csv_separator": cfg.csv_separator, "image_roots": cfg.image_roots,
                     "exclude_sharegpt4v_eval": cfg.exclude_sharegpt4v_eval, "check_files": cfg.check_files,
                     "max_image_pixels": cfg.max_image_pixels},
            "smartclip_version": __version__}


def _first_difference(old: dict, new: dict, prefix: str = "") -> Optional[str]:
    for key in sorted(set(old) | set(new)):
        if key == "smartclip_version" and not prefix:
            continue
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            diff = _first_difference(a, b, f"{prefix}{key}.")
            if diff:
                return diff
        elif a != b:
            if key == "sources":
                return "the sources (or their size / modification time) changed"
            return f"{prefix}{key} was {json.dumps(a)}, now {json.dumps(b)}"
    return None


# ------------------------------------------------------------------ the plan


@dataclass
class _Plan:
    """Every usable record of the sources in order (after the scan), and what the scan found."""
    sources: list = field(default_factory=list)   # RecordTable, or (shard path, [(key, members)])
    offsets: List[int] = field(default_factory=lambda: [0])
    records: int = 0                              # records read by the scan (good + bad)
    events: List[Event] = field(default_factory=list)

    @property
    def total(self) -> int:
        return self.offsets[-1]

    def add(self, source, n: int):
        self.sources.append(source)
        self.offsets.append(self.offsets[-1] + n)


def _make_plan(cfg: DataConfig) -> _Plan:
    plan = _Plan()
    for spec in cfg.sources():
        if spec.kind == "wds":
            for path in spec.files:
                samples, events = index_shard(path)
                plan.records += len(samples) + len(events)
                plan.events.extend(events)
                plan.add((path, samples), len(samples))
            continue
        good, bad = read_map_source(spec, cfg)
        plan.records += len(good) + len(bad)
        plan.events.extend(bad)
        plan.add(RecordTable(spec.files[0], good), len(good))
    return plan


# ------------------------------------------------------------------ workers

_W: dict = {}  # per-process state: the plan, the resize, the tokenizer, the settings


def _init_worker(state: dict):
    torch.set_num_threads(1)
    _W.clear()
    _W.update(state)
    _W["tokenizer"] = Tokenizer(state["context_length"])
    _W["open_shards"] = {}


def _tar_bytes(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    if fmt == "png":
        img.save(buf, format="PNG", compress_level=1)
    else:
        img.save(buf, format="PPM")
    return buf.getvalue()


def _shard_file(path: str):
    handles = _W["open_shards"]
    if path not in handles:
        if len(handles) > 8:
            for f in handles.values():
                f.close()
            handles.clear()
        handles[path] = gzip.open(path, "rb") if path.endswith((".gz", ".tgz")) else open(path, "rb")
    return handles[path]


def _load(plan: _Plan, i: int):
    """``(image source, name, caption or BadCaption, where, provenance)`` of usable record ``i``."""
    s = int(np.searchsorted(plan.offsets, i, side="right") - 1)
    source, local = plan.sources[s], i - plan.offsets[s]
    if isinstance(source, RecordTable):
        rec = source[local]
        return rec.image, None, rec.caption, rec.where, {"source": rec.source, "record": rec.index, "image": rec.image}
    path, samples = source
    key, members = samples[local]
    group = read_sample(_shard_file(path), members)
    where = f"{path} sample {key}"
    try:
        caption = shard_caption(group)
    except BadCaption as e:
        caption = e
    ext = next(e for e in group if e in IMAGE_EXTENSIONS)
    return group[ext], f"{where}.{ext}", caption, where, {"source": path, "key": key, "image": f"{path}/{key}.{ext}"}


def _write_shard(shard: int) -> dict:
    """Decode, resize and store the records of one shard; returns its marker (counts, events, sha256)."""
    plan, size, out = _W["plan"], _W["shard_size"], _W["out"]
    name = f"{shard:06d}.tar"
    final, tmp = os.path.join(out, name), os.path.join(out, f"{name}.{os.getpid()}.tmp")
    counts, events, written = Counter(), [], 0
    ext = _W["image_format"]
    with open(tmp, "wb") as f:
        with tarfile.open(fileobj=f, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in range(shard * size, min(plan.total, (shard + 1) * size)):
                if _W["parent"] is not None and os.getppid() != _W["parent"]:
                    os._exit(1)  # the command was killed: a worker left behind stops instead of racing a rerun
                image, img_name, caption, where, provenance = _load(plan, i)
                if isinstance(caption, BadCaption):  # shards: the caption is checked first, as `data check` does
                    events.append((caption.kind, where, caption.detail))
                    continue
                repairs: List[str] = []
                try:
                    img = load_image(image, name=img_name, max_pixels=_W["max_pixels"], repairs=repairs)
                except BadImage as e:
                    events.append((e.kind, where, f"{e.path}: {e.detail}"))
                    continue
                events.extend((k, where, provenance["image"]) for k in repairs)
                _, truncated = _W["tokenizer"].tokenize([caption])
                if truncated[0]:
                    events.append(("truncated_caption", where, f"longer than {_W['context_length']} tokens"))
                for step in _W["steps"]:
                    img = step(img)
                key = f"{i:09d}"
                _tar_bytes(tar, f"{key}.{ext}", _encode(img, ext))
                _tar_bytes(tar, f"{key}.txt", caption.encode("utf-8"))
                _tar_bytes(tar, f"{key}.json", json.dumps({"id": key, **provenance, "where": where},
                                                           ensure_ascii=False).encode("utf-8"))
                written += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, final)
    for kind, _, _ in events:
        counts[kind] += 1
    marker = {"name": name, "first": shard * size, "samples": written, "bytes": os.path.getsize(final),
              "sha256": sha256_file(final), "counts": dict(counts), "events": [list(e) for e in events]}
    atomic_write_json(os.path.join(out, STATE_DIR, f"{shard:06d}.json"), marker, indent=None)
    return marker


# ------------------------------------------------------------------ the command


@dataclass
class PrepareResult:
    folder: str
    manifest: dict
    already_done: bool          # a finished folder: nothing was written
    shards_written: int
    seconds: float
    samples_written: int = 0    # by this run (a resumed run writes only the missing shards)

    def summary(self) -> str:
        m = self.manifest
        if self.already_done:
            return (f"{self.folder} is already prepared: {m['written']} samples in {len(m['shards'])} shard(s) "
                    f"for {describe_recipe(m['recipe']['image'])}; nothing to do")
        size = sum(s["bytes"] for s in m["shards"])
        lines = [f"{self.folder}: {m['written']} samples in {len(m['shards'])} shard(s), {size / 2**30:.2f} GiB "
                 f"({size / max(1, m['written']) * 1000 / 2**20:.0f} MiB per 1,000 samples); "
                 f"{m['records']} records read, {m['bad']} skipped ({m['bad_fraction']:.2%})"]
        for title, kinds in (("skipped", SKIPPED_KINDS), ("repaired", REPAIRED_KINDS)):
            for k in kinds:
                if m["counts"][k]:
                    lines.append(f"  {title:<8} {k:<20} {m['counts'][k]:>8}")
        rate = self.samples_written / max(self.seconds, 1e-9)
        lines.append(f"{self.shards_written} shard(s) written in {self.seconds:.1f} s"
                     + (f" ({rate:.0f} samples/s)" if rate else "") + f"; {os.path.join(self.folder, MANIFEST)}")
        if not m["ok"]:
            lines.append(f"FAIL: more bad input than max_bad_fraction={m['max_bad_fraction']:g}; "
                         f"`smartclip data check` lists every bad record")
        return "\n".join(lines)


class _Progress:
    """A progress bar with rate and ETA on a terminal; a line every 30 s (and at 100 %) otherwise."""

    def __init__(self, total: int, done: int, enabled: bool = True, stream=None):
        self.total, self.done, self.start, self.last = total, done, time.perf_counter(), 0.0
        self.first = done
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.bar = None
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=done, unit="sample", desc="prepare", file=self.stream,
                            dynamic_ncols=True, smoothing=0.05)

    def update(self, n: int):
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = time.perf_counter()
        if self.enabled and (now - self.last >= 30 or self.done >= self.total):
            self.last = now
            rate = (self.done - self.first) / max(now - self.start, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            print(f"prepare: {self.done}/{self.total} records ({self.done / max(1, self.total):.1%}), "
                  f"{rate:.0f}/s, ETA {_duration(eta)}", file=self.stream, flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


def _duration(seconds: float) -> str:
    if seconds == float("inf"):
        return "unknown"
    seconds = int(seconds)
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"


def _pil_steps(preprocess_cfg: dict, store: str) -> List[Callable]:
    """The PIL-level steps of the model's eval transform that ``prepare`` applies before storing:
    its resize (and, for ``store="crop"``, its centre crop). Only transforms that give back an
    image unchanged when it already has their output size qualify."""
    compose = image_transform_v2(PreprocessCfg(**preprocess_cfg), is_train=False)
    steps = list(compose.transforms)
    if not isinstance(steps[0], Resize):
        raise DataError(f"prepare: open_clip resize_mode={preprocess_cfg.get('resize_mode')!r} with size "
                        f"{preprocess_cfg.get('size')} resizes with {type(steps[0]).__name__}, which is not "
                        f"idempotent; only 'shortest' (square size) and 'squash' can be stored exactly")
    if store == "resized":
        return [steps[0]]
    if len(steps) > 1 and isinstance(steps[1], CenterCrop):
        return steps[:2]
    return [steps[0]]  # squash: the resize is the crop


def prepare_dataset(cfg: DataConfig, out: str, *, preprocess_cfg: dict, context_length: int = 248,
                    workers: int = 1, shard_size: int = 1000, store: str = "resized", image_format: str = "ppm",
                    progress: bool = True) -> PrepareResult:
    """Write the usable records of ``cfg`` into ``out`` as WebDataset shards of images stored
    after the resize of a model with ``preprocess_cfg`` (see the module docstring).
    Resumes an interrupted run; a finished folder is left alone; other settings are refused."""
    if isinstance(cfg, str):
        cfg = DataConfig(train=cfg)
    _check_arguments(cfg, store, image_format, shard_size, workers)
    steps = _pil_steps(preprocess_cfg, store)
    recipe = prepared_recipe(cfg, preprocess_cfg, context_length=context_length, shard_size=shard_size,
                             store=store, image_format=image_format)
    state_dir = os.path.join(out, STATE_DIR)
    if _open_out(out, state_dir, recipe):
        return PrepareResult(out, read_manifest(out), True, 0, 0.0)

    plan = _make_plan(cfg)
    n_shards = -(-plan.total // shard_size)
    markers = _finished_shards(out, state_dir, n_shards)
    todo = [s for s in range(n_shards) if s not in markers]
    done_records = sum(min(plan.total, (s + 1) * shard_size) - s * shard_size for s in markers)
    if markers:
        log.info("prepare: resuming %s: %d of %d shard(s) already written", out, len(markers), n_shards)
    state = {"parent": os.getpid(), "plan": plan, "shard_size": shard_size, "out": out, "steps": steps,
             "image_format": image_format, "max_pixels": cfg.max_image_pixels, "context_length": context_length}
    start = time.perf_counter()
    _write_shards(todo, markers, state, workers, _Progress(plan.total, done_records, enabled=progress))
    seconds = time.perf_counter() - start
    manifest = _manifest(cfg, plan, markers, n_shards, recipe)
    if manifest["written"] == 0:
        raise DataError(f"{cfg.train}: no usable records to prepare ({plan.records} read, {manifest['bad']} bad)")
    atomic_write_json(os.path.join(out, MANIFEST), manifest, indent=1)
    return PrepareResult(out, manifest, False, len(todo), seconds, sum(markers[s]["samples"] for s in todo))


def _check_arguments(cfg: DataConfig, store: str, image_format: str, shard_size: int, workers: int) -> None:
    cfg.validate()
    if store not in STORE_MODES:
        raise ValueError(f"store={store!r}; expected one of {', '.join(STORE_MODES)}")
    if image_format not in IMAGE_FORMATS:
        raise ValueError(f"image format {image_format!r}; expected one of {', '.join(IMAGE_FORMATS)}")
    if shard_size < 1 or workers < 1:
        raise ValueError(f"shard_size={shard_size}, workers={workers}; both must be >= 1")
    for spec in cfg.sources():
        folder = find_prepared(spec.spec, spec.files) if spec.kind == "wds" else None
        if folder:
            raise DataError(f"{folder} is itself a prepared folder (its images are already resized); "
                            f"prepare from the original images instead")


def _open_out(out: str, state_dir: str, recipe: dict) -> bool:
    """Make ``out`` ready for writing with ``recipe``; True when it already holds the finished set.
    A folder prepared with other settings, or one that is not a prepare folder, is refused."""
    recipe_path = os.path.join(state_dir, "recipe.json")
    if os.path.isfile(recipe_path):
        with open(recipe_path) as f:
            old = json.load(f)
        diff = _first_difference(old, json.loads(json.dumps(recipe)))
        if diff:
            raise DataError(f"{out} was prepared with other settings ({diff}); use another --out folder, "
                            f"or delete {out} to start over")
        if os.path.isfile(os.path.join(out, MANIFEST)):
            return True
    elif os.path.isdir(out) and os.listdir(out):
        raise DataError(f"--out {out} exists and is not a prepare folder; choose an empty or new folder")
    os.makedirs(state_dir, exist_ok=True)
    if not os.path.isfile(recipe_path):
        atomic_write_json(recipe_path, recipe)
    for name in os.listdir(out):
        if name.endswith(".tmp"):
            os.remove(os.path.join(out, name))  # a shard an interrupted run was writing
    return False


def _finished_shards(out: str, state_dir: str, n_shards: int) -> Dict[int, dict]:
    """The markers of shards an earlier run finished (marker written and the tar complete)."""
    markers: Dict[int, dict] = {}
    for s in range(n_shards):
        path = os.path.join(state_dir, f"{s:06d}.json")
        if os.path.isfile(path):
            with open(path) as f:
                marker = json.load(f)
            tar = os.path.join(out, marker["name"])
            if os.path.isfile(tar) and os.path.getsize(tar) == marker["bytes"]:
                markers[s] = marker
    return markers


def _write_shards(todo: List[int], markers: Dict[int, dict], state: dict, workers: int, bar: "_Progress") -> None:
    """Write the shards in ``todo`` (in ``workers`` processes), adding their markers to ``markers``."""
    plan, shard_size = state["plan"], state["shard_size"]
    try:
        if workers > 1 and len(todo) > 1:
            ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()
            with ctx.Pool(min(workers, len(todo)), initializer=_init_worker, initargs=(state,)) as pool:
                for marker in pool.imap_unordered(_write_shard, todo):
                    markers[marker["first"] // shard_size] = marker
                    bar.update(min(plan.total, marker["first"] + shard_size) - marker["first"])
        else:
            _init_worker({**state, "parent": None})
            for s in todo:
                marker = _write_shard(s)
                markers[s] = marker
                bar.update(min(plan.total, marker["first"] + shard_size) - marker["first"])
    finally:
        bar.close()


def _manifest(cfg: DataConfig, plan, markers: Dict[int, dict], n_shards: int, recipe: dict) -> dict:
    counts = Counter({k: 0 for k in ALL_KINDS})
    for ev in plan.events:
        counts[ev[0]] += 1
    for s in range(n_shards):
        counts.update(markers[s]["counts"])
    bad = sum(counts[k] for k in SKIPPED_KINDS)
    bad_fraction = bad / max(1, plan.records)
    return {
        "records": plan.records, "written": sum(markers[s]["samples"] for s in range(n_shards)), "bad": bad,
        "bad_fraction": bad_fraction, "max_bad_fraction": cfg.max_bad_fraction,
        "ok": plan.records > 0 and bad_fraction <= cfg.max_bad_fraction,
        "counts": {k: int(counts[k]) for k in ALL_KINDS},
        "shards": [{k: markers[s][k] for k in ("name", "samples", "bytes", "sha256")} for s in range(n_shards)],
        "recipe": recipe,
        "events": [list(e) for e in plan.events] + [e for s in range(n_shards) for e in markers[s]["events"]],
    }
