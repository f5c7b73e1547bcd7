"""The scene generator: deterministic, labels match the pixels, held-out combinations."""
import csv
import hashlib
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smartclip.scenes import COLOURS, POSITIONS, SceneGenerator, load_labels, object_phrase, write_dataset
from smartclip.scenes.generator import short_caption, SceneObject

SMALL = dict(num_train=120, num_test=24, num_single=16)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    return write_dataset(tmp_path_factory.mktemp("scenes") / "d", seed=3, **SMALL)


def _digest(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files_and_another_seed_does_not(dataset, tmp_path):
    again = write_dataset(tmp_path / "again", seed=3, **SMALL)
    assert _digest(dataset) == _digest(again)
    other = write_dataset(tmp_path / "other", seed=4, **SMALL)
    assert _digest(other)["train_long.csv"] != _digest(dataset)["train_long.csv"]


def test_csv_files_follow_open_clip_convention_and_cover_every_caption(dataset):
    labels = load_labels(dataset)
    for split in ("train", "test"):
        with open(dataset / f"{split}_long.csv") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["filepath", "title"]
        records = labels["splits"][split]
        assert [(r["filepath"], r["title"]) for r in rows] == [(r["filepath"], r["long_caption"]) for r in records]
        assert all((dataset / r["filepath"]).is_file() for r in rows)  # relative to the CSV
        with open(dataset / f"{split}_short.csv") as f:
            short = [(r["filepath"], r["title"]) for r in csv.DictReader(f)]
        assert short == [(r["filepath"], c) for r in records for c in r["short_captions"]]


def test_captions_name_every_object_and_short_captions_are_disjoint(dataset):
    for rec in load_labels(dataset)["splits"]["train"]:
        objects = [SceneObject(**o) for o in rec["objects"]]
        sentences = rec["long_caption"].rstrip(".").split(". ")
        assert [s.lower() for s in sentences] == [object_phrase(o) for o in objects]
        assert len(rec["short_captions"]) >= 2
        # each object's colour+kind phrase occurs in exactly one short caption
        for o in objects:
            phrase = object_phrase(o, size=False, position=False)
            hits = [c for c in rec["short_captions"] if phrase in [p.strip() for p in
                    c.replace(" and ", ", ").split(",")]]
            assert len(hits) == 1, (phrase, rec["short_captions"])
    assert short_caption([SceneObject("cat", None, "small", "top left"),
                          SceneObject("circle", "red", "large", "top right")]) == "a cat and a red circle"


def _quadrant(img: np.ndarray, position: str) -> np.ndarray:
    s = img.shape[0] // 2
    row, col = divmod(POSITIONS.index(position), 2)
    return img[row * s:(row + 1) * s, col * s:(col + 1) * s].astype(np.float64)


def test_labels_match_what_is_drawn(dataset):
    labels = load_labels(dataset)
    background = 40
    for split in ("train", "single"):
        for rec in labels["splits"][split]:
            img = np.asarray(Image.open(dataset / rec["filepath"]))
            assert img.shape == (64, 64, 3)
            occupied = {o["position"]: o for o in rec["objects"]}
            for position in POSITIONS:
                q = _quadrant(img, position)
                deviation = np.abs(q - background).max(-1)
                if position not in occupied:
                    assert deviation.max() < 40, (rec["filepath"], position, "should be empty")
                    continue
                obj = occupied[position]
                drawn = deviation > 60
                expected_fraction = {"small": 0.5, "large": 0.85}[obj["size"]] ** 2
                # the object's pixels cover (at most) its box; large ones clearly more than small
                assert drawn.mean() <= expected_fraction + 0.02, (rec["filepath"], obj)
                assert drawn.sum() >= 8, (rec["filepath"], obj)
                if obj["colour"] is not None:
                    # edges and faint digit strokes blend with the background: judge the core
                    core = np.median(q[deviation >= 0.8 * deviation.max()], 0)
                    nearest = min(COLOURS, key=lambda c: np.abs(np.array(COLOURS[c]) - core).sum())
                    assert nearest == obj["colour"], (rec["filepath"], obj, core)


def test_test_scenes_hold_combinations_never_seen_together_in_training(dataset):
    labels = load_labels(dataset)
    seen = set()
    for rec in labels["splits"]["train"]:
        names = sorted(o["concept"] for o in rec["objects"])
        seen |= set(combinations(names, 2))
    held = {tuple(p) for p in labels["held_out_pairs"]}
    assert held and not held & seen
    train_sets = {frozenset(o["concept"] for o in r["objects"]) for r in labels["splits"]["train"]}
    for rec in labels["splits"]["test"]:
        names = sorted(o["concept"] for o in rec["objects"])
        assert set(combinations(names, 2)) - seen, rec  # some pair of its concepts is new
        assert frozenset(names) not in train_sets
    singles = labels["splits"]["single"]
    assert all(len(r["objects"]) == 1 for r in singles)
    assert {r["objects"][0]["concept"] for r in singles} == {c["name"] for c in labels["concepts"]}


def test_every_concept_keeps_training_partners():
    gen = SceneGenerator(seed=0)
    uses = {}
    for a, b in gen.held_out_pairs:
        uses[a] = uses.get(a, 0) + 1
        uses[b] = uses.get(b, 0) + 1
    assert max(uses.values()) <= 2


def test_existing_dataset_is_reused_or_refused(dataset):
    assert write_dataset(dataset, seed=3, **SMALL) == dataset
    with pytest.raises(FileExistsError, match="labels.json"):
        write_dataset(dataset, seed=5, **SMALL)


def test_bad_input_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a scene dataset"):
        load_labels(tmp_path)
    with pytest.raises(ValueError, match="image_size"):
        SceneGenerator(image_size=15)
    with pytest.raises(ValueError, match="split must be one of"):
        SceneGenerator().scenes("validation", 2)


def test_validation_and_pretraining_splits_are_extra_streams(tmp_path):
    """Adding val / val_single / pretrain leaves train, test and single byte-identical, and the
    new splits are drawn like train (no held-out pair) and like single (one object)."""
    plain = write_dataset(tmp_path / "plain", num_train=12, num_test=6, num_single=4)
    extra = write_dataset(tmp_path / "extra", num_train=12, num_test=6, num_single=4, num_val=10,
                          num_val_single=4, num_pretrain=10)
    for name in ("train_long.csv", "train_short.csv", "test_long.csv", "single.csv",
                 "images/train/000003.png", "images/test/000002.png", "images/single/000001.png"):
        assert (plain / name).read_bytes() == (extra / name).read_bytes(), name
    labels = load_labels(extra)
    held = {tuple(p) for p in labels["held_out_pairs"]}
    train_captions = {r["long_caption"] for r in labels["splits"]["train"]}
    for split in ("val", "pretrain"):
        assert len(labels["splits"][split]) == 10
        for r in labels["splits"][split]:
            names = sorted(o["concept"] for o in r["objects"])
            assert not any(tuple(sorted((a, b))) in held for i, a in enumerate(names) for b in names[i + 1:])
        assert not train_captions & {r["long_caption"] for r in labels["splits"][split]}
        assert (extra / f"{split}_long.csv").is_file() and (extra / f"{split}_short.csv").is_file()
    assert [len(r["objects"]) for r in labels["splits"]["val_single"]] == [1] * 4
    assert (extra / "val_single.csv").is_file()
