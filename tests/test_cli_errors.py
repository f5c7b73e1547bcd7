"""A newcomer's mistakes get one clear line and a non-zero exit, from every command.

Every command and sub-command whose parser has a ``model`` argument is found in
``smartclip.cli.COMMANDS`` (so a new one is covered without editing this file) and run with
each mistake: a checkpoint path that does not exist, a training run folder, a folder without
a checkpoint, an unknown model name and a pretrained tag whose weights cannot be downloaded.
``models`` (names as positionals) and ``train`` (``model.name`` in the config) are driven
separately. Help must not import torch.
"""
import argparse
import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import smartclip
from smartclip.checkpoint import ModelNotFoundError
from smartclip.cli import COMMANDS, main as cli
from smartclip.factory import resolve_model

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------- the commands
def _parsers():
    """(argv prefix, parser) of every command and sub-command."""
    def walk(prefix, parser):
        yield prefix, parser
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(prefix + [name], sub)

    for name, (module_name, _) in COMMANDS.items():
        parser = argparse.ArgumentParser(prog=f"smartclip {name}")
        importlib.import_module(f"smartclip.cli.{module_name}").add_arguments(parser)
        yield from walk([name], parser)


def _argv_with_model(prefix, parser, spec):
    """``prefix`` + the model ``spec`` + a placeholder for every other required argument: the
    model is checked before anything else, so the placeholders are never read."""
    argv, required_groups = list(prefix), [g for g in parser._mutually_exclusive_groups if g.required]
    for group in required_groups:
        first = group._group_actions[0]
        argv += [first.option_strings[0], "placeholder"]
    grouped = {a for g in required_groups for a in g._group_actions}
    for action in parser._actions:
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)) or action in grouped:
            continue
        value = spec if action.dest == "model" else (action.choices[0] if action.choices else "placeholder")
        if action.option_strings:
            if action.dest == "model" or action.required:
                argv += [action.option_strings[0], value]
        elif action.dest == "model" or action.nargs in (None, "+"):
            argv.append(value)
    return argv


MODEL_COMMANDS = [(prefix, parser) for prefix, parser in _parsers()
                  if any(a.dest == "model" for a in parser._actions)]


def test_the_commands_that_take_a_model_are_found():
    found = {" ".join(prefix) for prefix, _ in MODEL_COMMANDS}
    assert {"eval", "encode", "search build", "search query", "masks", "export", "serve"} <= found


# --------------------------------------------------------------------------- the mistakes
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A training run folder (two checkpoints), a folder with a weights file, an empty folder."""
    root = tmp_path_factory.mktemp("mistakes")
    run = root / "runs" / "tiny"
    model = smartclip.create_model("smartclip-micro")
    for step in (40, 60):
        smartclip.save_checkpoint(model, run / "checkpoints" / f"step_{step:08d}")
    (run / "config.yaml").write_text("run_dir: runs/tiny\n")
    (run / "metrics.jsonl").write_text("")
    (root / "downloads").mkdir()
    (root / "downloads" / "weights.pt").write_bytes(b"")
    (root / "empty").mkdir()
    (root / "pairs.csv").write_text("filepath,title\nimage.png,a cat\n")  # training data (never read)
    return root


@pytest.fixture()
def offline(monkeypatch, tmp_path):
    """No network and an empty Hugging Face cache, whatever this machine has cached."""
    import huggingface_hub.constants as hub
    monkeypatch.setattr(hub, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


# spec as typed (relative to workdir) -> what the one line must say
MISTAKES = {
    "missing path": ("runs/tiny/checkpoints/step_00000099",
                     ["runs/tiny/checkpoints/step_00000099 does not exist", "did you mean",
                      "runs/tiny/checkpoints/step_00000060"]),
    "run folder": ("runs/tiny", ["runs/tiny is a training run folder, not a checkpoint",
                                 "its latest checkpoint is runs/tiny/checkpoints/step_00000060"]),
    "folder without a checkpoint": ("empty", ["empty is a folder without a checkpoint"]),
    "unknown name": ("ViT-B-61", ["Unknown model name 'ViT-B-61'", "Did you mean ViT-B-16"]),
    "offline tag": ("ViT-B-16:openai", ["ViT-B-16:openai", "could not be downloaded",
                                        "pass the file as ViT-B-16:/path/to/open_clip_pytorch_model.bin"]),
}


def _one_line_error(capsys, command):
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"smartclip {command.split()[0]}"), err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize("mistake", list(MISTAKES))
@pytest.mark.parametrize("prefix,parser", MODEL_COMMANDS, ids=[" ".join(p) for p, _ in MODEL_COMMANDS])
def test_every_model_command_names_the_mistake(prefix, parser, mistake, workdir, offline, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    spec, expected = MISTAKES[mistake]
    if mistake == "offline tag":
        # a known tag passes the name check; the command's own data and path checks (prepare)
        # come next, before any download, and would refuse the placeholders: bypassed here (they
        # are tested in test_newcomer_path.py), so that the download's one line is what is seen
        module = importlib.import_module(f"smartclip.cli.{COMMANDS[prefix[0]][0]}")
        monkeypatch.setattr(module, "prepare", lambda args: None, raising=False)
    argv = _argv_with_model(prefix, parser, spec)
    assert cli(argv) == 2, argv
    err = _one_line_error(capsys, prefix[0])
    for text in expected:
        assert text in err


@pytest.mark.parametrize("mistake", [m for m in MISTAKES if m != "offline tag"])
def test_models_command_names_the_mistake(mistake, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    spec, expected = MISTAKES[mistake]
    assert cli(["models", spec]) == 2
    err = _one_line_error(capsys, "models")
    assert all(text in err for text in expected), err


def test_models_command_describes_a_tag_without_its_weights(workdir, offline, capsys):
    assert cli(["models", "ViT-B-16:openai"]) == 0  # the architecture only: nothing to download
    assert "embed 512" in capsys.readouterr().out


@pytest.mark.parametrize("mistake", list(MISTAKES))
def test_train_names_a_mistake_in_model_name_before_starting(mistake, workdir, offline, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    spec, expected = MISTAKES[mistake]
    assert cli(["train", f"model.name={spec}", "data.train=pairs.csv", "run_dir=runs/new", "train.steps=1"]) == 2
    err = _one_line_error(capsys, "train")
    assert all(text in err for text in expected), err
    assert not (workdir / "runs" / "new").exists()  # refused before the run folder was made


# ------------------------------------------------------------------- the resolution itself
def test_resolve_model_accepts_what_load_reads(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    step = "runs/tiny/checkpoints/step_00000060"
    assert resolve_model(step) == (step, None)
    assert resolve_model("downloads/weights.pt") == ("downloads/weights.pt", None)  # a file: read when loaded
    assert resolve_model("smartclip-micro") == ("smartclip-micro", None)
    assert resolve_model("ViT-B/16") == ("ViT-B/16", None)  # open_clip's spelling with a slash
    assert resolve_model("ViT-B-16:openai") == ("ViT-B-16", "openai")  # nothing downloaded
    assert resolve_model("ViT-B-16:downloads/weights.pt") == ("ViT-B-16", "downloads/weights.pt")
    assert resolve_model("ViT-B-16", pretrained="openai") == ("ViT-B-16", "openai")
    (workdir / "hf-export").mkdir(exist_ok=True)  # what smartclip.export(..., format="hf") marks its folders with
    (workdir / "hf-export" / "smartclip_hf.json").write_text("{}")
    assert resolve_model("hf-export") == ("hf-export", None)


@pytest.mark.parametrize("spec,expected", [
    ("runs/tny/checkpoints/step_00000060", "runs/tny/checkpoints/step_00000060 does not exist (nor does runs/tny); "
                                           "did you mean runs/tiny?"),
    ("nowhere/model.pt", "nowhere/model.pt does not exist (nor does nowhere); the current folder"),
    ("runs/tiny/checkpoints", "runs/tiny/checkpoints is a folder of 2 checkpoint(s), not a checkpoint; its latest "
                              "checkpoint is runs/tiny/checkpoints/step_00000060: pass that"),
    ("downloads", "downloads is a folder, not a checkpoint (no smartclip_config.json); to load a weights file in "
                  "it, pass the file: downloads/weights.pt"),
    ("empty", "empty is a folder without a checkpoint: no smartclip_config.json (smartclip's format), no Hugging "
              "Face export, no .pt/.bin/.safetensors file (it is empty)"),
    ("ViT-B-16:laion", "'laion' is neither a file nor an open_clip tag of ViT-B-16 (its tags: openai, "),
    ("ViT-B-16:./missing.bin", "./missing.bin does not exist"),
    ("coca_ViT-B-32", "'coca_ViT-B-32' is an open_clip model whose text tower smartclip cannot extend"),
    ("vit-b-16", "Unknown model name 'vit-b-16'. Did you mean ViT-B-16"),
])
def test_resolve_model_says_what_is_wrong(spec, expected, workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model(spec)
    assert expected in str(info.value) and "\n" not in str(info.value)


def test_unknown_name_lists_a_few_names_not_all(workdir):
    with pytest.raises(ModelNotFoundError) as info:
        resolve_model("ViT-B-61")
    assert len(str(info.value)) < 300 and "ViT-L-14-336" not in str(info.value)


def test_run_folder_without_checkpoints_yet(tmp_path):
    (tmp_path / "config.yaml").write_text("{}")
    (tmp_path / "metrics.jsonl").write_text("")
    with pytest.raises(ModelNotFoundError, match="training run folder without a checkpoint yet"):
        resolve_model(str(tmp_path))


def test_load_and_create_model_give_the_same_errors(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    with pytest.raises(ModelNotFoundError, match="is a training run folder"):
        smartclip.load("runs/tiny")
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        smartclip.create_model("ViT-B-16", pretrained="downloads/other.pt")


def test_offline_tag_from_the_library(offline):
    with pytest.raises(ModelNotFoundError, match="could not be downloaded") as info:
        smartclip.create_model("ViT-B-16", pretrained="openai")
    assert "https://huggingface.co/timm/vit_base_patch16_clip_224.openai" in str(info.value)


# ------------------------------------------------------------------ the real entry point
def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""), **extra}
    return env


def test_help_imports_neither_torch_nor_open_clip():
    """``smartclip --help`` and every ``smartclip CMD [SUB] --help``, in one fresh interpreter."""
    argvs = [[]] + [prefix for prefix, _ in _parsers()]
    code = f"""
import contextlib, io, json, sys
from smartclip.cli import main
for argv in {json.dumps(argvs)}:
    with contextlib.redirect_stdout(io.StringIO()) as out:
        try:
            main(argv + ["--help"])
        except SystemExit as e:
            assert e.code == 0, (argv, e.code)
    assert "usage" in out.getvalue() or "commands:" in out.getvalue(), argv
heavy = sorted(m for m in ("torch", "open_clip", "numpy", "PIL", "transformers") if m in sys.modules)
print(json.dumps(heavy))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_env(), timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []


@pytest.mark.slow
def test_console_command_offline_tag_is_one_line(tmp_path):
    """The 58-line traceback of the issue: ``smartclip eval --model ViT-B-16:openai`` offline."""
    (tmp_path / "pairs.csv").write_text("filepath,title\na.jpg,a photo\n")  # the data is checked first
    done = subprocess.run([sys.executable, "-m", "smartclip", "eval", "--model", "ViT-B-16:openai",
                           "--benchmarks", "retrieval:pairs.csv"], capture_output=True, text=True, cwd=tmp_path,
                          timeout=300,
                          env=_env(HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf")))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("smartclip eval: error: ViT-B-16:openai:"), done.stderr
