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
import struct
import tarfile
import zlib
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
from PIL import Image

from conftest import real_images

__all__ = ["caption_for", "image_for", "make_csv_dataset", "make_sharegpt4v_dataset", "make_wds_shards",
           "write_bad_inputs", "png_bomb_bytes", "make_bad_csv_dataset", "make_bad_sharegpt4v_dataset",
           "make_bad_wds_shards", "LONG_CAPTION"]

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
    img = Image.fromarray(np.roll(np.asarray(base), i, axis=1))
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
    ``coco/train2017/`` and ``sam/images/`` (and ``llava/llava_pretrain/images/`` when ``sources`` names
    ``llava``; configure roots with ``image_roots``). Record ``j``
    uses image / caption ``j``. Captions contain newlines, as ShareGPT4V's do."""
    directory = Path(directory)
    records = []
    for j in range(eval_records + n):
        src = sources[j % len(sources)]
        sub = {"coco": "train2017", "sam": "images", "llava": "llava_pretrain/images"}.get(src, "images")
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


LONG_CAPTION = "A very long caption. " + " ".join(f"word{i}" for i in range(300)) + "."

# Records with bad or odd input shared by every format: (case, image case or good index, caption).
# Image case names refer to write_bad_inputs; ints are good images; None means no image field.
_NON_UTF8 = b"caf\xe9 au lait, not UTF-8"
_BAD_CASES = [
    ("missing_file", "missing", caption_for(900)),
    ("empty_file", "zero_byte", caption_for(901)),
    ("truncated_image", "truncated", caption_for(902)),
    ("not_an_image", "not_image", caption_for(903)),
    ("decompression_bomb", "bomb", caption_for(904)),
    ("missing_field", None, caption_for(905)),
    ("empty_caption", 0, ""),
    ("whitespace_caption", 1, "  \t  "),
    ("non_utf8_caption", 2, _NON_UTF8),
]
_REPAIRED_CASES = [
    ("converted_grayscale", "grayscale", caption_for(910)),
    ("converted_cmyk", "cmyk", caption_for(911)),
    ("converted_palette", "palette", caption_for(912)),
    ("converted_alpha", "alpha", caption_for(913)),
    ("truncated_caption", 3, LONG_CAPTION),
]


def _expected(n_good: int, include_missing_file: bool = True, extra_missing_field: int = 0) -> dict:
    counts = {case: 1 for case, _, _ in _BAD_CASES}
    counts.update({case: 1 for case, _, _ in _REPAIRED_CASES})
    if not include_missing_file:
        counts.pop("missing_file")
    counts["missing_field"] += extra_missing_field
    skipped = sum(v for k, v in counts.items() if not k.startswith(("converted", "truncated_caption")))
    good_captions = [caption_for(i) for i in range(n_good)] + [c for _, _, c in _REPAIRED_CASES]
    return {"counts": counts, "records": n_good + len(_REPAIRED_CASES) + skipped, "skipped": skipped,
            "good_captions": good_captions}


def make_bad_csv_dataset(directory, n_good: int = 8):
    """A CSV with ``n_good`` good records followed by one record of every kind of bad and odd
    input (missing/zero-byte/truncated/non-image/bomb images, missing fields, empty/whitespace/
    non-UTF-8 captions; grayscale/CMYK/palette/alpha images and a caption longer than the
    context, which are repaired). Returns ``(path, expected)`` with ``expected["counts"]`` by kind,
    ``expected["records"]``, ``expected["skipped"]`` and ``expected["good_captions"]``."""
    directory = Path(directory)
    names = _good_images(directory / "images", n_good)
    bad = write_bad_inputs(directory / "odd")
    rows = [(f"images/{nm}", caption_for(i)) for i, nm in enumerate(names)]
    for case, image, caption in _BAD_CASES + _REPAIRED_CASES:
        if image is None:
            rows.append(("", caption))
        elif image == "missing":
            rows.append(("images/does_not_exist.jpg", caption))
        elif isinstance(image, int):
            rows.append((f"images/{names[image]}", caption))
        else:
            rows.append((f"odd/{bad[image]}", caption))
    out = io.BytesIO()
    out.write(b"filepath,title\n")
    for image, caption in rows:
        cap = caption if isinstance(caption, bytes) else caption.encode()
        out.write(image.encode() + b',"' + cap.replace(b'"', b'""') + b'"\n')
    out.write(b"images/short_row_without_caption.jpg\n")  # a row missing its caption field
    path = directory / "bad.csv"
    path.write_bytes(out.getvalue())
    return str(path), _expected(n_good, extra_missing_field=1)


def make_bad_sharegpt4v_dataset(directory, n_good: int = 8, eval_records: int = 0):
    """Like ``make_bad_csv_dataset`` for a ShareGPT4V json (image paths under ``coco/``), after
    ``eval_records`` good held-out records. Extra bad record: no 'gpt' turn."""
    directory = Path(directory)
    names = _good_images(directory / "coco" / "train2017", max(n_good, 4) + eval_records)
    bad = write_bad_inputs(directory / "coco" / "odd")
    records = [_sharegpt4v_record(i, f"coco/train2017/{names[i]}", caption_for(i)) for i in range(eval_records)]
    records += [_sharegpt4v_record(eval_records + i, f"coco/train2017/{names[eval_records + i]}", caption_for(i))
                for i in range(n_good)]
    raw_bytes = {}
    for case, image, caption in _BAD_CASES + _REPAIRED_CASES:
        j = len(records)
        if image is None:
            rec = _sharegpt4v_record(j, "", caption)
            del rec["image"]
        else:
            path = ("coco/train2017/missing.jpg" if image == "missing" else
                    f"coco/train2017/{names[eval_records + image]}" if isinstance(image, int) else f"coco/odd/{bad[image]}")
            rec = _sharegpt4v_record(j, path, "@@NONUTF8@@" if isinstance(caption, bytes) else caption)
            if isinstance(caption, bytes):
                raw_bytes["@@NONUTF8@@"] = caption
        records.append(rec)
    records.append(_sharegpt4v_record(len(records), f"coco/train2017/{names[0]}", None))  # no gpt turn
    data = json.dumps(records).encode()
    for marker, raw in raw_bytes.items():
        data = data.replace(marker.encode(), raw)
    path = directory / "sharegpt4v_bad.json"
    path.write_bytes(data)
    return str(path), _expected(n_good, extra_missing_field=1)


def make_bad_wds_shards(directory, n_good: int = 8, per_shard: int = 6):
    """WebDataset shards with ``n_good`` good samples and every kind of bad and odd sample
    (a missing file cannot happen inside a tar; instead: a sample without an image member, one
    without a caption member, and a json caption without a 'caption' field, all missing_field)."""
    directory = Path(directory)
    bad_dir = directory / "odd_src"
    bad = write_bad_inputs(bad_dir)
    samples = []
    for i in range(n_good):
        ext, fmt = ("jpg", "JPEG") if i % 2 == 0 else ("png", "PNG")
        samples.append({ext: _encode(image_for(i), fmt), "txt": caption_for(i).encode()})
    for case, image, caption in _BAD_CASES + _REPAIRED_CASES:
        if image == "missing":
            continue
        if image is None:
            samples.append({"txt": caption.encode()})
            continue
        data = _encode(image_for(image), "PNG") if isinstance(image, int) else (bad_dir / bad[image]).read_bytes()
        ext = "png" if isinstance(image, int) else bad[image].rsplit(".", 1)[1]
        samples.append({ext: data, "txt": caption if isinstance(caption, bytes) else caption.encode()})
    samples.append({"jpg": _encode(image_for(0), "JPEG")})                                   # no caption member
    samples.append({"jpg": _encode(image_for(1), "JPEG"), "json": b'{"url": "x"}'})         # json, no caption
    out = directory / "bad_shards"
    out.mkdir(parents=True, exist_ok=True)
    n_shards = -(-len(samples) // per_shard)
    for s in range(n_shards):
        with tarfile.open(out / f"{s:04d}.tar", "w") as tar:
            for i in range(s * per_shard, min(len(samples), (s + 1) * per_shard)):
                for ext, data in samples[i].items():
                    _tar_add(tar, f"s{i:05d}.{ext}", data)
    return str(out / f"{{0000..{n_shards - 1:04d}}}.tar"), _expected(n_good, include_missing_file=False,
                                                                      extra_missing_field=2)


# ShareGPT4V's image mix (issue 19): SAM photos at 1,500 px on the shorter side, LLaVA LCS-558K
# around 336-600 px, COCO 640 x 480; plus sizes that round differently and one below the model's size.
SIZE_CLASSES = {"sam": (2250, 1500), "sam_portrait": (1500, 2250), "lcs_square": (336, 336), "lcs_large": (600, 500),
                "lcs_odd": (500, 333), "coco": (640, 480), "coco_portrait": (480, 640), "small": (100, 75)}
# Every colour repair the loader makes, each on a COCO-size image.
COLOUR_CASES = ("cmyk", "palette_transparency", "palette", "alpha", "la", "grey", "grey16")


def _photo(i: int, size) -> Image.Image:
    from skimage import data as photos
    names = ["astronaut", "coffee", "chelsea", "rocket"]
    arr = getattr(photos, names[i % len(names)])()
    return Image.fromarray(arr).convert("RGB").resize(size, Image.BICUBIC)


def _colour_case(case: str, base: Image.Image) -> Tuple[Image.Image, str]:
    if case == "cmyk":
        return base.convert("CMYK"), "JPEG"
    if case == "palette":
        return base.convert("P"), "PNG"
    if case == "palette_transparency":
        img = base.convert("P")
        img.info["transparency"] = 0
        return img, "PNG"
    if case in ("alpha", "la"):
        img = base.convert("RGBA" if case == "alpha" else "LA")
        alpha = Image.linear_gradient("L").resize(base.size)
        img.putalpha(alpha)
        return img, "PNG"
    if case == "grey":
        return base.convert("L"), "JPEG"
    arr = (np.asarray(base.convert("L"), dtype=np.uint16) * 257 // 3 + 1000).astype(np.uint16)  # 16-bit grey
    return Image.fromarray(arr), "PNG"


def make_size_class_dataset(directory) -> Tuple[str, Dict[str, str]]:
    """A CSV whose images cover every size class in ``SIZE_CLASSES`` (JPEG, quality 90) and every
    colour repair in ``COLOUR_CASES``. Returns ``(csv path, {case: caption})``; each caption starts
    with ``"Case NAME."``."""
    directory = Path(directory)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rows, captions = [], {}
    for i, (case, size) in enumerate(SIZE_CLASSES.items()):
        name = f"images/{case}.jpg"
        _photo(i, size).save(directory / name, quality=90)
        rows.append((name, case))
    for i, case in enumerate(COLOUR_CASES):
        img, fmt = _colour_case(case, _photo(i, (640, 480)))
        name = f"images/{case}.{'jpg' if fmt == 'JPEG' else 'png'}"
        img.save(directory / name, format=fmt)
        rows.append((name, case))
    path = directory / "sizes.csv"
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["filepath", "title"])
        for name, case in rows:
            captions[case] = f"Case {case}. A photo stored at its original size. It has two sentences."
            w.writerow([name, captions[case]])
    return str(path), captions
