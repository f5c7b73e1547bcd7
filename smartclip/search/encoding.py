"""Batched, resumable encoding of image collections and text files to embedding folders.

An embedding folder holds::

    embeddings.npy    float32 [n, embed_dim], row i belongs to line i of ids.txt
    ids.txt           one id per line
    paths.txt         (images) the file of each row, relative to meta.json's "root" unless absolute
    failed.tsv        id <TAB> reason, for every unreadable image (skipped, never silently)
    meta.json         kind, model name and hash, normalisation, counts
    embeddings.parquet  (optional, needs pyarrow) columns id, embedding

Image runs work in shards of ``shard_size`` images written to ``.partial/`` as they finish;
a run that is stopped and started again with the same inputs and model continues after the
last finished shard.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import atomic_write_text
from .sources import ImageSource, TextSource

__all__ = ["EmbeddingSet", "encode_image_source", "encode_text_source", "EncodingError", "write_parquet",
           "embed_pil_images", "embed_texts"]

PARTIAL = ".partial"


class EncodingError(RuntimeError):
    """An output folder that holds another run, or files that do not agree with each other."""


@dataclass
class EmbeddingSet:
    embeddings: np.ndarray
    ids: List[str]
    meta: dict
    paths: Optional[List[str]] = None
    failed: List[Tuple[str, str]] = field(default_factory=list)

    def save(self, folder) -> Path:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "ids.txt", "".join(i + "\n" for i in self.ids))
        if self.paths is not None:
            atomic_write_text(folder / "paths.txt", "".join(p + "\n" for p in self.paths))
        atomic_write_text(folder / "failed.tsv", "".join(f"{i}\t{reason}\n" for i, reason in self.failed))
        _save_npy(folder / "embeddings.npy", np.ascontiguousarray(self.embeddings, dtype=np.float32))
        # meta.json last: its presence marks a complete folder
        atomic_write_text(folder / "meta.json", json.dumps(self.meta, indent=2))
        return folder

    @classmethod
    def load(cls, folder, mmap: bool = False) -> "EmbeddingSet":
        folder = Path(folder)
        if not (folder / "meta.json").is_file():
            raise EncodingError(f"{folder}: no meta.json; not a finished embedding folder "
                                "(written by smartclip encode / smartclip search build)")
        meta = json.loads((folder / "meta.json").read_text())
        emb = np.load(folder / "embeddings.npy", mmap_mode="r" if mmap else None)
        ids = _read_lines(folder / "ids.txt")
        paths = _read_lines(folder / "paths.txt") if (folder / "paths.txt").is_file() else None
        failed = [tuple(line.split("\t", 1)) for line in _read_lines(folder / "failed.tsv")] \
            if (folder / "failed.tsv").is_file() else []
        if emb.ndim != 2 or emb.shape[0] != len(ids) or (paths is not None and len(paths) != len(ids)):
            raise EncodingError(f"{folder}: embeddings.npy has shape {emb.shape} but ids.txt has {len(ids)} lines"
                                + (f" and paths.txt {len(paths)}" if paths is not None else ""))
        return cls(embeddings=emb, ids=ids, meta=meta, paths=paths, failed=failed)


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` through a temporary name beside ``path`` (``<stem>.tmp.npy``) and a rename."""
    tmp = path.with_name(path.stem + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


def _read_lines(path: Path) -> List[str]:
    text = path.read_text(encoding="utf-8")
    return text.split("\n")[:-1] if text else []


def write_parquet(es: EmbeddingSet, path) -> Path:
    """``id`` and ``embedding`` (list of float32) columns; needs pyarrow."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError("Parquet output needs pyarrow: pip install pyarrow") from e
    emb = np.asarray(es.embeddings, dtype=np.float32)
    values = pa.array(emb.reshape(-1))
    column = pa.FixedSizeListArray.from_arrays(values, emb.shape[1])
    table = pa.table({"id": pa.array(es.ids, pa.string()), "embedding": column})
    pq.write_table(table, str(path))
    return Path(path)


# ------------------------------------------------------------------------------ embedding
def embed_pil_images(model, preprocess, images: Sequence, batch_size: int, device) -> torch.Tensor:
    """L2-normalised image embeddings [n, d] of PIL images (float32, CPU)."""
    from ..eval import encode_images

    emb = encode_images(model, preprocess, list(images), batch_size=batch_size, device=device, progress=False)
    return F.normalize(emb.float().cpu(), dim=-1)


def embed_texts(model, tokenizer, texts: Sequence[str], batch_size: int, device,
                progress: bool = False) -> torch.Tensor:
    """L2-normalised text embeddings [n, d] (float32, CPU)."""
    from ..eval import encode_texts

    emb = encode_texts(model, tokenizer, list(texts), batch_size=batch_size, device=device, progress=progress)
    return F.normalize(emb.float().cpu(), dim=-1)


def _model_info(model) -> dict:
    from ..checkpoint import state_dict_hash
    return {"model": model.model_name, "model_hash": state_dict_hash(model),
            "embed_dim": int(model.embed_dim)}


def _fingerprint(*parts) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(json.dumps(part, sort_keys=True).encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


# ---------------------------------------------------------------------------- image runs
def encode_image_source(model, preprocess, source: ImageSource, out_dir, *, batch_size: int = 64,
                        shard_size: int = 1024, device="cpu", progress: bool = False,
                        model_spec: Optional[str] = None, restart: bool = False,
                        on_shard: Optional[Callable[[int], None]] = None) -> EmbeddingSet:
    """Encode every image of ``source`` into the embedding folder ``out_dir`` (normalised).

    Unreadable images are listed in ``failed`` with the reason and skipped. With the same
    inputs and model, an interrupted run continues after its last finished shard;
    ``restart`` discards a partial run. ``on_shard(i)`` is called after shard ``i`` is saved.
    """
    out_dir = Path(out_dir)
    if shard_size < 1 or batch_size < 1:
        raise ValueError(f"shard_size and batch_size must be >= 1 (got {shard_size}, {batch_size})")
    info = _model_info(model)
    fingerprint = _fingerprint("images", info["model_hash"], source.ids, source.paths, shard_size)
    meta = {"kind": "images", "source": source.description, "root": str(source.root), **info,
            "model_spec": model_spec, "normalized": True, "fingerprint": fingerprint}
    if (out_dir / "meta.json").is_file():
        done = EmbeddingSet.load(out_dir)
        if done.meta.get("fingerprint") == fingerprint:
            return done  # already finished with these inputs and this model
        if not restart:
            raise EncodingError(f"{out_dir} already holds embeddings of another input or model (or shard size) "
                                f"({done.meta.get('source')}, model {done.meta.get('model')} "
                                f"{done.meta.get('model_hash')}); choose another folder, or pass --restart "
                                f"(restart=True) to replace them")
    partial = out_dir / PARTIAL
    manifest_file = partial / "manifest.json"
    if partial.exists() and (restart or not manifest_file.is_file()
                             or json.loads(manifest_file.read_text()).get("fingerprint") != fingerprint):
        if not restart and manifest_file.is_file():
            raise EncodingError(f"{partial} is an unfinished run of another input or model (or shard size); "
                                "pass --restart (restart=True) to discard it, or choose another output folder")
        shutil.rmtree(partial)
    partial.mkdir(parents=True, exist_ok=True)
    atomic_write_text(manifest_file, json.dumps({"fingerprint": fingerprint, "count": len(source)}))

    n_shards = (len(source) + shard_size - 1) // shard_size
    done_shards = [s for s in range(n_shards) if (partial / f"shard-{s:05d}.json").is_file()]
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(source), initial=min(len(done_shards) * shard_size, len(source)),
                   unit="img", desc="encode")
    model.eval()
    for s in range(n_shards):
        if s in done_shards:
            continue
        lo, hi = s * shard_size, min((s + 1) * shard_size, len(source))
        images, ok, failed = _load_images(source, lo, hi)
        emb = embed_pil_images(model, preprocess, images, batch_size, device) if images \
            else torch.zeros(0, info["embed_dim"])
        _save_npy(partial / f"shard-{s:05d}.npy", emb.numpy().astype(np.float32))
        atomic_write_text(partial / f"shard-{s:05d}.json", json.dumps({"rows": ok, "failed": failed}))
        if bar is not None:
            bar.update(hi - lo)
        if on_shard is not None:
            on_shard(s)
    if bar is not None:
        bar.close()

    rows, failed, parts = [], [], []
    for s in range(n_shards):
        record = json.loads((partial / f"shard-{s:05d}.json").read_text())
        rows += record["rows"]
        failed += [tuple(f) for f in record["failed"]]
        parts.append(np.load(partial / f"shard-{s:05d}.npy"))
    embeddings = np.concatenate(parts) if parts else np.zeros((0, info["embed_dim"]), np.float32)
    meta.update({"count": len(rows), "failed": len(failed), "ignored_files": len(source.ignored)})
    es = EmbeddingSet(embeddings=embeddings, ids=[source.ids[i] for i in rows], meta=meta,
                      paths=[source.paths[i] for i in rows], failed=failed)
    es.save(out_dir)
    shutil.rmtree(partial)
    return es


def _load_images(source: ImageSource, lo: int, hi: int) -> Tuple[list, List[int], List[Tuple[str, str]]]:
    """The images ``lo:hi`` of ``source`` that load, their indices, and ``(id, reason)`` of the others."""
    from ..data.errors import BadImage
    from ..data.images import load_image

    images, ok, failed = [], [], []
    for i in range(lo, hi):
        try:
            images.append(load_image(source.resolve(i), name=source.ids[i]))
            ok.append(i)
        except BadImage as e:
            reason = f"{e.kind}: {e.detail}" if e.detail else e.kind
            failed.append((source.ids[i], " ".join(reason.split())))  # one line in failed.tsv
    return images, ok, failed


def encode_text_source(model, tokenizer, source: TextSource, out_dir=None, *, batch_size: int = 256,
                       device="cpu", progress: bool = False, model_spec: Optional[str] = None) -> EmbeddingSet:
    """Normalised embeddings of every text of ``source``; saved to ``out_dir`` when given. The
    number of texts longer than the context (truncated) is recorded in meta.json."""
    info = _model_info(model)
    tokenizer.reset_counts()
    emb = embed_texts(model, tokenizer, source.texts, batch_size, device, progress)
    meta = {"kind": "texts", "source": source.description, **info, "model_spec": model_spec,
            "normalized": True, "count": len(source), "blank_lines_skipped": len(source.blank_lines),
            "truncated": int(tokenizer.num_truncated), "context_length": int(tokenizer.context_length)}
    es = EmbeddingSet(embeddings=emb.numpy().astype(np.float32), ids=list(source.ids), meta=meta)
    if out_dir is not None:
        es.save(out_dir)
    return es
