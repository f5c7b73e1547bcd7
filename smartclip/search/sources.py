"""What to encode: the images of a folder or CSV, the lines of a text file.

Every item has an ``id`` (the image path relative to the folder / CSV, or the CSV's id
column; for texts the 1-based line number) that is written beside the embeddings.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

__all__ = ["ImageSource", "TextSource", "list_images", "read_text_lines", "IMAGE_EXTENSIONS",
           "SourceError"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
_PATH_COLUMNS = ("path", "filepath", "file", "image", "image_path", "filename")


class SourceError(ValueError):
    """An input folder / CSV / text file that cannot be used as given."""


@dataclass
class ImageSource:
    """Images to encode. ``paths[i]`` is relative to ``root`` (or absolute when outside it)."""

    root: Path
    ids: List[str]
    paths: List[str]
    description: str
    ignored: List[str] = field(default_factory=list)  # files in the folder that are not images

    def resolve(self, i: int) -> Path:
        p = Path(self.paths[i])
        return p if p.is_absolute() else self.root / p

    def __len__(self):
        return len(self.ids)


@dataclass
class TextSource:
    ids: List[str]
    texts: List[str]
    description: str
    blank_lines: List[int] = field(default_factory=list)

    def __len__(self):
        return len(self.ids)


def _check_id(value: str, where: str):
    if "\n" in value or "\r" in value or "\t" in value:
        raise SourceError(f"{where}: id {value!r} contains a newline or tab; ids are written one per line")


def _images_in_folder(folder: Path) -> ImageSource:
    ids, ignored = [], []
    for p in sorted(folder.rglob("*")):
        if not p.is_file() or any(part.startswith(".") for part in p.relative_to(folder).parts):
            continue  # hidden files and folders (.partial of a resumable run, .DS_Store...) are not inputs
        rel = p.relative_to(folder).as_posix()
        (ids if p.suffix.lower() in IMAGE_EXTENSIONS else ignored).append(rel)
    for i in ids:
        _check_id(i, str(folder))
    return ImageSource(root=folder.resolve(), ids=ids, paths=list(ids), description=f"folder {folder}",
                       ignored=ignored)


def _images_in_csv(csv_path: Path, column: Optional[str], id_column: Optional[str]) -> ImageSource:
    with open(csv_path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = reader.fieldnames or []
        if not columns:
            raise SourceError(f"{csv_path}: empty CSV; expected a header row with a path column "
                              f"(one of {', '.join(_PATH_COLUMNS)})")
        if column is None:
            column = next((c for c in _PATH_COLUMNS if c in columns), None)
            if column is None:
                raise SourceError(f"{csv_path}: no image path column; columns are {columns}, expected one of "
                                  f"{', '.join(_PATH_COLUMNS)} (or name it with --column)")
        elif column not in columns:
            raise SourceError(f"{csv_path}: no column {column!r}; columns are {columns}")
        if id_column is None and "id" in columns:
            id_column = "id"
        if id_column is not None and id_column not in columns:
            raise SourceError(f"{csv_path}: no id column {id_column!r}; columns are {columns}")
        ids, paths = [], []
        for line, row in enumerate(reader, start=2):
            value = (row.get(column) or "").strip()
            if not value:
                raise SourceError(f"{csv_path}, line {line}: empty {column!r}")
            ident = (row.get(id_column) or "").strip() if id_column else value
            if not ident:
                raise SourceError(f"{csv_path}, line {line}: empty id column {id_column!r}")
            _check_id(ident, f"{csv_path}, line {line}")
            ids.append(ident)
            paths.append(value)
    seen = set()
    for line, ident in enumerate(ids, start=2):
        if ident in seen:
            raise SourceError(f"{csv_path}, line {line}: duplicate id {ident!r}; ids must be unique")
        seen.add(ident)
    return ImageSource(root=csv_path.parent.resolve(), ids=ids, paths=paths, description=f"CSV {csv_path}")


def list_images(source, column: Optional[str] = None, id_column: Optional[str] = None) -> ImageSource:
    """The images of a folder (recursive, sorted, by extension) or of a CSV with a path column
    (relative paths are relative to the CSV's folder; ids from ``id_column``, else an ``id``
    column when there is one, else the path)."""
    source = Path(source)
    if source.is_dir():
        return _images_in_folder(source)
    if source.is_file() and source.suffix.lower() == ".csv":
        return _images_in_csv(source, column, id_column)
    if not source.exists():
        raise SourceError(f"{source}: no such folder or CSV file")
    raise SourceError(f"{source}: expected a folder of images or a .csv file with an image path column")


def read_text_lines(path) -> TextSource:
    """One text per line (UTF-8). Blank lines are not texts: they are skipped and listed in
    ``blank_lines``; ids are line numbers, so they still match the file."""
    path = Path(path)
    if not path.is_file():
        raise SourceError(f"{path}: no such text file")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise SourceError(f"{path}: not UTF-8 text ({e})") from e
    ids, texts, blank = [], [], []
    for number, line in enumerate(lines, start=1):
        if line.strip():
            ids.append(str(number))
            texts.append(line.strip())
        else:
            blank.append(number)
    if not texts:
        raise SourceError(f"{path}: no non-blank lines to encode")
    return TextSource(ids=ids, texts=texts, description=f"text file {path}", blank_lines=blank)

