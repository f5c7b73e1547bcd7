"""Readers for each benchmark's own published layout -> RetrievalData / ClassificationData.

Readers only parse annotations and list files; they never open images (the runner checks
and reports missing files). A malformed annotation raises :class:`DatasetFormatError`
naming the file, the record and the field.
"""
from __future__ import annotations

import csv
import io
import json
from collections import OrderedDict
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from .benchmark import ClassificationData, DatasetFormatError, DatasetNotFoundError, RetrievalData

__all__ = ["read_json_array_head", "load_sharegpt4v", "load_urban1k", "load_dci", "load_long_dci", "load_docci",
           "load_coco", "load_flickr30k_full", "load_flickr30k_karpathy", "load_retrieval_csv", "load_class_folders",
           "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")


def _need(path: Path, what: str = "file") -> Path:
    if (what == "file" and not path.is_file()) or (what == "folder" and not path.is_dir()):
        raise DatasetNotFoundError(f"{what} not found: {path}")
    return path


def _field(record: dict, key: str, where: str, kind=str):
    if not isinstance(record, dict) or key not in record:
        raise DatasetFormatError(f"{where}: missing field {key!r}")
    value = record[key]
    if not isinstance(value, kind):
        raise DatasetFormatError(f"{where}: field {key!r} is {type(value).__name__}, expected {kind.__name__}")
    return value


def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DatasetFormatError(f"{path}: not valid JSON ({exc})") from None


# --------------------------------------------------------------------------- retrieval
def read_json_array_head(path: Path, count: int, chunk_chars: int = 1 << 20) -> List[object]:
    """The first ``count`` elements of a file holding one top-level JSON array, read
    incrementally: ShareGPT4V's 1.5 GB json is never loaded whole for its first 1,000 records."""
    decoder = json.JSONDecoder()
    out: List[object] = []
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def fill():
            nonlocal buf, pos, eof
            more = f.read(chunk_chars)
            eof = not more
            buf, pos = buf[pos:] + more, 0

        def skip_space():
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\r\n":
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill()

        fill()
        skip_space()
        if pos >= len(buf) or buf[pos] != "[":
            raise DatasetFormatError(f"{path}: expected a JSON array")
        pos += 1
        while len(out) < count:
            skip_space()
            if pos < len(buf) and buf[pos] == "]":
                break
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    break
                except json.JSONDecodeError as exc:
                    if eof:
                        raise DatasetFormatError(f"{path}: record {len(out)} is not valid JSON ({exc})") from None
                    fill()
            out.append(value)
            pos = end
            skip_space()
            if pos < len(buf) and buf[pos] == ",":
                pos += 1
            elif pos < len(buf) and buf[pos] == "]":
                break
            else:
                raise DatasetFormatError(f"{path}: expected ',' or ']' after record {len(out) - 1}")
    return out


SHAREGPT4V_JSON = "share-captioner_coco_lcs_sam_1246k_1107.json"


def load_sharegpt4v(root: Path, json_name: str = SHAREGPT4V_JSON, count: int = 1000) -> RetrievalData:
    """First ``count`` records; caption = the gpt turn of ``conversations`` with newlines
    replaced by spaces; image = ``root / record["image"]``."""
    path = _need(root / json_name)
    records = read_json_array_head(path, count)
    images, captions = [], []
    for i, record in enumerate(records):
        where = f"{path} record {i}"
        image = _field(record, "image", where)
        turns = _field(record, "conversations", where, list)
        answers = [t for t in turns if isinstance(t, dict) and t.get("from") == "gpt"]
        if not answers:
            raise DatasetFormatError(f"{where}: field 'conversations' has no turn with from='gpt'")
        caption = _field(answers[0], "value", f"{where} conversations[gpt]").replace("\n", " ").strip()
        images.append(root / image)
        captions.append(caption)
    return RetrievalData(images, captions, list(range(len(images))), notes={"records_read": len(records)})


def load_urban1k(root: Path) -> RetrievalData:
    """``image/<stem>.jpg`` paired with ``caption/<stem>.txt`` by file stem."""
    image_dir, caption_dir = _need(root / "image", "folder"), _need(root / "caption", "folder")
    image_files = {p.stem: p for p in sorted(image_dir.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES}
    caption_files = {p.stem: p for p in sorted(caption_dir.iterdir()) if p.suffix == ".txt"}
    images, captions, t2i, missing = [], [], [], []
    for stem in sorted(set(image_files) | set(caption_files)):
        index = len(images)
        images.append(image_files.get(stem, image_dir / f"{stem}.jpg"))  # absent file -> reported missing
        if stem not in caption_files:
            continue  # the runner reports the image as having no caption
        text = caption_files[stem].read_text(encoding="utf-8").strip()
        if not text:
            missing.append(f"caption/{stem}.txt (empty)")
            continue
        captions.append(text)
        t2i.append(index)
    return RetrievalData(images, captions, t2i, missing)


def load_dci(root: Path) -> RetrievalData:
    """Every annotation named in ``densely_captioned_images/splits.json`` (all splits);
    caption = ``short_caption`` + newline + ``extra_caption``; image = ``photos/<image>``."""
    base = root / "densely_captioned_images"
    splits = _read_json(_need(base / "splits.json"))
    if not isinstance(splits, dict):
        raise DatasetFormatError(f"{base / 'splits.json'}: expected an object of split -> annotation files")
    images, captions, t2i, missing = [], [], [], []
    for split in splits:
        for name in splits[split]:
            path = base / "annotations" / name
            if not path.is_file():
                missing.append(f"densely_captioned_images/annotations/{name} (annotation absent)")
                continue
            record = _read_json(path)
            where = f"{path}"
            image = _field(record, "image", where)
            text = f"{_field(record, 'short_caption', where)}\n{_field(record, 'extra_caption', where)}".strip()
            t2i.append(len(images))
            images.append(base / "photos" / image)
            captions.append(text)
    return RetrievalData(images, captions, t2i, missing)


def load_long_dci(root: Path) -> RetrievalData:
    """Long-DCI as TULIP builds it from the DCI release: every
    ``densely_captioned_images/annotations/*.json`` in sorted file-name order, caption =
    ``extra_caption`` as written, image = ``photos/<image>``; records whose ``extra_caption``
    is empty are skipped and counted (``notes["empty_extra_caption"]``)."""
    base = root / "densely_captioned_images"
    folder = _need(base / "annotations", "folder")
    images, captions, empty = [], [], 0
    for path in sorted(folder.glob("*.json")):
        record = _read_json(path)
        caption = _field(record, "extra_caption", str(path))
        image = _field(record, "image", str(path))
        if len(caption) == 0:
            empty += 1
            continue
        images.append(base / "photos" / image)
        captions.append(caption)
    if not images and not empty:
        raise DatasetNotFoundError(f"no annotation files in {folder}")
    return RetrievalData(images, captions, list(range(len(images))),
                         notes={"annotations": len(images) + empty, "empty_extra_caption": empty})


def load_docci(root: Path, split: str = "test") -> RetrievalData:
    """Records of ``docci_descriptions.jsonlines`` with ``split == "test"``; image
    ``images/<image_file>``, caption ``description``."""
    path = _need(root / "docci_descriptions.jsonlines")
    images, captions = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetFormatError(f"{path} line {line_no}: not valid JSON ({exc})") from None
            where = f"{path} line {line_no}"
            if _field(record, "split", where) != split:
                continue
            images.append(root / "images" / _field(record, "image_file", where))
            captions.append(_field(record, "description", where).strip())
    return RetrievalData(images, captions, list(range(len(images))))


def load_coco(root: Path, captions_per_image: int = 5, split: str = "val2017") -> RetrievalData:
    """``annotations/captions_<split>.json``: images in file order, each with its first
    ``captions_per_image`` captions in annotation order; files ``<split>/<file_name>``."""
    path = _need(root / "annotations" / f"captions_{split}.json")
    data = _read_json(path)
    image_records = _field(data, "images", str(path), list)
    annotations = _field(data, "annotations", str(path), list)
    by_image: Dict[int, List[str]] = {}
    for i, a in enumerate(annotations):
        where = f"{path} annotations[{i}]"
        by_image.setdefault(_field(a, "image_id", where, int), []).append(_field(a, "caption", where).strip())
    images, captions, t2i = [], [], []
    fewer = 0
    for i, record in enumerate(image_records):
        where = f"{path} images[{i}]"
        index = len(images)
        images.append(root / split / _field(record, "file_name", where))
        own = by_image.get(_field(record, "id", where, int), [])[:captions_per_image]
        fewer += len(own) < captions_per_image
        captions.extend(own)
        t2i.extend([index] * len(own))
    return RetrievalData(images, captions, t2i, notes={"images_with_fewer_captions": fewer})


def load_flickr30k_full(root: Path, token_file: str = "results_20130124.token") -> RetrievalData:
    """Every line ``<name>.jpg#<n>\\t<caption>`` of the token file; images in order of first
    appearance, ``flickr30k-images/<name>.jpg``."""
    path = _need(root / token_file)
    grouped: "OrderedDict[str, List[str]]" = OrderedDict()
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            key, sep, caption = line.partition("\t")
            name, hash_sep, _ = key.partition("#")
            if not sep or not hash_sep or not name:
                raise DatasetFormatError(f"{path} line {line_no}: expected '<image>.jpg#<n><TAB><caption>', "
                                         f"got {line[:80]!r}")
            grouped.setdefault(name, []).append(caption.strip())
    return _grouped(root / "flickr30k-images", grouped)


def load_flickr30k_karpathy(root: Path, split: str = "test", json_name: str = "dataset_flickr30k.json"
                            ) -> RetrievalData:
    """Images of Karpathy's ``dataset_flickr30k.json`` with ``split == "test"`` (1,000), each
    with its ``sentences[*].raw`` (5)."""
    path = _need(root / json_name)
    data = _read_json(path)
    grouped: "OrderedDict[str, List[str]]" = OrderedDict()
    for i, record in enumerate(_field(data, "images", str(path), list)):
        where = f"{path} images[{i}]"
        if _field(record, "split", where) != split:
            continue
        sentences = _field(record, "sentences", where, list)
        grouped[_field(record, "filename", where)] = [
            _field(s, "raw", f"{where} sentences[{j}]").strip() for j, s in enumerate(sentences)]
    return _grouped(root / "flickr30k-images", grouped)


def _grouped(image_dir: Path, grouped: Dict[str, List[str]]) -> RetrievalData:
    images, captions, t2i = [], [], []
    for name, texts in grouped.items():
        texts = [t for t in texts if t]
        t2i.extend([len(images)] * len(texts))
        captions.extend(texts)
        images.append(image_dir / name)
    return RetrievalData(images, captions, t2i)


def load_retrieval_csv(path: Path) -> RetrievalData:
    """A CSV/TSV with a header naming an image column (``image`` or ``filepath``) and a
    caption column (``caption`` or ``title``); one row per pair, several rows per image
    allowed. Relative image paths are relative to the file's folder."""
    path = Path(path)
    _need(path)
    text = path.read_text(encoding="utf-8")
    delimiter = "\t" if path.suffix.lower() == ".tsv" or ("\t" in text.splitlines()[0] if text else False) else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    columns = reader.fieldnames or []
    image_col = next((c for c in ("image", "filepath") if c in columns), None)
    caption_col = next((c for c in ("caption", "title") if c in columns), None)
    if image_col is None or caption_col is None:
        raise DatasetFormatError(f"{path}: header must name an image column ('image' or 'filepath') and a "
                                 f"caption column ('caption' or 'title'); found {columns}")
    grouped: "OrderedDict[str, List[str]]" = OrderedDict()
    for row_no, row in enumerate(reader, 2):
        image, caption = (row.get(image_col) or "").strip(), (row.get(caption_col) or "").strip()
        if not image:
            raise DatasetFormatError(f"{path} line {row_no}: empty {image_col!r}")
        if not caption:
            raise DatasetFormatError(f"{path} line {row_no}: empty {caption_col!r} for image {image!r}")
        grouped.setdefault(image, []).append(caption)
    if not grouped:
        raise DatasetFormatError(f"{path}: no rows")
    return _grouped(path.parent, grouped)  # absolute paths stay absolute


# ---------------------------------------------------------------------- classification
def _class_folder_images(folders) -> Tuple[List[Path], List[int]]:
    """Image files of each class folder, labelled by the folder's position."""
    images, labels = [], []
    for label, folder in enumerate(folders):
        files = _image_files(folder)
        images.extend(files)
        labels.extend([label] * len(files))
    return images, labels


def _image_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_class_folders(root: Path, classnames: Optional[str] = None) -> ClassificationData:
    """One sub-folder per class (sorted). Class names: ``classnames`` file (or
    ``<root>/classnames.txt`` when present) with one name per line in sorted-folder order,
    or ``folder<TAB>name`` lines; otherwise folder names with '_' read as spaces."""
    _need(root, "folder")
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    if not folders:
        raise DatasetFormatError(f"{root}: no class folders (expected one sub-folder of images per class)")
    names = [f.name.replace("_", " ") for f in folders]
    names_file = Path(classnames) if classnames else root / "classnames.txt"
    if classnames and not names_file.is_file():
        raise DatasetNotFoundError(f"class names file not found: {names_file}")
    if names_file.is_file():
        lines = [ln.rstrip("\n") for ln in names_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
        if all("\t" in ln for ln in lines):
            mapping = dict(ln.split("\t", 1) for ln in lines)
            absent = [f.name for f in folders if f.name not in mapping]
            if absent:
                raise DatasetFormatError(f"{names_file}: no name for folders {absent[:10]}")
            names = [mapping[f.name].strip() for f in folders]
        elif len(lines) == len(folders):
            names = [ln.strip() for ln in lines]
        else:
            raise DatasetFormatError(f"{names_file}: {len(lines)} names for {len(folders)} class folders (one name "
                                     f"per line in sorted folder order, or 'folder<TAB>name' lines)")
    images, labels = _class_folder_images(folders)
    if not images:
        raise DatasetFormatError(f"{root}: class folders hold no images ({', '.join(IMAGE_SUFFIXES)})")
    return ClassificationData(images, labels, names)
