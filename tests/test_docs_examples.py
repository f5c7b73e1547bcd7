"""Every ```python block in the README and docs runs as written (a fresh namespace per
file, blocks in order), from a temporary directory that looks like the repository root
(``configs/`` linked in; the scene dataset the training quick start writes, at a small
size). A block preceded by the line ``<!-- not run: reason -->`` is skipped: it needs data
or hardware the tests lack."""
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# pages whose examples a dedicated test runs and checks the output of
OWN_TESTS = {"data.md": "tests/test_data_docs.py"}
DOCS = [d for d in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))] if d.name not in OWN_TESTS]
BLOCK = re.compile(r"(<!-- not run:[^>]*-->\s*\n)?```python\n(.*?)```", re.S)


def python_blocks(path):
    return [code for skip, code in BLOCK.findall(path.read_text()) if not skip]


@pytest.mark.parametrize("doc", [d for d in DOCS if d.exists() and python_blocks(d)], ids=lambda p: p.name)
def test_examples_run(doc, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "configs").symlink_to(ROOT / "configs")
    if doc.name == "training.md":  # its quick start writes data/scenes first
        from smartclip.scenes import write_dataset
        write_dataset("data/scenes", num_train=64, num_test=16, num_single=16)
    namespace = {"__name__": "__docs__"}
    for i, code in enumerate(python_blocks(doc)):
        try:
            exec(compile(code, f"{doc.name}[block {i}]", "exec"), namespace)
        except Exception as e:  # pragma: no cover - the message is the point
            raise AssertionError(f"{doc.name} block {i} failed: {type(e).__name__}: {e}\n{code}") from e
