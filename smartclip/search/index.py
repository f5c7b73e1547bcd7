"""An image index: normalised embeddings of a folder, searched by text or image.

Scores are cosine similarities of unmasked normalised embeddings (docs/method.md §5). Optional
masked scoring ranks image ``i`` for a text query ``q`` by ``<u(i, q), tn_q>`` with
``u(i, q) = (z_i * m_q) / ||z_i * m_q||``: only the dimensions the query's mask selects
count. Exact search (a matrix product) is the default; FAISS (``faiss-cpu``) when asked for:
a flat index returns the same top-k, HNSW an approximate one much faster on large collections.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
import torch

from .encoding import EmbeddingSet, encode_image_source
from .sources import ImageSource

__all__ = ["ImageIndex", "Searcher", "SearchHit", "SearchResult", "build_index", "IndexModelMismatch",
           "faiss_available", "masked_scores", "BACKENDS"]

INDEX_NAME = "index.json"
# exact is the default: per query it is faster than a FAISS flat index (benchmarks/bench_search.py);
# HNSW is faster still on large collections but approximate, so it is opt-in
BACKENDS = ("exact", "faiss", "faiss-hnsw")
_EPS = 1e-12


class IndexModelMismatch(ValueError):
    """The index was built with other weights than the model asked to query it."""


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
        return True
    except ImportError:
        return False


@dataclass
class SearchHit:
    rank: int
    row: int
    id: str
    path: str
    score: float


@dataclass
class SearchResult:
    hits: List[SearchHit]
    query: str
    masked: bool = False
    mask: Optional[np.ndarray] = None  # bool [embed_dim] for text queries
    truncated: bool = False
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        out = {"query": self.query, "masked": self.masked, "truncated": self.truncated, "notes": self.notes,
               "hits": [vars(h) for h in self.hits]}
        if self.mask is not None:
            out["mask"] = {"dims": np.flatnonzero(self.mask).tolist(), "count": int(self.mask.sum()),
                           "embed_dim": int(self.mask.shape[0])}
        return out


def masked_scores(embeddings: np.ndarray, text: np.ndarray, mask: np.ndarray,
                  squared: Optional[np.ndarray] = None) -> np.ndarray:
    """``<(z_i * m) / ||z_i * m||, t / ||t||>`` for every row ``z_i`` (docs/method.md §3, §5), without
    materialising the masked rows: numerators ``Z @ (m * tn)``, norms ``(Z * Z) @ (m * m)``
    (pass ``squared`` = ``Z * Z`` to reuse it across queries)."""
    tn = text / max(float(np.linalg.norm(text)), _EPS)
    m = mask.astype(np.float32)
    num = embeddings @ (m * tn)
    squared = embeddings * embeddings if squared is None else squared
    den = np.sqrt(np.maximum(squared @ (m * m), 0.0))
    return num / np.maximum(den, _EPS)


def _top_k(scores: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    k = min(k, scores.shape[0])
    if k <= 0:
        return np.zeros(0, np.float32), np.zeros(0, np.int64)
    part = np.argpartition(-scores, k - 1)[:k] if k < scores.shape[0] else np.arange(scores.shape[0])
    order = part[np.lexsort((part, -scores[part]))]  # by score, ties by row
    return scores[order].astype(np.float32), order.astype(np.int64)


class ImageIndex:
    """A folder written by ``build_index``: embeddings, ids, image paths and the model hash."""

    def __init__(self, folder, embeddings: EmbeddingSet):
        self.folder = Path(folder)
        self.data = embeddings
        self.embeddings = np.ascontiguousarray(embeddings.embeddings, dtype=np.float32)
        self.root = Path(embeddings.meta["root"])
        self.model_hash = embeddings.meta["model_hash"]
        self.model_spec = embeddings.meta.get("model_spec")
        self._faiss = {}
        self._squared = None  # embeddings ** 2, for masked scoring

    @classmethod
    def load(cls, folder) -> "ImageIndex":
        folder = Path(folder)
        if not (folder / INDEX_NAME).is_file():
            raise FileNotFoundError(f"{folder}: no {INDEX_NAME}; not an index (build one with "
                                    "smartclip search build IMAGES --index DIR)")
        es = EmbeddingSet.load(folder)
        if es.meta.get("kind") != "images" or es.paths is None:
            raise ValueError(f"{folder}: an index must hold image embeddings with paths.txt")
        return cls(folder, es)

    def __len__(self):
        return len(self.data.ids)

    @property
    def ids(self) -> List[str]:
        return self.data.ids

    @property
    def embed_dim(self) -> int:
        return int(self.embeddings.shape[1])

    def image_path(self, row: int) -> Path:
        """The file of row ``row``: only rows of the index name files (what the server serves)."""
        if not isinstance(row, (int, np.integer)) or not 0 <= row < len(self):
            raise IndexError(f"row {row!r} is not in the index (0..{len(self) - 1})")
        p = Path(self.data.paths[row])
        return p if p.is_absolute() else self.root / p

    def check_model(self, model):
        from ..checkpoint import state_dict_hash
        got = state_dict_hash(model)
        if got != self.model_hash:
            raise IndexModelMismatch(
                f"{self.folder} was built with model {self.data.meta.get('model')} (weights hash {self.model_hash}); "
                f"the query model {model.model_name} has hash {got}. Query with the same model "
                f"({self.model_spec or 'see meta.json'}) or rebuild the index.")

    # ------------------------------------------------------------------------ scoring
    def _backend(self, backend: str) -> str:
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        if backend.startswith("faiss") and not faiss_available():
            raise ImportError(f"backend {backend!r} needs FAISS: pip install faiss-cpu (or use backend 'exact')")
        return backend

    def _faiss_index(self, kind: str):
        if kind not in self._faiss:
            import faiss
            d = self.embed_dim
            if kind == "faiss":
                index = faiss.IndexFlatIP(d)
            else:  # graph index for large collections: approximate, much faster than flat
                index = faiss.IndexHNSWFlat(d, 32, faiss.METRIC_INNER_PRODUCT)
                index.hnsw.efSearch = 128
            index.add(self.embeddings)
            self._faiss[kind] = index
        return self._faiss[kind]

    def top_k(self, query: np.ndarray, k: int = 10, backend: str = "exact") -> Tuple[np.ndarray, np.ndarray]:
        """``(scores, rows)`` of the ``k`` rows with the largest inner product with ``query`` [d]."""
        query = np.asarray(query, dtype=np.float32).reshape(-1)
        if query.shape[0] != self.embed_dim:
            raise ValueError(f"query has {query.shape[0]} dimensions, the index {self.embed_dim}")
        backend = self._backend(backend)
        if backend == "exact":
            return _top_k(self.embeddings @ query, k)
        k = min(k, len(self))
        scores, rows = self._faiss_index(backend).search(query[None, :], k)
        keep = rows[0] >= 0
        return scores[0][keep], rows[0][keep].astype(np.int64)

    def top_k_masked(self, text: np.ndarray, mask: np.ndarray, k: int = 10) -> Tuple[np.ndarray, np.ndarray]:
        if self._squared is None:
            self._squared = self.embeddings * self.embeddings
        return _top_k(masked_scores(self.embeddings, np.asarray(text, np.float32), np.asarray(mask), self._squared), k)

    def hits(self, scores, rows) -> List[SearchHit]:
        return [SearchHit(rank=r + 1, row=int(i), id=self.data.ids[i], path=self.data.paths[i], score=float(s))
                for r, (s, i) in enumerate(zip(scores, rows))]

    def searcher(self, model, preprocess, tokenizer, device="cpu", backend: str = "exact") -> "Searcher":
        """A searcher bound to ``model``; refuses a model with other weights than the index's."""
        self.check_model(model)
        self._backend(backend)
        return Searcher(self, model, preprocess, tokenizer, device, backend)


class Searcher:
    def __init__(self, index: ImageIndex, model, preprocess, tokenizer, device="cpu", backend="exact"):
        self.index, self.model, self.preprocess, self.tokenizer = index, model.eval(), preprocess, tokenizer
        self.device, self.backend = device, backend

    @torch.no_grad()
    def text(self, query: str, k: int = 10, masked: bool = False) -> SearchResult:
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the text query is empty")
        tokens, truncated = self.tokenizer.tokenize([query])
        tokens = tokens.to(self.device)
        emb = torch.nn.functional.normalize(self.model.encode_text(tokens).float(), dim=-1)[0].cpu().numpy()
        mask = self.model.text_mask(tokens)[0].detach().cpu().numpy() > 0.5
        notes = []
        if not self.model.mask_trained:
            notes.append("this model's mask network is untrained: the mask is not meaningful")
        if truncated[0]:
            notes.append(f"the query is longer than {self.tokenizer.context_length} tokens and was truncated")
        if masked:
            if not mask.any():
                notes.append("the query's mask selects no dimension: masked scores are all 0")
            scores, rows = self.index.top_k_masked(emb, mask, k)
        else:
            scores, rows = self.index.top_k(emb, k, self.backend)
        return SearchResult(hits=self.index.hits(scores, rows), query=query, masked=masked, mask=mask,
                            truncated=bool(truncated[0]), notes=notes)

    @torch.no_grad()
    def image(self, image: Union[str, Path, bytes, "PIL.Image.Image"], k: int = 10,  # noqa: F821
              name: Optional[str] = None) -> SearchResult:
        """Images similar to ``image`` (a path, the bytes of a file, or a PIL image)."""
        from ..data.images import load_image
        pil = image if hasattr(image, "convert") else load_image(image, name=name)
        pixels = self.preprocess(pil.convert("RGB"))[None].to(self.device)
        emb = torch.nn.functional.normalize(self.model.encode_image(pixels).float(), dim=-1)[0].cpu().numpy()
        scores, rows = self.index.top_k(emb, k, self.backend)
        label = name or (str(image) if isinstance(image, (str, Path)) else "<image>")
        return SearchResult(hits=self.index.hits(scores, rows), query=label)


def build_index(model, preprocess, source: Union[ImageSource, str, Path], index_dir, *, model_spec: Optional[str] = None,
                batch_size: int = 64, shard_size: int = 1024, device="cpu", progress: bool = False,
                restart: bool = False) -> ImageIndex:
    """Encode the images of ``source`` (a folder, CSV or ``ImageSource``) into ``index_dir``.
    ``model_spec`` (a name or checkpoint path) is recorded so queries can load the same model."""
    from .sources import list_images
    if not isinstance(source, ImageSource):
        source = list_images(source)
    encode_image_source(model, preprocess, source, index_dir, batch_size=batch_size, shard_size=shard_size,
                        device=device, progress=progress, model_spec=model_spec, restart=restart)
    (Path(index_dir) / INDEX_NAME).write_text(json.dumps({"format": "smartclip-index", "version": 1}))
    return ImageIndex.load(index_dir)
