"""Small file-writing helpers shared by the whole package. A leaf: imports nothing from smartclip.

- :func:`atomic_write_text` / :func:`atomic_write_json`: write to a temporary name beside the
  target and rename, so a reader never sees half a file;
- :func:`sha256_file`: the SHA-256 of a file's bytes, read in chunks;
- :func:`set_default_file_mode`: give a file the mode the process's umask gives new files
  (safetensors creates its files readable by their owner only).
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

__all__ = ["atomic_write_text", "atomic_write_json", "sha256_file", "set_default_file_mode", "file_mode"]


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through a temporary file in the same folder."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
    return path


def atomic_write_json(path, data, *, indent: int = 2, default=None) -> Path:
    """``json.dumps(data)`` plus a final newline, written atomically."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=default) + "\n")


def sha256_file(path, chunk_size: int = 1 << 20) -> str:
    """The full hex SHA-256 of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(chunk_size), b""):
            h.update(chunk)
    return h.hexdigest()


def file_mode() -> int:
    """The mode a newly created regular file gets under this process's umask."""
    try:  # reading the umask without changing it (Linux)
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0o022)
        os.umask(umask)
    return 0o666 & ~umask


def set_default_file_mode(path) -> None:
    """Give ``path`` the mode every other file the project writes gets."""
    os.chmod(path, file_mode())
