"""CLIP_benchmark datasets in their real on-disk layouts, made from real images that ship in
wheels: scikit-learn's handwritten digits and scikit-image's sample photos
(``conftest.real_images``). Each writer returns ``{"labels": ..., "files": ...}`` describing
what it wrote, so tests can check what a reader should find.

    from clip_benchmark_fixtures import write_wds, write_sun397, write_voc2007
    write_wds(tmp_path / "wds_mnist", 30)          # CLIP_benchmark's WebDataset layout
    write_sun397(tmp_path / "sun397")              # torchvision SUN397 layout
"""
from __future__ import annotations

import functools
import io
import tarfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
from PIL import Image

from conftest import real_images

__all__ = ["digit", "write_wds", "write_sun397", "write_fgvc_aircraft", "write_gtsrb", "write_fer2013",
           "write_voc2007", "write_imagenet_val", "DIGIT_NAMES"]

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


@functools.lru_cache(maxsize=1)
def _digits():
    from sklearn.datasets import load_digits
    return load_digits()


def digit(i: int, size: int = 32, mode: str = "RGB") -> Image.Image:
    """Handwritten digit ``i`` of scikit-learn's set (8x8, 0..16) as a ``size`` x ``size`` image."""
    pixels = (_digits().images[i] * (255 / 16)).astype(np.uint8)
    return Image.fromarray(pixels).resize((size, size), Image.BICUBIC).convert(mode)


def digit_label(i: int) -> int:
    return int(_digits().target[i])


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _add(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def write_wds(root: Path, n: int = 30, shards: int = 3, multilabel: bool = False,
              templates: Optional[List[str]] = None) -> Dict[str, list]:
    """CLIP_benchmark's WebDataset layout: classnames.txt, zeroshot_classification_templates.txt,
    test/nshards.txt and test/<i>.tar with ``<key>.{png,jpg,webp}`` + ``<key>.cls`` (digits
    0..9), or ``<key>.npy`` multi-hot targets with ``dataset_type.txt`` = multilabel."""
    root = Path(root)
    (root / "test").mkdir(parents=True, exist_ok=True)
    (root / "classnames.txt").write_text("\n".join(DIGIT_NAMES) + "\n")
    templates = templates or ["a photo of the number: \"{c}\".", "a blurry photo of the digit {c}."]
    (root / "zeroshot_classification_templates.txt").write_text("\n".join(templates) + "\n")
    if multilabel:
        (root / "dataset_type.txt").write_text("multilabel\n")
    (root / "test" / "nshards.txt").write_text(f"{shards}\n")
    labels, keys = [], []
    formats = {0: ("png", "PNG"), 1: ("jpg", "JPEG"), 2: ("webp", "WEBP")}
    for s in range(shards):
        with tarfile.open(root / "test" / f"{s}.tar", "w") as tar:
            for i in range(s, n, shards):
                key = f"s{i:06d}"
                ext, fmt = formats[i % 7] if i % 7 in formats else ("png", "PNG")
                _add(tar, f"{key}.{ext}", _encode(digit(i), fmt))
                if multilabel:
                    target = np.zeros(10, dtype=np.int64)
                    target[[digit_label(i), (digit_label(i) + 3) % 10]] = 1
                    buffer = io.BytesIO()
                    np.save(buffer, target)
                    _add(tar, f"{key}.npy", buffer.getvalue())
                    labels.append(target.tolist())
                else:
                    _add(tar, f"{key}.cls", str(digit_label(i)).encode())
                    labels.append(digit_label(i))
                keys.append(f"{s}:{key}")
    return {"labels": labels, "files": keys}


SUN397_CLASSES = ["/a/abbey", "/b/beach", "/k/kitchen", "/m/market/outdoor"]


def write_sun397(root: Path, per_class: int = 3) -> Dict[str, list]:
    """torchvision SUN397: SUN397/ClassName.txt and SUN397/<letter>/<class>/sun_*.jpg."""
    base = Path(root) / "SUN397"
    base.mkdir(parents=True, exist_ok=True)
    (base / "ClassName.txt").write_text("\n".join(SUN397_CLASSES) + "\n")
    photos = real_images(6, 64)
    files, labels = [], []
    for label, cls in enumerate(SUN397_CLASSES):
        folder = base / cls.strip("/")
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            k = label * per_class + j
            image = photos[k % len(photos)] if j % 2 == 0 else digit(k, 64)
            path = folder / f"sun_{k:08d}.jpg"
            image.save(path, format="JPEG")
            files.append(path)
            labels.append(label)
    return {"labels": labels, "files": files}


AIRCRAFT = ["707-320", "A300B4", "Cessna 172", "F-16A/B"]


def write_fgvc_aircraft(root: Path, per_class: int = 2) -> Dict[str, list]:
    """torchvision FGVCAircraft: fgvc-aircraft-2013b/data/{variants.txt, images_variant_test.txt,
    images/<id>.jpg}; a variant name may hold spaces and '/'."""
    data = Path(root) / "fgvc-aircraft-2013b" / "data"
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "variants.txt").write_text("\n".join(AIRCRAFT) + "\n")
    photos = real_images(6, 56)
    lines, files, labels = [], [], []
    for label, name in enumerate(AIRCRAFT):
        for j in range(per_class):
            k = label * per_class + j
            image_id = f"{1025794 + k:07d}"
            path = data / "images" / f"{image_id}.jpg"
            (photos[k % len(photos)] if j == 0 else digit(k + 20, 56)).save(path, format="JPEG")
            lines.append(f"{image_id} {name}")
            files.append(path)
            labels.append(label)
    (data / "images_variant_test.txt").write_text("\n".join(lines) + "\n")
    return {"labels": labels, "files": files}


def write_gtsrb(root: Path, n: int = 10) -> Dict[str, list]:
    """torchvision GTSRB test split: gtsrb/GT-final_test.csv (';'-separated) and
    gtsrb/GTSRB/Final_Test/Images/<id>.ppm; class ids 0..42."""
    base = Path(root) / "gtsrb"
    images = base / "GTSRB" / "Final_Test" / "Images"
    images.mkdir(parents=True, exist_ok=True)
    rows = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    files, labels = [], []
    for i in range(n):
        name = f"{i:05d}.ppm"
        digit(40 + i, 40).save(images / name, format="PPM")
        label = (i * 7) % 43
        rows.append(f"{name};40;40;5;5;35;35;{label}")
        files.append(images / name)
        labels.append(label)
    (base / "GT-final_test.csv").write_text("\n".join(rows) + "\n")
    return {"labels": labels, "files": files}


FER_FOLDERS = ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]


def write_fer2013(root: Path, per_class: int = 2) -> Dict[str, list]:
    """The Kaggle fer2013 archive CLIP_benchmark reads: test/<emotion>/*.jpg, 48x48 grey."""
    files, labels = [], []
    for label, emotion in enumerate(FER_FOLDERS):
        folder = Path(root) / "test" / emotion
        folder.mkdir(parents=True, exist_ok=True)
        for j in range(per_class):
            k = 60 + label * per_class + j
            path = folder / f"PrivateTest_{k:08d}.jpg"
            digit(k, 48, "L").save(path, format="JPEG")
            files.append(path)
            labels.append(label)
    return {"labels": labels, "files": files}


VOC_OBJECTS = {  # image id -> [(class, (xmin, ymin, xmax, ymax))] on a 96x96 photo
    "000001": [("person", (10, 8, 70, 90))],
    "000002": [("cat", (5, 5, 90, 90)), ("sofa", (0, 50, 95, 95))],
    "000004": [("bottle", (30, 10, 60, 80)), ("diningtable", (0, 60, 95, 95)), ("chair", (60, 40, 95, 95))],
    "000006": [("aeroplane", (10, 20, 80, 60))],
    "000008": [("dog", (20, 20, 70, 85)), ("person", (50, 5, 90, 90))],
    "000010": [("bird", (30, 30, 60, 60))],
}


def write_voc2007(root: Path) -> Dict[str, list]:
    """PASCAL VOC 2007 test as CLIP_benchmark reads it: VOCdevkit/VOC2007/ImageSets/Main/
    aeroplane_test.txt (the image ids), Annotations/<id>.xml (objects with boxes) and
    JPEGImages/<id>.jpg."""
    base = Path(root) / "VOCdevkit" / "VOC2007"
    for sub in ("ImageSets/Main", "Annotations", "JPEGImages"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    photos = real_images(6, 96)
    lines, files = [], []
    for k, (image_id, objects) in enumerate(VOC_OBJECTS.items()):
        photos[k].save(base / "JPEGImages" / f"{image_id}.jpg", format="JPEG")
        files.append(base / "JPEGImages" / f"{image_id}.jpg")
        lines.append(f"{image_id} {1 if any(c == 'aeroplane' for c, _ in objects) else -1}")
        xml = "".join(f"<object><name>{c}</name><pose>Unspecified</pose><truncated>0</truncated>"
                      f"<difficult>0</difficult><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                      f"<ymax>{b[3]}</ymax></bndbox></object>" for c, b in objects)
        (base / "Annotations" / f"{image_id}.xml").write_text(
            f"<annotation><folder>VOC2007</folder><filename>{image_id}.jpg</filename><size><width>96</width>"
            f"<height>96</height><depth>3</depth></size>{xml}</annotation>")
    (base / "ImageSets" / "Main" / "aeroplane_test.txt").write_text("\n".join(lines) + "\n")
    return {"labels": [[c for c, _ in objects] for objects in VOC_OBJECTS.values()], "files": files}


def write_imagenet_val(root: Path, with_images: Optional[Dict[int, int]] = None, size: int = 16) -> Dict[str, list]:
    """val/<wnid>/*.JPEG for the 1,000 real WordNet ids (CLIP_benchmark's list), one small digit
    image in each folder plus ``with_images`` {class index: count} photos."""
    from clip_benchmark.datasets.builder import all_imagenet_wordnet_ids
    photos = real_images(6, 48)
    files, labels = [], []
    for label, wnid in enumerate(all_imagenet_wordnet_ids):
        folder = Path(root) / "val" / wnid
        folder.mkdir(parents=True, exist_ok=True)
        extra = (with_images or {}).get(label, 0)
        for j in range(1 + extra):
            path = folder / f"ILSVRC2012_val_{label * 10 + j:08d}.JPEG"
            image = digit(label % 1797, size) if j == 0 else photos[(label + j) % len(photos)]
            image.save(path, format="JPEG")
            files.append(path)
            labels.append(label)
    return {"labels": labels, "files": files}
