"""SceneBenchmark: every metric checked against an oracle model whose embeddings are the true
concepts (so each score has a known value), plus partial data and models without masks."""
import hashlib
import math
import re

import numpy as np
import pytest
import torch
from torch import nn

from smartclip.scenes import load_labels, write_dataset
from smartclip.scenes.evaluate import SceneBenchmark, jaccard


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("scenes") / "d", seed=1, num_train=160, num_test=48, num_single=16)


class OracleTokenizer:
    """Encodes a text as the multi-hot of the concepts it names (+1 so no row is all zero)."""

    def __init__(self, concepts):
        self.patterns = [re.compile(rf"\b{re.escape(c)}\b") for c in concepts]

    def tokenize(self, texts):
        rows = [[1] + [int(bool(p.search(t.lower()))) + 1 for p in self.patterns] for t in texts]
        return torch.tensor(rows), torch.zeros(len(texts), dtype=torch.bool)

    def __call__(self, texts):
        return self.tokenize(texts)[0]


class OracleModel(nn.Module):
    """Image and text embeddings = the true multi-hot concept vector; the mask of a text selects
    exactly the dimensions of the concepts it names. ``shared_dims`` adds dimensions that every
    image has (value 1) and every mask selects, so masked scores still see presence (with a
    one-dimension mask, ``u = z*m/|z*m|`` is 1 whatever the value, by design)."""

    def __init__(self, n_concepts, constant_mask=False, shared_dims=0):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))
        self.n, self.shared = n_concepts, shared_dims
        self.embed_dim, self.image_size, self.mask_trained = n_concepts + shared_dims, (4, 4), True
        self.constant_mask = constant_mask

    def encode_image(self, x, normalize=False):
        hot = x.flatten(1)[:, : self.n] + 1e-3  # preprocess put the multi-hot there
        return torch.cat([hot, torch.ones(len(x), self.shared)], 1)

    def encode_text(self, tokens, normalize=False, trim=True):
        return torch.cat([(tokens[:, 1:] - 1).float() + 1e-3, torch.zeros(len(tokens), self.shared)], 1)

    def text_mask(self, tokens, soft=None):
        if self.constant_mask:
            return torch.ones(len(tokens), self.embed_dim)
        return torch.cat([(tokens[:, 1:] - 1).float(), torch.ones(len(tokens), self.shared)], 1)


def oracle(dataset, **kwargs):
    """(model, tokenizer, preprocess): preprocess looks the image's pixels up and returns its
    true multi-hot concept vector (padded to a 3x4x4 "image")."""
    from PIL import Image
    labels = load_labels(dataset)
    concepts = [c["name"] for c in labels["concepts"]]
    truth = {}
    for records in labels["splits"].values():
        for r in records:
            hot = torch.zeros(3 * 4 * 4)
            for o in r["objects"]:
                hot[concepts.index(o["concept"])] = 1
            with Image.open(dataset / r["filepath"]) as im:
                truth[hashlib.sha1(np.asarray(im.convert("RGB")).tobytes()).hexdigest()] = hot

    def preprocess(img):
        return truth[hashlib.sha1(np.asarray(img).tobytes()).hexdigest()].reshape(3, 4, 4)

    return OracleModel(len(concepts), **kwargs), OracleTokenizer(concepts), preprocess


def test_jaccard_hand_cases():
    a = torch.tensor([[1, 1, 0, 0], [0, 0, 0, 0], [1, 0, 1, 0]])
    b = torch.tensor([[1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 1]])
    assert jaccard(a, b).tolist() == [0.5, 1.0, 0.0]


def test_oracle_model_scores_perfectly(dataset):
    model, tokenizer, preprocess = oracle(dataset)
    result = SceneBenchmark(dataset).run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False)
    m = result["metrics"]
    assert m["concept_map"] == pytest.approx(100)
    assert m["single_acc"] == pytest.approx(100)
    assert m["probe_map"] == pytest.approx(100)
    assert m["mask_jaccard_same"] == pytest.approx(100)
    assert m["mask_jaccard_diff"] == pytest.approx(0)
    assert m["mask_algebra"] == pytest.approx(100)
    assert m["mask_algebra_control"] == pytest.approx(0)
    # a caption names what it names, so its retrieval beats chance by far
    assert m["long_i2t@5"] > 50 and m["long_t2i@5"] > 50 and m["short_t2i@5"] > 30
    c = result["counts"]
    assert (c["test_images"], c["single_images"], c["probe_train_images"]) == (48, 16, 160)
    assert c["short_captions"] == sum(len(r["short_captions"]) for r in load_labels(dataset)["splits"]["test"])
    assert c["mask_algebra_pairs"] > 0 and result["partial"] is False and result["missing"] == []
    assert result["benchmark"] == "scenes" and "never co-occur in training" in result["protocol"]


def test_uninformative_masks_show_no_identification(dataset):
    model, tokenizer, preprocess = oracle(dataset, constant_mask=True)
    m = SceneBenchmark(dataset).run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False)["metrics"]
    assert m["mask_jaccard_same"] == m["mask_jaccard_diff"] == pytest.approx(100)
    assert m["mask_algebra"] == m["mask_algebra_control"]
    assert m["mask_active"] == pytest.approx(100)


def test_models_without_trained_masks_get_no_mask_metrics(dataset):
    model, tokenizer, preprocess = oracle(dataset)
    model.mask_trained = False
    m = SceneBenchmark(dataset).run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False)["metrics"]
    assert not [k for k in m if k.startswith("mask_")]
    assert all(math.isfinite(v) for v in m.values())


def test_missing_images_are_named_or_marked_partial(dataset, tmp_path):
    import shutil
    copy = tmp_path / "copy"
    shutil.copytree(dataset, copy)
    gone = load_labels(copy)["splits"]["test"][3]["filepath"]
    (copy / gone).unlink()
    model, tokenizer, preprocess = oracle(dataset)
    with pytest.raises(FileNotFoundError, match=re.escape(gone)):
        SceneBenchmark(copy).run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False)
    result = SceneBenchmark(copy).run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False,
                                      allow_partial=True)
    assert result["partial"] is True and result["missing"] == [gone]
    assert result["counts"]["test_images"] == 47


def test_feature_cache_is_used_and_gives_the_same_metrics(dataset):
    from smartclip.eval.benchmark import FeatureCache
    model, tokenizer, preprocess = oracle(dataset)
    cache = FeatureCache("oracle")
    bench = SceneBenchmark(dataset)
    first = bench.run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False, feature_cache=cache)
    misses = cache.misses
    second = bench.run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False, feature_cache=cache)
    assert misses > 0 and cache.misses == misses and cache.hits >= misses
    assert first["metrics"] == second["metrics"]


def test_masked_scoring_option(dataset):
    model, tokenizer, preprocess = oracle(dataset, shared_dims=8)
    result = SceneBenchmark(dataset, masked=True).run(model, tokenizer=tokenizer, preprocess=preprocess,
                                                      progress=False)
    assert "masked scores" in result["protocol"]
    # the mask keeps the named concept (and the shared dimensions): a one-concept prompt still ranks perfectly
    assert result["metrics"]["concept_map"] == pytest.approx(100)
    assert result["metrics"]["single_acc"] == pytest.approx(100)
    # with one-dimension masks, u = z*m/|z*m| no longer sees presence: proof the masks are applied
    plain, tokenizer, preprocess = oracle(dataset)
    blind = SceneBenchmark(dataset, masked=True).run(plain, tokenizer=tokenizer, preprocess=preprocess,
                                                     progress=False)
    assert blind["metrics"]["concept_map"] < 50
    model.mask_trained = False
    with pytest.raises(ValueError, match="masked scoring needs a trained mask network"):
        SceneBenchmark(dataset, masked=True).run(model, tokenizer=tokenizer, preprocess=preprocess, progress=False)
