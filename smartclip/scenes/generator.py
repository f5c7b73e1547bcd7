"""Synthetic scenes whose true concepts are known: the embedded benchmark's data.

A scene is a small RGB image (64 px by default, the ``smartclip-tiny`` input) with 2-4
objects, one per quadrant. Each object is one **concept** (its kind: a drawn shape, a
handwritten digit from scikit-learn's bundled digits, or a crop of one of scikit-image's
bundled photos) with attributes: colour (shapes and digits), size and position.

Every scene gets one long caption naming every object with all its attributes, one
sentence per object (so the paper's sentence-prefix sampling applies), and several
short captions naming disjoint subsets of its objects (the web alt-text analogue).

Splits: some concept pairs are **held out**: no training scene contains both concepts
of a held-out pair, and every multi-object test scene contains one, so each test scene
is a combination of concepts never seen together in training. ``single`` holds
one-object scenes for recognition accuracy. ``val`` / ``val_single`` are a validation
split drawn like ``train`` / ``single`` but never trained on (settings are chosen there,
never on the test scenes), and ``pretrain`` / ``pretrain_single`` are a separate pool of training-like scenes
for building a starting model. Each split has its own random stream, so adding one
leaves the others unchanged.

Everything is drawn from ``numpy.random.default_rng(seed)``: the same seed and sizes give
byte-identical files.
"""
from __future__ import annotations

import csv
import json
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import atomic_write_text
__all__ = ["Concept", "SceneObject", "Scene", "CONCEPTS", "COLOURS", "SIZES", "POSITIONS",
           "concept_prompt", "object_phrase", "long_caption", "short_caption",
           "SceneGenerator", "generate_scenes", "write_dataset", "load_labels", "LABELS_FILE",
           "FORMAT_VERSION"]

FORMAT_VERSION = 2
LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class Concept:
    name: str      # words used in captions, e.g. "digit three"
    family: str    # "shape" | "digit" | "photo"
    source: str    # shape name, digit value, or skimage.data function


SHAPES = ("circle", "square", "triangle", "cross")
DIGITS = ("zero", "one", "two", "three", "four", "five", "six", "seven")
# (concept words, skimage.data function, crop as fractions of (top, bottom, left, right))
PHOTOS = (("cat", "chelsea", (0.0, 1.0, 0.07, 0.73)),
          ("coffee cup", "coffee", (0.0, 1.0, 0.1, 0.77)),
          ("astronaut", "astronaut", (0.0, 0.6, 0.23, 0.82)),
          ("rocket", "rocket", (0.1, 1.0, 0.3, 0.7)))

CONCEPTS: Tuple[Concept, ...] = (
    tuple(Concept(s, "shape", s) for s in SHAPES)
    + tuple(Concept(f"digit {w}", "digit", str(i)) for i, w in enumerate(DIGITS))
    + tuple(Concept(name, "photo", fn) for name, fn, _ in PHOTOS)
)
COLOURS: Dict[str, Tuple[int, int, int]] = {
    "red": (230, 40, 40), "green": (40, 200, 60), "blue": (50, 90, 240),
    "yellow": (240, 220, 40), "white": (235, 235, 235)}
SIZES = ("small", "large")
POSITIONS = ("top left", "top right", "bottom left", "bottom right")
_SIZE_FRACTION = {"small": 0.5, "large": 0.85}  # of the quadrant's side
# split -> (salt of its scene stream, salt of its drawing stream); fixed, so a split's
# content depends only on the seed and its own size
SPLITS = {"train": (11, 0), "test": (12, 1), "single": (13, 2), "val": (14, 3), "val_single": (15, 4),
          "pretrain": (16, 5), "pretrain_single": (17, 6)}


@dataclass
class SceneObject:
    concept: str            # Concept.name
    colour: Optional[str]   # None for photos (they keep their own colours)
    size: str
    position: str


@dataclass
class Scene:
    split: str
    index: int
    objects: List[SceneObject]
    long_caption: str = ""
    short_captions: List[str] = field(default_factory=list)

    @property
    def concepts(self) -> List[str]:
        return [o.concept for o in self.objects]

    @property
    def filepath(self) -> str:
        return f"images/{self.split}/{self.index:06d}.png"


# ---------------------------------------------------------------------- captions
def _with_article(words: str) -> str:
    return ("an " if words[0] in "aeiou" else "a ") + words


def concept_prompt(concept: str) -> str:
    """The short prompt naming only ``concept``: ``"a circle"``, ``"an astronaut"``."""
    return _with_article(concept)


def object_phrase(obj: SceneObject, *, size: bool = True, position: bool = True) -> str:
    words = " ".join(w for w in (obj.size if size else None, obj.colour, obj.concept) if w)
    phrase = _with_article(words)
    return f"{phrase} at the {obj.position}" if position else phrase


def long_caption(objects: Sequence[SceneObject]) -> str:
    """One sentence per object with every attribute, joined by ``". "``."""
    return ". ".join(object_phrase(o)[0].upper() + object_phrase(o)[1:] for o in objects) + "."


def short_caption(objects: Sequence[SceneObject]) -> str:
    """Colour and kind only, like alt-text: ``"a red circle and a cat"``."""
    phrases = [object_phrase(o, size=False, position=False) for o in objects]
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


# ---------------------------------------------------------------------- drawing
class _Sprites:
    """Alpha masks (shapes, digits) and RGB crops (photos) from data shipped in wheels."""

    def __init__(self):
        from sklearn.datasets import load_digits
        from skimage import data as skdata
        digits = load_digits()
        self.digits = {d: digits.images[digits.target == d] / 16.0 for d in range(10)}
        self.photos = {}
        for _, fn, (t, b, l, r) in PHOTOS:
            arr = getattr(skdata, fn)()[..., :3]
            h, w = arr.shape[:2]
            self.photos[fn] = arr[int(t * h): int(b * h), int(l * w): int(r * w)]

    def render(self, concept: Concept, colour: Optional[str], side: int, rng: np.random.Generator) -> Image.Image:
        """An RGBA sprite of ``side`` x ``side`` pixels."""
        if concept.family == "photo":
            arr = self.photos[concept.source]
            h, w = arr.shape[:2]
            # a slightly different crop each time so the model cannot memorise one patch
            dy, dx = (rng.integers(0, max(1, h // 10)), rng.integers(0, max(1, w // 10)))
            crop = arr[dy: h - (h // 10 - dy), dx: w - (w // 10 - dx)]
            img = Image.fromarray(np.ascontiguousarray(crop)).resize((side, side), Image.BILINEAR)
            if rng.random() < 0.5:
                img = img.transpose(Image.FLIP_LEFT_RIGHT)
            return img.convert("RGBA")
        if concept.family == "digit":
            samples = self.digits[int(concept.source)]
            glyph = samples[rng.integers(len(samples))]
            alpha = Image.fromarray((glyph * 255).astype(np.uint8)).resize((side, side), Image.BILINEAR)
        else:
            alpha = _shape_mask(concept.source, side)
        solid = Image.new("RGBA", (side, side), COLOURS[colour] + (255,))
        solid.putalpha(alpha)
        return solid


def _shape_mask(shape: str, side: int) -> Image.Image:
    scale = 4  # draw large, then downsample for anti-aliased edges
    big = side * scale
    mask = Image.new("L", (big, big), 0)
    draw = ImageDraw.Draw(mask)
    m = big // 10
    if shape == "circle":
        draw.ellipse([m, m, big - m, big - m], fill=255)
    elif shape == "square":
        draw.rectangle([m, m, big - m, big - m], fill=255)
    elif shape == "triangle":
        draw.polygon([(big // 2, m), (big - m, big - m), (m, big - m)], fill=255)
    elif shape == "cross":
        t = big // 7
        draw.rectangle([big // 2 - t, m, big // 2 + t, big - m], fill=255)
        draw.rectangle([m, big // 2 - t, big - m, big // 2 + t], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}; valid: {SHAPES}")
    return mask.resize((side, side), Image.LANCZOS)


# ---------------------------------------------------------------------- generator
class SceneGenerator:
    """Draws scenes and their captions; ``image_size`` must be divisible by 2."""

    def __init__(self, image_size: int = 64, seed: int = 0, num_held_out_pairs: int = 12,
                 min_objects: int = 2, max_objects: int = 4):
        if image_size < 16 or image_size % 2:
            raise ValueError(f"image_size must be an even number >= 16, got {image_size}")
        if not 2 <= min_objects <= max_objects <= len(POSITIONS):
            raise ValueError(f"need 2 <= min_objects <= max_objects <= {len(POSITIONS)}, "
                             f"got {min_objects}, {max_objects}")
        self.image_size, self.seed = image_size, seed
        self.min_objects, self.max_objects = min_objects, max_objects
        self.concepts = {c.name: c for c in CONCEPTS}
        self._sprites = _Sprites()
        self.held_out_pairs = self._choose_held_out_pairs(num_held_out_pairs)

    def _choose_held_out_pairs(self, n: int) -> List[Tuple[str, str]]:
        """``n`` concept pairs, each concept in at most two, so every concept keeps most of
        its training partners."""
        rng = np.random.default_rng([self.seed, 1])
        names = [c.name for c in CONCEPTS]
        pairs = list(combinations(names, 2))
        order = rng.permutation(len(pairs))
        chosen, uses = [], {n_: 0 for n_ in names}
        for i in order:
            a, b = pairs[i]
            if uses[a] < 2 and uses[b] < 2:
                chosen.append(tuple(sorted((a, b))))
                uses[a] += 1
                uses[b] += 1
            if len(chosen) == n:
                break
        if len(chosen) < n:
            raise ValueError(f"cannot hold out {n} pairs with each concept in at most two")
        return sorted(chosen)

    def _has_held_out_pair(self, names: Sequence[str]) -> bool:
        held = set(self.held_out_pairs)
        return any(tuple(sorted(p)) in held for p in combinations(names, 2))

    def _random_object(self, concept: str, position: str, rng) -> SceneObject:
        colour = None if self.concepts[concept].family == "photo" else str(rng.choice(list(COLOURS)))
        return SceneObject(concept, colour, str(rng.choice(SIZES)), position)

    def _compose(self, split: str, index: int, names: Sequence[str], rng) -> Scene:
        positions = rng.permutation(len(POSITIONS))[: len(names)]
        objects = [self._random_object(n, POSITIONS[p], rng) for n, p in zip(names, positions)]
        order = rng.permutation(len(objects))  # sentence order, so prefixes cover every object
        scene = Scene(split, index, [objects[i] for i in order])
        scene.long_caption = long_caption(scene.objects)
        scene.short_captions = [short_caption([scene.objects[i] for i in group])
                                for group in _random_partition(len(objects), rng)]
        return scene

    def scenes(self, split: str, n: int) -> List[Scene]:
        """``n`` scenes of ``split``: ``train``, ``val`` and ``pretrain`` (no held-out pair),
        ``test`` (each with one held-out pair, cycling through them), ``single``,
        ``val_single`` and ``pretrain_single`` (one object, concepts cycled)."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
        rng = np.random.default_rng([self.seed, SPLITS[split][0]])
        names = [c.name for c in CONCEPTS]
        out = []
        for index in range(n):
            if split.endswith("single"):
                chosen = [names[index % len(names)]]
            elif split in ("train", "val", "pretrain"):
                while True:
                    k = int(rng.integers(self.min_objects, self.max_objects + 1))
                    chosen = [names[i] for i in rng.choice(len(names), k, replace=False)]
                    if not self._has_held_out_pair(chosen):
                        break
            else:
                pair = list(self.held_out_pairs[index % len(self.held_out_pairs)])
                k = int(rng.integers(self.min_objects, self.max_objects + 1))
                others = [x for x in names if x not in pair]
                chosen = pair + [others[i] for i in rng.choice(len(others), k - 2, replace=False)]
                chosen = [chosen[i] for i in rng.permutation(len(chosen))]
            out.append(self._compose(split, index, chosen, rng))
        return out

    def render(self, scene: Scene) -> Image.Image:
        """The scene's image; the sprite randomness comes from the seed, split and index."""
        rng = np.random.default_rng([self.seed, 100 + SPLITS[scene.split][1], scene.index])
        s = self.image_size
        background = rng.normal(40, 6, size=(s, s, 3)).clip(0, 255).astype(np.uint8)
        canvas = Image.fromarray(background).convert("RGBA")
        quadrant = s // 2
        for obj in scene.objects:
            side = max(4, int(round(_SIZE_FRACTION[obj.size] * quadrant)))
            sprite = self._sprites.render(self.concepts[obj.concept], obj.colour, side, rng)
            row, col = POSITIONS.index(obj.position) // 2, POSITIONS.index(obj.position) % 2
            slack = quadrant - side
            y = row * quadrant + int(rng.integers(0, slack + 1))
            x = col * quadrant + int(rng.integers(0, slack + 1))
            canvas.alpha_composite(sprite, (x, y))
        return canvas.convert("RGB")


def _random_partition(n: int, rng) -> List[List[int]]:
    """Objects 0..n-1 split into 2..n non-empty disjoint groups (every object in one)."""
    groups = int(rng.integers(2, n + 1)) if n > 1 else 1
    labels = np.concatenate([np.arange(groups), rng.integers(0, groups, n - groups)])
    labels = labels[rng.permutation(n)]
    return [sorted(np.flatnonzero(labels == g).tolist()) for g in range(groups)]


# ---------------------------------------------------------------------- dataset files
def generate_scenes(seed: int = 0, num_train: int = 4000, num_test: int = 400, num_single: int = 128,
                    image_size: int = 64, num_held_out_pairs: int = 12, num_val: int = 0, num_val_single: int = 0,
                    num_pretrain: int = 0, num_pretrain_single: int = 0
                    ) -> Tuple[SceneGenerator, Dict[str, List[Scene]]]:
    """The generator and ``{split: scenes}`` for every split with at least one scene."""
    gen = SceneGenerator(image_size=image_size, seed=seed, num_held_out_pairs=num_held_out_pairs)
    sizes = {"train": num_train, "test": num_test, "single": num_single, "val": num_val,
             "val_single": num_val_single, "pretrain": num_pretrain, "pretrain_single": num_pretrain_single}
    return gen, {split: gen.scenes(split, n) for split, n in sizes.items() if n > 0}


def write_dataset(root: str, seed: int = 0, num_train: int = 4000, num_test: int = 400,
                  num_single: int = 128, image_size: int = 64, num_held_out_pairs: int = 12,
                  num_val: int = 0, num_val_single: int = 0, num_pretrain: int = 0,
                  num_pretrain_single: int = 0, overwrite: bool = False) -> Path:
    """Write the scene dataset under ``root`` and return it.

    Files (CSV columns ``filepath,title``, paths relative to the CSV, open_clip's
    convention): ``<split>_long.csv`` (one row per image) and ``<split>_short.csv`` (one row
    per short caption) for the multi-object splits (``train``, ``test``, and ``val`` /
    ``pretrain`` when asked for), ``single.csv``, ``val_single.csv``, ``pretrain_single.csv``
    (one-object scenes with their long caption), ``images/<split>/NNNNNN.png`` and ``labels.json`` (concepts,
    attributes, captions, held-out pairs, generation settings).

    An existing dataset with identical settings is reused; different settings raise
    unless ``overwrite``.
    """
    root_path = Path(root)
    settings = {"format_version": FORMAT_VERSION, "seed": seed, "num_train": num_train,
                "num_test": num_test, "num_single": num_single, "image_size": image_size,
                "num_held_out_pairs": num_held_out_pairs, "num_val": num_val, "num_val_single": num_val_single,
                "num_pretrain": num_pretrain, "num_pretrain_single": num_pretrain_single}
    labels_path = root_path / LABELS_FILE
    if labels_path.exists():
        existing = json.loads(labels_path.read_text())
        if existing.get("settings") == settings:
            return root_path
        if not overwrite:
            raise FileExistsError(
                f"{labels_path} holds a scene dataset with settings {existing.get('settings')}, "
                f"not {settings}; choose another directory or pass overwrite=True")
    gen, splits = generate_scenes(seed, num_train, num_test, num_single, image_size, num_held_out_pairs,
                                  num_val, num_val_single, num_pretrain, num_pretrain_single)
    for split, scenes in splits.items():
        (root_path / "images" / split).mkdir(parents=True, exist_ok=True)
        for scene in scenes:
            gen.render(scene).save(root_path / scene.filepath, optimize=False)
        if split.endswith("single"):
            _write_csv(root_path / f"{split}.csv", [(s.filepath, s.long_caption) for s in scenes])
        else:
            _write_csv(root_path / f"{split}_long.csv", [(s.filepath, s.long_caption) for s in scenes])
            _write_csv(root_path / f"{split}_short.csv", [(s.filepath, c) for s in scenes for c in s.short_captions])
    labels = {
        "settings": settings,
        "concepts": [asdict(c) for c in CONCEPTS],
        "colours": list(COLOURS), "sizes": list(SIZES), "positions": list(POSITIONS),
        "held_out_pairs": [list(p) for p in gen.held_out_pairs],
        "splits": {split: [{"filepath": s.filepath, "objects": [asdict(o) for o in s.objects],
                            "long_caption": s.long_caption, "short_captions": s.short_captions}
                           for s in scenes] for split, scenes in splits.items()},
    }
    # written last: its presence means the dataset is complete
    atomic_write_text(labels_path, json.dumps(labels, indent=1))
    return root_path


def _write_csv(path: Path, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filepath", "title"])
        writer.writerows(rows)


def load_labels(root: str) -> dict:
    """``labels.json`` of a scene dataset, with a clear error when it is not one."""
    path = Path(root) / LABELS_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: {root} is not a scene dataset. Create one with "
            f"smartclip.scenes.write_dataset({str(root)!r}) or `smartclip demo --data-only`")
    labels = json.loads(path.read_text())
    version = labels.get("settings", {}).get("format_version")
    if version != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {version!r}, this smartclip reads {FORMAT_VERSION}; "
                         "regenerate the dataset")
    return labels
