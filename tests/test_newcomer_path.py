"""The newcomer's path (issue 21): each friction a user met following the README, as a test.

Short messages, data checked before any model, packaged configs by name, one report per
torchrun job, the version, the help table, paths checked before generation loads anything,
and every command that writes into a folder holding results naming the flag that overrides.
"""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import smartclip
from smartclip import threads
from smartclip.cli import COMMANDS, main as cli
from smartclip.eval import SUITES

ROOT = Path(__file__).resolve().parents[1]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["HF_HUB_OFFLINE"] = "1"
    env.update(extra)
    return env


class ModelLoaded(Exception):
    pass


@pytest.fixture()
def no_model(monkeypatch):
    """Downloading or loading a model fails the test: the data check must come first (checking
    the model's name or path, which reads nothing, may come before it)."""
    import smartclip.factory
    check_only = smartclip.factory.resolve_model

    def resolve(spec, pretrained=None, *, download=False):
        if download:
            raise ModelLoaded("weights were fetched before the data was checked")
        return check_only(spec, pretrained)

    def refuse(*args, **kwargs):
        raise ModelLoaded("a model was loaded before the data was checked")
    monkeypatch.setattr(smartclip.factory, "resolve_model", resolve)
    monkeypatch.setattr(smartclip, "load", refuse)


# ----------------------------------------------------------------------------- top level
def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"smartclip {smartclip.__version__}"


def test_help_lists_commands_in_one_aligned_column(capsys):
    assert cli(["--help"]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.split("commands:\n")[1].splitlines() if line.strip()]
    assert len(rows) == len(COMMANDS)
    starts = set()
    for row, name in zip(rows, COMMANDS):
        assert row.startswith(f"  {name} ")
        starts.add(len(row) - len(row[len(name) + 2:].lstrip()))
    assert len(starts) == 1, rows  # every description starts in the same column (eval-generation included)


# ----------------------------------------------------------------------------- eval
def test_eval_checks_the_data_before_the_model(no_model, tmp_path, capsys):
    code = cli(["eval", "--model", "ViT-L-14:openai", "--benchmarks", "coco", "--data-root", str(tmp_path)])
    assert code == 2
    assert f"coco: data root {tmp_path / 'coco'} does not exist" in capsys.readouterr().err
    assert cli(["eval", "--model", "ViT-L-14:openai", "--benchmarks", f"retrieval:{tmp_path / 'no.csv'}"]) == 2
    assert "no.csv: no such file" in capsys.readouterr().err


def test_eval_without_the_suites_data_says_how_many_and_where_the_first_was_expected(no_model, tmp_path, capsys):
    argv = ["eval", "--model", "ViT-L-14:openai", "--benchmarks", "paper-zeroshot", "--data-root", str(tmp_path)]
    assert cli(argv) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    members = len(SUITES["paper-zeroshot"])
    assert lines[0].startswith(f"error: no data for {members} of {members} benchmarks")
    first = SUITES["paper-zeroshot"][0]
    assert f"the first: {first}: neither {tmp_path / ('wds_' + first)}" in lines[0]
    assert "--allow-partial" in lines[0] and "--verbose" in lines[1]
    assert len(lines) == 2 and len(err) < 600, err  # the message was one line of 4,708 characters
    assert cli(argv + ["--verbose"]) == 2
    verbose = capsys.readouterr().err
    for dataset_id in SUITES["paper-zeroshot"]:
        assert f"{dataset_id}: neither" in verbose and str(tmp_path / dataset_id) in verbose
    assert "WebDataset layout" in verbose


def test_eval_suggests_benchmark_names(no_model, capsys):
    assert cli(["eval", "--model", "smartclip-micro", "--benchmarks", "flikr30k", "--data-root", "/nowhere"]) == 2
    assert "unknown benchmark 'flikr30k'; did you mean: flickr30k?" in capsys.readouterr().err
    from smartclip.eval.registry import suggest_benchmarks
    assert suggest_benchmarks("clip_benchmark/sun379")[:2] == ["clip_benchmark/sun397", "clip_benchmark/wds/sun397"]
    assert suggest_benchmarks("paper-zeroshoot") == ["paper-zeroshot"]
    assert suggest_benchmarks("retreival") == ["retrieval:PATH"]


# ----------------------------------------------------------------------------- train
def test_train_finds_the_packaged_configs_by_name_from_any_folder(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)  # an empty folder: no configs/, no data
    assert cli(["train", "tiny", "--print-config"]) == 0  # --print-config needs no data
    out = capsys.readouterr().out
    assert "run_dir: runs/tiny" in out and "train: data/scenes/train_long.csv" in out
    assert cli(["train", "configs/tiny.yaml", "train.steps=7", "--print-config"]) == 0  # the README's spelling
    captured = capsys.readouterr()
    assert "steps: 7" in captured.out and "using the packaged" in captured.err
    assert cli(["train", "tiyn"]) == 2
    err = capsys.readouterr().err
    assert "tiyn: no such config file (did you mean tiny?)" in err and "sharegpt4v_b16" in err
    assert cli(["train", "tiny"]) == 2  # without --print-config the data must exist
    err = capsys.readouterr().err
    assert "data.train: 'data/scenes/train_long.csv' does not exist" in err
    assert "this config's first line is its command: python -c" in err  # how to write that data


def test_packaged_configs_are_the_repositorys_and_ship_as_package_data():
    from smartclip.cli.train import PACKAGED_CONFIGS, packaged_configs
    assert packaged_configs() == sorted(p.stem for p in (ROOT / "configs").glob("*.yaml"))
    for name in packaged_configs():
        assert (PACKAGED_CONFIGS / f"{name}.yaml").read_text() == (ROOT / "configs" / f"{name}.yaml").read_text()
    import tomllib
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]
    assert "configs/*.yaml" in package_data["smartclip"]


def test_only_rank_zero_reports_a_configuration_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for rank, expect_message in (("0", True), ("1", False), ("3", False)):
        monkeypatch.setenv("RANK", rank)
        monkeypatch.setenv("WORLD_SIZE", "4")
        assert cli(["train", "tiny"]) == 2  # the same status on every rank
        err = capsys.readouterr().err
        assert ("does not exist" in err) is expect_message, (rank, err)


# ----------------------------------------------------------------------------- generate
def test_generate_reports_a_missing_folder_before_loading_anything(no_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a cat\n")
    base = ["generate", "--model", "smartclip-micro", "--prompts", str(prompts), "--out", str(tmp_path / "o")]
    assert cli(base + ["--sdxl", str(tmp_path / "sdxl-base")]) == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'sdxl-base'}: no such folder" in err and "not a diffusers" not in err
    (tmp_path / "empty").mkdir()
    assert cli(base + ["--sdxl", str(tmp_path / "empty")]) == 2
    assert "not a diffusers pipeline folder (no model_index.json)" in capsys.readouterr().err
    (tmp_path / "empty" / "model_index.json").write_text("{}")  # looks like a pipeline: the prompts come next
    assert cli(base[:3] + ["--prompts", str(tmp_path / "nope.txt"), "--sdxl", str(tmp_path / "empty"),
                           "--out", "x"]) == 2
    assert f"--prompts {tmp_path / 'nope.txt'}: no such file" in capsys.readouterr().err


def test_progress_bars_of_diffusers_and_transformers_are_silenced_and_restored():
    diffusers_logging = pytest.importorskip("diffusers.utils.logging")
    transformers_logging = pytest.importorskip("transformers.utils.logging")
    import huggingface_hub.utils as hub
    from smartclip.generation.pipeline import progress_bars
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    with progress_bars(False):
        assert not diffusers_logging.is_progress_bar_enabled()
        assert not transformers_logging.is_progress_bar_enabled()
        assert hub.are_progress_bars_disabled()
    assert diffusers_logging.is_progress_bar_enabled() and transformers_logging.is_progress_bar_enabled()
    assert not hub.are_progress_bars_disabled()
    with progress_bars(True):
        assert diffusers_logging.is_progress_bar_enabled()


# ----------------------------------------------------------------------------- threads
def test_thread_plan_respects_the_users_choice(monkeypatch):
    user = threads.plan({"OMP_NUM_THREADS": "3", "OMP_WAIT_POLICY": "ACTIVE"})
    assert (user.threads, user.source) == (3, "OMP_NUM_THREADS")
    assert "OMP_NUM_THREADS" not in user.environment and "OMP_WAIT_POLICY" not in user.environment
    chosen = threads.plan({})
    assert chosen.source == "smartclip" and 1 <= chosen.threads <= threads.available_cores()
    assert chosen.environment == {"OMP_NUM_THREADS": str(chosen.threads), "OMP_WAIT_POLICY": "PASSIVE",
                                  "KMP_BLOCKTIME": "0"}
    monkeypatch.setattr(threads, "physical_cores", lambda: 1)
    assert threads.plan({}).threads == 1  # hyper-threads of one core count once
    monkeypatch.setattr(threads, "physical_cores", lambda: None)  # unreadable: the available cores
    assert threads.plan({}).threads == threads.available_cores()


def test_available_cores_follow_affinity_and_cgroup_quota(tmp_path, monkeypatch):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) is None
    (tmp_path / "cpu.max").unlink()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("100000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_cpu_limit(str(tmp_path)) == 1.0
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 1.0)
    assert threads.available_cores() == 1
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    if hasattr(os, "sched_getaffinity"):
        assert threads.available_cores() == len(os.sched_getaffinity(0))
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("".join(f"processor\t: {i}\nphysical id\t: 0\ncore id\t\t: {i // 2}\n\n" for i in range(8)))
    assert threads.physical_cores(str(cpuinfo)) == 4


def test_the_command_line_applies_the_thread_plan_before_torch_is_imported():
    """The console command (``smartclip``, ``python -m smartclip``) sets the threads; ``main(argv)``
    from Python does not touch them."""
    code = ("import os, sys; sys.argv = ['smartclip', 'models']; from smartclip.cli import console; console();"
            "import torch; print(os.environ['OMP_NUM_THREADS'], os.environ['OMP_WAIT_POLICY'], torch.get_num_threads())")
    env = _env()
    env.pop("OMP_NUM_THREADS", None), env.pop("OMP_WAIT_POLICY", None)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    n, policy, torch_threads = done.stdout.split()[-3:]
    assert policy == "PASSIVE" and int(n) == int(torch_threads) == threads.plan({}).threads
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=_env(OMP_NUM_THREADS="1"), timeout=300)
    assert done.stdout.split()[-3] == "1" and done.stdout.split()[-1] == "1"  # the user's setting wins


def test_dataloader_workers_run_one_thread():
    import torch
    from smartclip.data.mapstyle import _worker_init
    before = torch.get_num_threads()
    try:
        _worker_init(0)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
