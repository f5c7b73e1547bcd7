"""``SceneBenchmark``: the metrics that test SmartCLIP's three claims on the scene dataset.

Claim 1 (short partial captions: CLIP drops concepts) -> retrieval with long and short
captions, concept recognition. Claim 2 (long captions entangle concepts) -> a short prompt
naming one concept ranks test scenes (mAP) and classifies one-object scenes; a linear
probe per concept reads what the frozen image embedding keeps. Claim 3 (masks identify
concepts) -> Jaccard overlap of hard masks for captions naming the same concept vs
different concepts, and the intersection of two captions' masks that share exactly one
concept vs that concept's own mask (against a concept neither names, as the control).

Retrieval and recognition use unmasked, L2-normalised embeddings (docs/method.md §5). Mask metrics
are reported only for models whose mask network was trained (``model.mask_trained``).
"""
from __future__ import annotations

from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from .generator import CONCEPTS, SceneObject, concept_prompt, load_labels, object_phrase, short_caption

__all__ = ["SceneBenchmark", "jaccard", "concept_mask_usage", "PROTOCOL"]

PROTOCOL = (
    "scene benchmark v1: test = scenes whose concept pairs never co-occur in training; "
    "retrieval R@1/R@5 with unmasked normalised features (long: 1 caption per image; short: every "
    "short caption, image->text hit when any of its captions is in the top K); concept mAP over "
    "test scenes with the prompt 'a <concept>'; single-object top-1 over all concept prompts; "
    "linear probe (logistic regression, C=1) per concept on frozen train-image features, test mAP; "
    "mask metrics on hard masks: Jaccard same vs different concept (one-object phrases), "
    "algebra = Jaccard(mask(A) & mask(B), mask('a <c>')) for captions A, B sharing only concept c, "
    "control = same with a concept neither names")


# which scenes each evaluation split scores: (multi-object scenes, one-object scenes)
EVAL_SPLITS = {"test": ("test", "single"), "val": ("val", "val_single")}


def jaccard(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row-wise Jaccard overlap of 0/1 masks; two empty masks count as identical (1)."""
    a, b = a.bool(), b.bool()
    inter = (a & b).sum(-1).float()
    union = (a | b).sum(-1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _objects(record: dict) -> List[SceneObject]:
    return [SceneObject(**o) for o in record["objects"]]


class SceneBenchmark:
    """The scene benchmark on a dataset written by :func:`smartclip.scenes.write_dataset`.

    ``probe_train_images``: training images used to fit the linear probes;
    ``phrases_per_concept`` / ``pairs_per_concept``: captions for the mask metrics;
    ``seed``: which captions are drawn for the mask metrics; ``masked``: rank retrieval and
    concept prompts with masked scores ``<u(i, q), tn_q>`` (docs/method.md §5) instead of cosine;
    ``split``: ``test`` (the test and one-object scenes) or ``val`` (the validation split of
    training-like scenes and its one-object scenes, where settings are chosen).
    """

    name = "scenes"
    protocol = PROTOCOL

    def __init__(self, root_dir: str, *, probe_train_images: int = 2000, phrases_per_concept: int = 8,
                 pairs_per_concept: int = 8, seed: int = 0, masked: bool = False, split: str = "test"):
        self.root = Path(root_dir)
        self.masked = bool(masked)
        if split not in EVAL_SPLITS:
            raise ValueError(f"scene benchmark: split must be one of {list(EVAL_SPLITS)}, got {split!r}")
        self.split = split
        if self.masked:
            self.protocol = PROTOCOL + "; retrieval and concept prompts ranked by masked scores (docs/method.md §5)"
        if split != "test":
            self.protocol += f"; scored on the {split} split ({' + '.join(EVAL_SPLITS[split])}), not the test scenes"
        self.labels = load_labels(root_dir)
        absent = [s for s in EVAL_SPLITS[split] if not self.labels["splits"].get(s)]
        if absent:
            raise ValueError(f"scene benchmark {root_dir}: the dataset has no {' / '.join(absent)} scenes; write it "
                             f"with num_val=... and num_val_single=... to score the {split} split")
        self.probe_train_images = probe_train_images
        self.phrases_per_concept = phrases_per_concept
        self.pairs_per_concept = pairs_per_concept
        self.seed = seed
        self.concepts = [c["name"] for c in self.labels["concepts"]]

    # ---------------------------------------------------------------- data
    def _records(self, split: str, allow_partial: bool, missing: List[str]) -> List[dict]:
        records = self.labels["splits"][split]
        present = []
        for r in records:
            if (self.root / r["filepath"]).is_file():
                present.append(r)
            else:
                missing.append(r["filepath"])
        if missing and not allow_partial:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            raise FileNotFoundError(
                f"scene benchmark {self.root}: {len(missing)} image(s) listed in labels.json are missing "
                f"({shown}); regenerate the dataset or pass allow_partial=True to score the rest")
        return present

    def _multi_hot(self, records: Sequence[dict]) -> np.ndarray:
        index = {c: i for i, c in enumerate(self.concepts)}
        y = np.zeros((len(records), len(self.concepts)), dtype=np.int64)
        for row, r in enumerate(records):
            for o in r["objects"]:
                y[row, index[o["concept"]]] = 1
        return y

    # ---------------------------------------------------------------- run
    def run(self, model, *, tokenizer, preprocess, device="cpu", batch_size=64, allow_partial=False,
            progress=True, feature_cache=None) -> dict:
        from . import _features as F
        from smartclip.eval.metrics import masked_scores
        if self.masked and not (model.mask_trained and hasattr(model, "text_mask")):
            raise ValueError("scene benchmark: masked scoring needs a trained mask network "
                             "(model.mask_trained is False)")
        missing: List[str] = []
        multi_split, single_split = EVAL_SPLITS[self.split]
        test = self._records(multi_split, allow_partial, missing)
        single = self._records(single_split, allow_partial, missing)
        train = self._records("train", allow_partial, missing)[: self.probe_train_images]
        if not test or not single:
            raise ValueError(f"scene benchmark {self.root}: no test or single-object images to score")

        def images(records, what):
            paths = [str(self.root / r["filepath"]) for r in records]
            return F.encode_images(model, preprocess, paths, batch_size=batch_size, device=device,
                                   progress=progress, desc=f"scenes {what} images", cache=feature_cache)

        def texts(strings, what):
            return F.encode_texts(model, tokenizer, strings, batch_size=batch_size, device=device,
                                  progress=progress, desc=f"scenes {what}", cache=feature_cache)

        def masks(strings):
            return _hard_masks(model, tokenizer, strings, device, batch_size).float() if self.masked else None

        def scores(image_features, text_features, strings):
            if self.masked:
                return masked_scores(image_features, text_features, masks(strings))
            return image_features @ text_features.T

        test_img, single_img, train_img = images(test, "test"), images(single, "single"), images(train, "probe")
        metrics: Dict[str, float] = {}

        # claim 1 / 2: retrieval with long and with short captions
        long_captions = [r["long_caption"] for r in test]
        long_txt = texts(long_captions, "long captions")
        r = F.retrieval_recall(test_img, long_txt, list(range(len(test))), ks=(1, 5), text_masks=masks(long_captions))
        metrics.update({f"long_{k}": v for k, v in r.items()})
        short, short_owner = [], []
        for i, rec in enumerate(test):
            short += rec["short_captions"]
            short_owner += [i] * len(rec["short_captions"])
        short_txt = texts(short, "short captions")
        r = F.retrieval_recall(test_img, short_txt, short_owner, ks=(1, 5), text_masks=masks(short))
        metrics.update({f"short_{k}": v for k, v in r.items()})

        # claim 2: a prompt naming one concept
        prompt_texts = [concept_prompt(c) for c in self.concepts]
        prompts = texts(prompt_texts, "concept prompts")
        y_test = self._multi_hot(test)
        metrics["concept_map"] = 100 * _mean_ap(y_test, scores(test_img, prompts, prompt_texts).numpy())
        truth = np.array([self.concepts.index(r["objects"][0]["concept"]) for r in single])
        predicted = scores(single_img, prompts, prompt_texts).argmax(1).numpy()
        metrics["single_acc"] = 100 * float((predicted == truth).mean())
        metrics["probe_map"] = 100 * _probe_map(train_img.numpy(), self._multi_hot(train), test_img.numpy(), y_test)

        counts = {"images": len(test) + len(single), "texts": len(test) + len(short) + len(self.concepts),
                  "test_images": len(test), "single_images": len(single), "probe_train_images": len(train),
                  "long_captions": len(test), "short_captions": len(short), "concepts": len(self.concepts)}

        # claim 3: masks
        if model.mask_trained and hasattr(model, "text_mask"):
            mask_metrics, mask_counts = self.mask_metrics(model, tokenizer, test, device=device, batch_size=batch_size)
            metrics.update(mask_metrics)
            counts.update(mask_counts)
        return {"benchmark": self.name, "protocol": self.protocol, "metrics": metrics, "counts": counts,
                "partial": bool(missing), "missing": missing}

    # ---------------------------------------------------------------- masks
    def mask_captions(self, test: Sequence[dict]):
        """Deterministic captions for the mask metrics, drawn from the test scenes' objects.

        Returns ``(phrases, phrase_concepts, pairs)``: one-object phrases with all attributes and
        the concept each names; ``pairs`` are ``(caption_a, caption_b, shared, control)`` where the
        two-object captions share exactly concept ``shared`` and ``control`` is named by neither."""
        rng = np.random.default_rng(self.seed)
        by_concept: Dict[str, List[SceneObject]] = {c: [] for c in self.concepts}
        for rec in test:
            for o in _objects(rec):
                by_concept[o.concept].append(o)
        phrases, owners = [], []
        for c in self.concepts:
            objs = by_concept[c]
            for i in rng.permutation(len(objs))[: self.phrases_per_concept]:
                phrases.append(object_phrase(objs[i]))
                owners.append(c)
        pairs = []
        for c in self.concepts:
            objs = by_concept[c]
            others = [x for x in self.concepts if x != c and by_concept[x]]
            if len(objs) < 2 or len(others) < 3:
                continue
            for _ in range(self.pairs_per_concept):
                i, j = rng.choice(len(objs), 2, replace=False)
                x, y, z = (others[k] for k in rng.choice(len(others), 3, replace=False))
                ox = by_concept[x][rng.integers(len(by_concept[x]))]
                oy = by_concept[y][rng.integers(len(by_concept[y]))]
                a = short_caption([objs[i], ox] if rng.random() < 0.5 else [ox, objs[i]])
                b = short_caption([objs[j], oy] if rng.random() < 0.5 else [oy, objs[j]])
                pairs.append((a, b, c, z))
        return phrases, owners, pairs

    @torch.no_grad()
    def mask_metrics(self, model, tokenizer, test: Sequence[dict], device="cpu", batch_size=64):
        phrases, owners, pairs = self.mask_captions(test)
        masks = _hard_masks(model, tokenizer, phrases, device, batch_size)
        owner = np.array(owners)
        same, diff = [], []
        for i, j in combinations(range(len(phrases)), 2):
            (same if owner[i] == owner[j] else diff).append((i, j))
        out: Dict[str, float] = {}

        def mean_jaccard(index_pairs):
            if not index_pairs:
                return float("nan")
            ii, jj = map(list, zip(*index_pairs))
            return float(jaccard(masks[ii], masks[jj]).mean())

        out["mask_jaccard_same"] = 100 * mean_jaccard(same)
        out["mask_jaccard_diff"] = 100 * mean_jaccard(diff)
        if pairs:
            a = _hard_masks(model, tokenizer, [p[0] for p in pairs], device, batch_size)
            b = _hard_masks(model, tokenizer, [p[1] for p in pairs], device, batch_size)
            concept_masks = _hard_masks(model, tokenizer, [concept_prompt(c) for c in self.concepts], device, batch_size)
            index = {c: k for k, c in enumerate(self.concepts)}
            shared = concept_masks[[index[p[2]] for p in pairs]]
            control = concept_masks[[index[p[3]] for p in pairs]]
            inter = a.bool() & b.bool()
            out["mask_algebra"] = 100 * float(jaccard(inter, shared).mean())
            out["mask_algebra_control"] = 100 * float(jaccard(inter, control).mean())
            density = torch.cat([masks, a, b, concept_masks]).float().mean()
        else:
            density = masks.float().mean()
        out["mask_active"] = 100 * float(density)
        return out, {"mask_phrases": len(phrases), "mask_same_pairs": len(same),
                     "mask_diff_pairs": len(diff), "mask_algebra_pairs": len(pairs)}


@torch.no_grad()
def _hard_masks(model, tokenizer, texts: Sequence[str], device, batch_size) -> torch.Tensor:
    out = []
    for start in range(0, len(texts), batch_size):
        tokens = tokenizer(list(texts[start: start + batch_size])).to(device)
        out.append(model.text_mask(tokens, soft=False).cpu() > 0.5)
    return torch.cat(out)


@torch.no_grad()
def concept_mask_usage(model, tokenizer, concepts: Optional[Sequence[str]] = None, device="cpu") -> np.ndarray:
    """[concepts, embed_dim] hard mask of each concept's short prompt (for the heatmap)."""
    concepts = list(concepts or [c.name for c in CONCEPTS])
    return _hard_masks(model, tokenizer, [concept_prompt(c) for c in concepts], device, 64).float().numpy()


def _mean_ap(y: np.ndarray, scores: np.ndarray) -> float:
    from sklearn.metrics import average_precision_score
    aps = [average_precision_score(y[:, k], scores[:, k]) for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    return float(np.mean(aps)) if aps else float("nan")


def _probe_map(x_train, y_train, x_test, y_test) -> float:
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits
    scores = np.zeros(y_test.shape, dtype=np.float64)
    # one BLAS thread: these fits are tiny, and on a busy machine threads mostly wait (7x slower)
    with threadpool_limits(limits=1):
        for k in range(y_train.shape[1]):
            if y_train[:, k].min() == y_train[:, k].max():
                scores[:, k] = y_train[0, k]  # a constant label: nothing to learn
                continue
            probe = LogisticRegression(C=1.0, max_iter=2000)
            probe.fit(x_train, y_train[:, k])
            scores[:, k] = probe.decision_function(x_test)
    return _mean_ap(y_test, scores)
