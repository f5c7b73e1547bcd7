"""smartclip eval-generation: KID, precision / recall / F1 and DINO-L against direct computations."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("torch_fidelity")

from smartclip.cli import main  # noqa: E402
from smartclip.generation import (DINOv2Features, IncompletePairsError, evaluate_generation, kid,  # noqa: E402
                                  paired_cosine, pair_images, precision_recall)

from conftest import real_images  # noqa: E402
from generation_fixtures import write_random_inception, write_tiny_dinov2  # noqa: E402


def _features(seed=0, n=24, m=20, d=8, shift=0.7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g) + shift, torch.randn(m, d, generator=g)


def _mmd2_unbiased(x, y):
    """The unbiased MMD^2 estimate with the cubic polynomial kernel, term by term."""
    d = x.shape[1]
    k = lambda a, b: (a @ b.T / d + 1) ** 3  # noqa: E731
    n, m = len(x), len(y)
    kxx, kyy, kxy = k(x, x), k(y, y), k(x, y)
    return ((kxx.sum() - np.trace(kxx)) / (n * (n - 1)) + (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
            - 2 * kxy.mean())


def test_kid_is_the_unbiased_polynomial_mmd():
    x, y = _features(n=20, m=20)
    # subsets as large as the sets are permutations of them: every subset gives the full-set value
    out = kid(x, y, subsets=5, subset_size=1000)
    assert out["kid_subset_size"] == 20
    expected = _mmd2_unbiased(x.double().numpy(), y.double().numpy())
    assert out["kid"] == pytest.approx(expected, rel=1e-9) and out["kid_std"] == pytest.approx(0, abs=1e-12)
    near = kid(x, x + 0.01, subsets=5)["kid"]
    assert abs(near) < out["kid"]
    smaller = kid(*_features(n=30, m=30), subsets=50, subset_size=10, seed=1)
    assert smaller["kid_subset_size"] == 10 and smaller["kid_std"] > 0
    with pytest.raises(ValueError, match="at least 2"):
        kid(x[:1], y)


def _covered(points, support, k):
    """For each point: inside the k-NN ball of some support sample (radius to its k-th neighbour)."""
    radius = [sorted(float(torch.dist(s, t)) for t in support)[k] for s in support]  # [0] is itself
    return [any(float(torch.dist(p, s)) <= r for s, r in zip(support, radius)) for p in points]


def test_precision_recall_match_the_definition():
    gen, ref = _features(n=24, m=20, shift=1.0)
    for k in (1, 3):
        out = precision_recall(gen, ref, k=k)
        precision = np.mean(_covered(gen, ref, k))
        recall = np.mean(_covered(ref, gen, k))
        assert out["precision"] == pytest.approx(precision) and out["recall"] == pytest.approx(recall)
        assert out["f1"] == pytest.approx(2 * precision * recall / (precision + recall))
    assert 0 < out["precision"] < 1 and out["precision"] != out["recall"]  # generated / reference not swapped
    same = precision_recall(ref, ref)
    assert same["precision"] == same["recall"] == 1
    far = precision_recall(gen + 100, ref)
    assert far["precision"] == far["recall"] == 0
    with pytest.raises(ValueError, match="more than 3"):
        precision_recall(gen[:3], ref)


def test_paired_cosine():
    a, b = torch.tensor([[1.0, 0.0], [1.0, 1.0]]), torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    assert paired_cosine(a, b) == pytest.approx(0.0)  # (1 + -1) / 2
    with pytest.raises(ValueError):
        paired_cosine(a, b[:1])


def _write_images(folder, images, names):
    folder.mkdir(parents=True, exist_ok=True)
    for image, name in zip(images, names):
        image.save(folder / name)


def test_pairing_by_sidecar_and_by_stem(tmp_path):
    images = real_images(4, 40)
    _write_images(tmp_path / "gen", images, ["a.png", "b.png", "c.png", "d.png"])
    (tmp_path / "gen" / "a.json").write_text(json.dumps({"reference": "coco/x.jpg"}))
    (tmp_path / "gen" / "b.json").write_text(json.dumps({"reference": None}))
    (tmp_path / "gen" / "d.json").write_text(json.dumps({"reference": "coco/missing.jpg"}))
    (tmp_path / "ref" / "coco").mkdir(parents=True)
    images[0].save(tmp_path / "ref" / "coco" / "x.jpg")
    _write_images(tmp_path / "ref", images[1:3], ["b.jpg", "c.png"])
    pairs, missing = pair_images(tmp_path / "gen", tmp_path / "ref")
    assert [(i, r.relative_to(tmp_path / "ref").as_posix()) for i, _, r in pairs] == [
        ("a", "coco/x.jpg"), ("b", "b.jpg"), ("c", "c.png")]
    assert [i for i, _ in missing] == ["d"] and "coco/missing.jpg" in missing[0][1]


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    return {"inception": write_random_inception(root / "inception.pth"), "dinov2": write_tiny_dinov2(root / "dino")}


@pytest.mark.slow
def test_eval_generation_cli(tmp_path, weights, capsys):
    references = real_images(5, 64)
    rng = np.random.default_rng(0)
    generated = [Image.fromarray(np.clip(np.asarray(im, dtype=int) + rng.integers(-40, 40, (64, 64, 3)), 0, 255)
                                 .astype(np.uint8)) for im in references]
    names = [f"{i:06d}" for i in range(5)]
    _write_images(tmp_path / "gen", generated, [n + ".png" for n in names])
    _write_images(tmp_path / "ref", references, [n + ".png" for n in names])
    (tmp_path / "gen" / "generation.json").write_text(json.dumps({"settings": {"steps": 40}}))
    args = ["eval-generation", "--generated", str(tmp_path / "gen"), "--reference", str(tmp_path / "ref"),
            "--inception-weights", str(weights["inception"]), "--prc-features", "inception",
            "--dinov2", str(weights["dinov2"]), "--kid-subsets", "10", "--device", "cpu", "--no-progress",
            "--batch-size", "5"]
    assert main(args) == 0
    record = json.loads((tmp_path / "gen" / "eval_generation.json").read_text())
    assert set(record["metrics"]) == {"kid", "kid_std", "precision", "recall", "f1", "dino_l"}
    assert record["counts"] == {"pairs": 5, "missing": 0} and not record["partial"]
    assert record["generation"] == {"settings": {"steps": 40}} and record["not_computed"] == {}
    assert "10 random subsets of 5" in record["protocols"]["kid"]  # subset size capped at the pairs
    # DINO-L is the mean cosine of each generated image with its own reference, as computed directly
    dino = DINOv2Features(str(weights["dinov2"]))
    expected = torch.nn.functional.cosine_similarity(dino(generated), dino(references)).mean()
    assert record["metrics"]["dino_l"] == pytest.approx(float(expected), abs=1e-5)
    markdown = (tmp_path / "gen" / "eval_generation.md").read_text()
    assert "| dino_l |" in markdown and "0.414" in markdown and "Kernel Inception Distance" in markdown
    assert "kid:" in capsys.readouterr().out.replace(" ", "")
    # a generated image without a reference is refused unless a partial score is asked for; only the
    # metrics whose weights are given are computed; no weights at all is a usage error
    generated[0].save(tmp_path / "gen" / "extra.png")
    assert main(args) == 2  # the results already there are kept ...
    assert "eval_generation.json already holds results; pass --overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 2  # ... unless replaced
    assert "1 generated image(s) have no reference image, e.g. extra" in capsys.readouterr().err
    assert main(args[:5] + ["--dinov2", str(weights["dinov2"]), "--out", str(tmp_path / "d"), "--allow-partial",
                            "--no-progress"]) == 0
    record = json.loads((tmp_path / "d" / "eval_generation.json").read_text())
    assert record["partial"] and record["counts"] == {"pairs": 5, "missing": 1}
    assert set(record["metrics"]) == {"dino_l"} and set(record["not_computed"]) == {"kid", "precision_recall_f1"}
    assert "PARTIAL: 1 generated images without a reference" in (tmp_path / "d" / "eval_generation.md").read_text()
    assert main(args[:5] + ["--overwrite"]) == 2 and "no feature extractor weights given" in capsys.readouterr().err


def test_evaluate_generation_refuses_missing_folders(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such folder"):
        evaluate_generation(tmp_path / "nope", tmp_path, dinov2="x")
    (tmp_path / "gen").mkdir()
    with pytest.raises(FileNotFoundError, match="no images"):
        evaluate_generation(tmp_path / "gen", tmp_path, dinov2="x")
    real_images(1, 32)[0].save(tmp_path / "gen" / "a.png")
    with pytest.raises(IncompletePairsError, match="e.g. a: no image named a"):
        evaluate_generation(tmp_path / "gen", tmp_path, dinov2="x")


def test_unreadable_feature_weights_are_one_clear_error(tmp_path):
    from smartclip.generation.metrics import FidelityFeatures
    bad = tmp_path / "weights-inception.pth"
    bad.write_bytes(b"not a state dict")
    with pytest.raises(ValueError, match="not usable as torch-fidelity's Inception-v3"):
        FidelityFeatures("inception", bad)
