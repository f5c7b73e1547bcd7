"""Dataset fixtures in every supported format, with real JPEG/PNG files made from the sample
photos in scikit-image (``conftest.real_images``). Other test files may import these.

    from data_fixtures import make_csv_dataset, make_sharegpt4v_dataset, make_wds_shards
    csv_path = make_csv_dataset(tmp_path, 12)           # -> path of pairs.csv
    json_path = make_sharegpt4v_dataset(tmp_path, 12)   # -> path of sharegpt4v.json (coco/ + sam/ images)
    shards = make_wds_shards(tmp_path, 12, per_shard=4) # -> "…/shards/{000000..000002}.tar"

Captions are long, several sentences each ("Image 3. Sentence two of image 3. ..."), so the
caption samplers have sentences to pick from; ``caption_for(i)`` gives record ``i``'s caption.
"""
from __future__ import annotations

import csv
import functools
import io
import json
import os
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Dict, List

from PIL import Image

from conftest import real_images

__all__ = ["caption_for", "image_for", "make_csv_dataset", "make_sharegpt4v_dataset", "make_wds_shards",
           "write_bad_inputs", "png_bomb_bytes", "EXPECTED_BAD_CSV"]

_SIZE = 40


def caption_for(i: int, sentences: int = 4) -> str:
    parts = [f"Image {i} shows a scene"] + [f"Sentence {s + 2} of image {i} adds a detail" for s in range(sentences - 1)]
    return ". ".join(parts) + "."


@functools.lru_cache(maxsize=1)
def _base_images():
    return real_images(24, _SIZE)


def image_for(i: int) -> Image.Image:
    """A distinct real photo crop for every index ``i`` (40x40 RGB)."""
    imgs = _base_images()
    base = imgs[i % len(imgs)]
    # Distinct pixels for every index: shift the image and stamp the index into a corner.
    img = Image.fromarray(__import__("numpy").roll(__import__("numpy").asarray(base), i, axis=1))
    img.putpixel((0, 0), (i % 256, (i // 256) % 256, 7))
    return img


def _save(img: Image.Image, path: Path, fmt: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))


def _good_images(folder: Path, n: int, prefix: str = "img") -> List[str]:
    names = []
    for i in range(n):
        ext, fmt = ("jpg", "JPEG") if i % 2 == 0 else ("png", "PNG")
        name = f"{prefix}{i:05d}.{ext}"
        _save(image_for(i), folder / name, fmt)
        names.append(name)
    return names


def make_csv_dataset(directory, n: int, *, separator: str = ",", image_key: str = "filepath",
                     caption_key: str = "title", name: str = None) -> str:
    """``n`` good records: ``images/imgNNNNN.{jpg,png}`` + a CSV (or TSV with ``separator='\\t'``)."""
    directory = Path(directory)
    names = _good_images(directory / "images", n)
    path = directory / (name or ("pairs.tsv" if separator == "\t" else "pairs.csv"))
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter=separator)
        w.writerow([image_key, caption_key])
        for i, nm in enumerate(names):
            w.writerow([f"images/{nm}", caption_for(i)])
    return str(path)


def _sharegpt4v_record(i: int, image: str, caption) -> dict:
    rec = {"id": f"rec{i}", "image": image,
           "conversations": [{"from": "human", "value": "<image>\nWhat is in the image in detail?"}]}
    if caption is not None:
        rec["conversations"].append({"from": "gpt", "value": caption})
    return rec


def make_sharegpt4v_dataset(directory, n: int, *, eval_records: int = 0, sources=("coco", "sam")) -> str:
    """A ShareGPT4V json with ``eval_records`` + ``n`` records; images split between source folders
    ``coco/train2017/`` and ``sam/images/`` (configure roots with ``image_roots``). Record ``j``
    uses image / caption ``j``. Captions contain newlines, as ShareGPT4V's do."""
    directory = Path(directory)
    records = []
    for j in range(eval_records + n):
        src = sources[j % len(sources)]
        sub = {"coco": "train2017", "sam": "images"}.get(src, "images")
        fname = f"{src}{j:05d}.jpg" if j % 2 == 0 else f"{src}{j:05d}.png"
        _save(image_for(j), directory / src / sub / fname, "JPEG" if j % 2 == 0 else "PNG")
        records.append(_sharegpt4v_record(j, f"{src}/{sub}/{fname}", caption_for(j).replace(". Sentence 3", ".\nSentence 3")))
    path = directory / "sharegpt4v.json"
    path.write_text(json.dumps(records))
    return str(path)


def _tar_add(tar: tarfile.TarFile, name: str, data: bytes):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mtime = 0
    tar.addfile(info, io.BytesIO(data))


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


def make_wds_shards(directory, n: int, per_shard: int, *, caption_as_json_every: int = 3) -> str:
    """WebDataset shards ``shards/000000.tar``...: sample ``i`` has key ``sample{i:06d}``, a
    ``jpg`` or ``png`` image and a ``txt`` caption (every ``caption_as_json_every``-th a ``json``
    with a ``caption`` field). Returns the brace pattern."""
    directory = Path(directory) / "shards"
    directory.mkdir(parents=True, exist_ok=True)
    n_shards = -(-n // per_shard)
    for s in range(n_shards):
        with tarfile.open(directory / f"{s:06d}.tar", "w") as tar:
            for i in range(s * per_shard, min(n, (s + 1) * per_shard)):
                key = f"sample{i:06d}"
                ext, fmt = ("jpg", "JPEG") if i % 2 == 0 else ("png", "PNG")
                _tar_add(tar, f"{key}.{ext}", _encode(image_for(i), fmt))
                if caption_as_json_every and i % caption_as_json_every == caption_as_json_every - 1:
                    _tar_add(tar, f"{key}.json", json.dumps({"caption": caption_for(i)}).encode())
                else:
                    _tar_add(tar, f"{key}.txt", caption_for(i).encode())
    return str(directory / f"{{000000..{n_shards - 1:06d}}}.tar")


def png_bomb_bytes(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny valid-looking PNG whose header claims ``width x height`` pixels (a decompression
    bomb: decoding it would need gigabytes). Only the header is ever read."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def write_bad_inputs(folder) -> Dict[str, str]:
    """One image file per kind of bad or odd input, in ``folder``. Returns ``{case: file name}``.

    Skipped when decoded: ``zero_byte``, ``truncated`` (a JPEG cut in half), ``not_image``
    (text with a .jpg name), ``bomb`` (PNG header claiming 30000x30000). Repaired:
    ``grayscale`` (L), ``cmyk`` (CMYK JPEG), ``palette`` (P PNG), ``alpha`` (RGBA PNG).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    base = image_for(5)
    files = {}
    (folder / "zero.jpg").write_bytes(b"")
    files["zero_byte"] = "zero.jpg"
    full = _encode(base.resize((96, 96)), "JPEG")
    (folder / "truncated.jpg").write_bytes(full[: len(full) // 2])
    files["truncated"] = "truncated.jpg"
    (folder / "not_image.jpg").write_bytes(b"this is a caption file, not a JPEG\n" * 4)
    files["not_image"] = "not_image.jpg"
    (folder / "bomb.png").write_bytes(png_bomb_bytes())
    files["bomb"] = "bomb.png"
    _save(base.convert("L"), folder / "gray.png", "PNG")
    files["grayscale"] = "gray.png"
    _save(base.convert("CMYK"), folder / "cmyk.jpg", "JPEG")
    files["cmyk"] = "cmyk.jpg"
    _save(base.convert("P"), folder / "palette.png", "PNG")
    files["palette"] = "palette.png"
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    _save(rgba, folder / "alpha.png", "PNG")
    files["alpha"] = "alpha.png"
    return files


# What the CSV built by tests.test_data.make_bad_csv is expected to report (kept here so the
# CLI test and the loader test agree).
EXPECTED_BAD_CSV: Dict[str, int] = {}
