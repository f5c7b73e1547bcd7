"""Search backends of ``smartclip.search.ImageIndex`` on random unit vectors: query time of
FAISS flat / HNSW and of masked scoring, as ratios to exact search in the same run, and
HNSW's recall@10 against exact. ``--clusters C`` draws the vectors around C centres (closer to
real image embeddings, which HNSW handles much better than uniform random vectors).

    .venv/bin/python benchmarks/bench_search.py --sizes 10000 100000 --dim 512 --queries 50
"""
from __future__ import annotations

import argparse
import time

import numpy as np


class _Index:
    """An ImageIndex over given embeddings, without a folder."""

    @staticmethod
    def make(embeddings):
        from smartclip.search.encoding import EmbeddingSet
        from smartclip.search.index import ImageIndex
        ids = [str(i) for i in range(len(embeddings))]
        es = EmbeddingSet(embeddings, ids, {"root": "/", "model_hash": "bench", "kind": "images"}, paths=ids)
        return ImageIndex("bench", es)


def _time(fn, queries, repeat=1):
    fn(queries[0])  # warm-up (builds FAISS indexes lazily)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        for q in queries:
            fn(q)
        best = min(best, (time.perf_counter() - t) / len(queries))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clusters", type=int, default=0, help="0: uniform on the sphere")
    args = parser.parse_args()

    import faiss
    import torch
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"dim {args.dim}, k {args.k}, {args.queries} queries, {args.threads} threads, "
          f"{'uniform vectors' if not args.clusters else f'{args.clusters} clusters'}")
    print("| images | exact ms/query | faiss flat | faiss HNSW | HNSW build s | HNSW recall@10 | masked |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        emb = rng.standard_normal((n, args.dim), dtype=np.float32)
        if args.clusters:
            centres = rng.standard_normal((args.clusters, args.dim), dtype=np.float32)
            emb = centres[rng.integers(0, args.clusters, n)] + 0.5 * emb
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
        queries = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
        if args.clusters:
            queries = emb[rng.integers(0, n, args.queries)] + 0.1 * queries
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        masks = rng.random((args.queries, args.dim)) < 0.5
        index = _Index.make(emb)
        exact = _time(lambda q: index.top_k(q, args.k, "exact"), queries)
        flat = _time(lambda q: index.top_k(q, args.k, "faiss"), queries)
        t = time.perf_counter()
        index._faiss_index("faiss-hnsw")
        build = time.perf_counter() - t
        hnsw = _time(lambda q: index.top_k(q, args.k, "faiss-hnsw"), queries)
        it = iter(range(10**9))
        masked = _time(lambda q: index.top_k_masked(q, masks[next(it) % len(masks)], args.k), queries)
        recall = np.mean([len(set(index.top_k(q, args.k, "exact")[1]) & set(index.top_k(q, args.k, "faiss-hnsw")[1]))
                          / args.k for q in queries])
        print(f"| {n:,} | {exact * 1e3:.2f} | {exact / flat:.2f}x | {exact / hnsw:.1f}x | {build:.1f} | "
              f"{recall:.3f} | {exact / masked:.2f}x |")
    print("(columns after the first: speed-up over exact, >1 is faster; masked scoring is exact only)")


if __name__ == "__main__":
    main()
