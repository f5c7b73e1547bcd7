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


# --------------------------------------------------------------------------- shell commands
# Every command in a ```bash block (continuations joined, comments dropped) and every "$ "
# line of a ```text transcript is either run here, from a temporary folder per page, in page
# order, or listed in SKIPPED with the reason. A command added to a page without either fails
# test_every_doc_command_is_run_or_skipped_with_a_reason.
SHELL = re.compile(r"(<!-- not run:[^>]*-->\s*\n)?```(bash|text)\n(.*?)```", re.S)
_TESTS = "the test suite runs it"
_TOUR = "the tour: tests/test_api_examples.py runs it as written"
_DATA = "needs a real dataset under /data or a trained paper-scale checkpoint"
_GPUS = "needs several GPUs and ShareGPT4V"
_BENCH = "a benchmark: minutes on a quiet machine; its figures and command are in docs/performance.md"
_SDXL = "needs SDXL weights and the feature extractors' weights"
SKIPPED = [  # (page, command prefix, reason)
    ("README.md", "make demo", "the whole demo (minutes); tests/test_demo.py runs it with --quick"),
    ("README.md", "make test", _TESTS),
    ("README.md", "torchrun ", _GPUS),
    ("README.md", "smartclip eval --model ", _DATA),
    ("README.md", "smartclip eval --compare runs/eval/", _DATA),
    ("README.md", "smartclip models", _TOUR), ("README.md", "smartclip encode", _TOUR),
    ("README.md", "smartclip search", _TOUR), ("README.md", "smartclip masks", _TOUR),
    ("README.md", "smartclip export", _TOUR), ("README.md", "smartclip serve", _TOUR),
    ("usage.md", "smartclip models smartclip-tiny ViT-B-16", _TOUR), ("usage.md", "smartclip encode", _TOUR),
    ("usage.md", "smartclip search", _TOUR), ("usage.md", "smartclip masks --model my-model", _TOUR),
    ("usage.md", "smartclip export", _TOUR), ("usage.md", "smartclip serve", _TOUR),
    ("demo.md", "smartclip demo --out runs/demo --data-only", None),  # run (None: not skipped)
    ("demo.md", "smartclip demo", "the demo and its grids take minutes; tests/test_demo.py runs them small"),
    ("evaluation.md", "smartclip eval --model ", _DATA),
    ("evaluation.md", "smartclip eval --compare ", _DATA),
    ("export.md", ".venv/bin/pytest", _TESTS),
    ("generation.md", "pip install", "installs packages"),
    ("generation.md", "smartclip generate", _SDXL), ("generation.md", "smartclip eval-generation", _SDXL),
    ("performance.md", ".venv/bin/python benchmarks/", _BENCH),
    ("performance.md", "python benchmarks/bench_", _BENCH),
    ("performance.md", "python -m benchmarks.gpu_check", "needs a CUDA GPU (tests/test_gpu_check.py runs --quick)"),
    ("performance.md", "pip ", "downloads wheels for the GPU machine"),
    ("performance.md", "export PYTHONPATH", "the GPU machine's setup"),
    ("training.md", "torchrun ", _GPUS),
    ("training.md", "#!/bin/bash", _GPUS), ("training.md", "#SBATCH", _GPUS), ("training.md", "export MASTER_", _GPUS),
    ("training.md", "srun ", _GPUS),
    ("training.md", "smartclip train configs/sharegpt4v", "needs ShareGPT4V and a GPU"),
    ("training.md", "smartclip data check /data/sharegpt4v", "needs ShareGPT4V (tests/test_data_prepare.py runs "
     "check and prepare on a ShareGPT4V-shaped fixture)"),
    ("training.md", "smartclip data prepare /data/sharegpt4v", "needs ShareGPT4V (tests/test_data_prepare.py runs "
     "check and prepare on a ShareGPT4V-shaped fixture)"),
    ("training.md", "smartclip train configs/tiny.yaml resume=runs/tiny/checkpoints/step_00000200",
     "names the step-200 checkpoint of the full 400-step run; resume=latest is run"),
]
# documented training runs are run with 2 steps (everything else as written); a page that names
# the checkpoint of its short run gets that name changed to match
SHORTER = {"demo.md": [("train.steps=20", "train.steps=2"), ("step_00000020", "step_00000002")]}
FAST_TRAIN = ["train.steps=2", "train.log_every=1", "checkpoint.every_steps=0", "eval.every_steps=0",
              "data.num_workers=0", "train.progress=false", "train.plots=false"]


def shell_commands(path):
    """``[(command, documented output lines or None)]`` of a page, in order."""
    out = []
    for skip, kind, body in SHELL.findall(path.read_text()):
        if skip:
            continue
        if kind == "bash":
            for line in body.replace("\\\n", " ").splitlines():
                line = line.strip()
                if line.startswith("#") and not line.startswith(("#!", "#SBATCH")):
                    continue
                command = line if line.startswith(("#!", "#SBATCH")) else line.split("  #")[0].split(" # ")[0]
                if command.strip():
                    out.append((" ".join(command.split()), None))
        else:
            lines = body.splitlines()
            for i, line in enumerate(lines):
                if line.startswith("$ "):
                    shown = [x for x in lines[i + 1:] if x.strip()]
                    end = next((j for j, x in enumerate(shown) if x.startswith("$ ")), len(shown))
                    out.append((line[2:].strip(), shown[:end]))
    return out


def skip_reason(page: str, command: str):
    for doc, prefix, reason in SKIPPED:
        if doc == page and command.startswith(prefix):
            return reason, True
    return None, False


PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def test_every_doc_command_is_run_or_skipped_with_a_reason():
    runnable = re.compile(r"([A-Z_]+=\S+ )*(smartclip |python -c )")
    unclassified = [(p.name, c) for p in PAGES if p.name not in OWN_TESTS for c, _ in shell_commands(p)
                    if not skip_reason(p.name, c)[1] and not runnable.match(c)]
    assert not unclassified, f"doc commands neither run nor listed in SKIPPED with a reason: {unclassified}"


def _matches(documented, printed) -> bool:
    """Each documented output line equals the printed one, '...' standing for any text."""
    if len(documented) != len(printed):
        return False
    return all(re.fullmatch(".*".join(map(re.escape, d.split("..."))), p.rstrip()) for d, p in zip(documented, printed))


def _run_command(command, expected, page, capsys):
    from smartclip.cli import main as cli
    if command.startswith("python -c "):
        import shlex
        code = shlex.split(command)[2]
        exec(compile(code, f"{page}: {command}", "exec"), {"__name__": "__docs__"})
        return
    import shlex
    words = shlex.split(command)
    while "=" in words[0]:  # VAR=value before the command
        name, _, value = words.pop(0).partition("=")
        os.environ[name] = value
    argv = words[1:]
    if argv[0] == "train" and "--print-config" not in argv and expected is None:
        argv += FAST_TRAIN
    capsys.readouterr()
    try:
        status = cli(argv)
    except SystemExit as e:  # argparse: --help / --version
        status = e.code
    captured = capsys.readouterr()
    printed = (captured.out + captured.err).strip().splitlines()
    if expected is None:
        assert status == 0, f"{page}: `{command}` exited {status}:\n" + "\n".join(printed[-20:])
    else:
        assert _matches(expected, printed), (f"{page}: `{command}` printed\n" + "\n".join(printed)
                                             + "\nbut the page shows\n" + "\n".join(expected))


COMMAND_PAGES = [p for p in PAGES if p.name not in OWN_TESTS and any(
    not skip_reason(p.name, c)[0] for c, _ in shell_commands(p))]


@pytest.mark.slow  # the training pages write a scene dataset and train a few steps
@pytest.mark.parametrize("doc", COMMAND_PAGES, ids=lambda p: p.name)
def test_doc_commands_run(doc, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(os, "environ", os.environ.copy())  # a page's VAR=value stays in this test
    (tmp_path / "configs").symlink_to(ROOT / "configs")  # the pages run from the repository root
    ran = 0
    for command, expected in shell_commands(doc):
        reason, listed = skip_reason(doc.name, command)
        if reason:
            continue
        for old, new in SHORTER.get(doc.name, []):
            command = command.replace(old, new)
        _run_command(command, expected, doc.name, capsys)
        ran += 1
    assert ran
