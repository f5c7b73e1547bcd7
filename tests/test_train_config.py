"""Configs: YAML + dotted overrides, typed, and bad configurations fail before any work."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

import smartclip
from smartclip.cli import main as cli_main
from smartclip.train import ConfigError, TrainConfig, build_optimizer, build_scheduler, load_config
from smartclip.train.config import LoopConfig, OptimConfig
from smartclip.train.optim import WarmupCosine

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture()
def csv(tmp_path):
    from data_fixtures import make_csv_dataset
    return make_csv_dataset(tmp_path / "data", 4)


@pytest.mark.parametrize("name", ["tiny.yaml", "sharegpt4v_b16.yaml", "sharegpt4v_l14.yaml"])
def test_shipped_configs_load_and_carry_their_run_command(name, csv):
    path = CONFIGS / name
    first = path.read_text().splitlines()[0]
    assert first.startswith("# ") and f"smartclip train configs/{name}" in first
    cfg = load_config(path, [f"data.train={csv}"])
    assert isinstance(cfg, TrainConfig) and cfg.objective == "smartclip"


def test_paper_recipe_matches_spec(csv):
    b16 = load_config(CONFIGS / "sharegpt4v_b16.yaml", [f"data.train={csv}"])
    l14 = load_config(CONFIGS / "sharegpt4v_l14.yaml", [f"data.train={csv}"])
    assert (b16.model.name, b16.model.pretrained, l14.model.name) == ("ViT-B-16", "openai", "ViT-L-14")
    for cfg in (b16, l14):
        assert cfg.train.global_batch == 1024 and cfg.train.epochs == 3 and cfg.train.precision == "fp16"
        assert (cfg.optim.clip.lr, cfg.optim.clip.weight_decay, cfg.optim.clip.warmup_steps) == (1e-6, 0.01, 200)
        assert (cfg.optim.mask.lr, cfg.optim.mask.weight_decay, cfg.optim.mask.warmup_steps) == (1e-3, 0.0, 0)
        assert (cfg.loss.align_weight, cfg.loss.sparsity_weight, cfg.loss.scale) == (10, 2, 100)
        assert cfg.data.caption_mode == "prefix" and cfg.data.exclude_sharegpt4v_eval


def test_overrides_are_typed_and_nested(csv):
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data.train={csv}", "train.steps=200", "run_dir=runs/x",
                                               "optim.clip.lr=1e-5", "objective=clip", "loss.scale=null",
                                               "train.micro_batch=8", "eval.specs=[a, b]", "model.options.soft_mask=true"])
    assert cfg.train.steps == 200 and cfg.run_dir == "runs/x" and cfg.objective == "clip"
    assert cfg.optim.clip.lr == 1e-5 and isinstance(cfg.optim.clip.lr, float)  # YAML reads "1e-5" as text
    assert cfg.loss.scale is None and cfg.train.micro_batch == 8 and cfg.eval.specs == ["a", "b"]
    assert cfg.model.options == {"mask_padding": True, "soft_mask": True}  # merged with the file's


@pytest.mark.parametrize("override, message", [
    ("train.stepz=3", "train.stepz: unknown key in 'train'. Did you mean 'steps'?"),
    # a key in the wrong section is answered with its full dotted path elsewhere
    ("train.lrr=1", "train.lrr: unknown key in 'train'. Did you mean 'optim.clip.lr' or 'optim.mask.lr'?"),
    ("optim.lr=1", "optim.lr: unknown key in 'optim'. Did you mean 'optim.clip.lr' or 'optim.mask.lr'?"),
    ("num_workers=0", "num_workers: unknown key at the top level. Did you mean 'data.num_workers'?"),
    ("loss.every_step=5", "Did you mean 'checkpoint.every_steps' or 'eval.every_steps'?"),
    ("trian.steps=3", "trian: unknown key at the top level. Did you mean 'train'?"),
    ("train.steps=abc", "train.steps: expected an integer or null, got 'abc'"),
    ("train.steps=0", "train.steps: must be >= 1, got 0"),
    ("train.epochs=2", "set exactly one of them (got steps=400, epochs=2)"),
    ("train.precision=fp8", "train.precision: 'fp8' is not valid; choose one of ['fp32', 'fp16', 'bf16']"),
    ("objective=clipp", "objective: 'clipp' is not valid; choose one of ['smartclip', 'clip'] (did you mean 'clip'?)"),
    ("train.progress=maybe", "train.progress: expected true or false, got 'maybe'"),
    ("optim.clip.lr=-1", "optim.clip.lr: must be a finite number >= 0, got -1.0"),
    ("optim.mask.betas=[0.9]", "optim.mask.betas: need two numbers in [0, 1), got [0.9]"),
    ("loss.scale=null", "loss.scale: null (a learned temperature) needs objective=clip"),
    ("model.options.colour=red", "model.options: unknown option(s) ['colour']"),
    ("checkpoint.keep_last=0", "checkpoint.keep_last: must be >= 1, got 0"),
    ("train.device=tpu", "train.device: 'tpu' is not valid"),
    ("data.train=/nonexistent/pairs.csv", "data.train: '/nonexistent/pairs.csv' does not exist"),
    ("data.captions_per_image=0", "data.captions_per_image=0; expected an integer >= 1"),
    ("train.steps.max=3", "train.steps: is a value (400), not a section"),
    ("train.steps", "override 'train.steps': expected key=value"),
])
def test_bad_configs_name_the_key_and_what_is_valid(override, message, csv):
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "tiny.yaml", [f"data.train={csv}", override])
    assert message in str(err.value)
    assert "tiny.yaml" in str(err.value)  # names the file too


def test_batch_sizes_are_checked_against_the_world_size():
    LoopConfig(steps=1, global_batch=8, micro_batch=2).check_world(2)
    with pytest.raises(ConfigError, match=r"train.global_batch=10 is not divisible by the 4 processes"):
        LoopConfig(steps=1, global_batch=10).check_world(4)
    with pytest.raises(ConfigError, match=r"train.micro_batch=3 must divide the local batch of 4 .* valid: \[1, 2, 4\]"):
        LoopConfig(steps=1, global_batch=8, micro_batch=3).check_world(2)


def test_composed_in_code_and_type_checked(csv):
    from smartclip.data import DataConfig
    cfg = TrainConfig(data=DataConfig(train=csv), objective="clip")
    cfg.train.steps = 5
    assert cfg.validate() is cfg
    cfg.train.steps = "five"
    with pytest.raises(ConfigError, match="train.steps: expected an integer or null"):
        cfg.validate()
    cfg.train.steps = 5
    cfg.data.num_workers = "4"  # the data section is checked by the same library (smartclip.configlib)
    with pytest.raises(ConfigError, match="data.num_workers: expected an integer, got '4'"):
        cfg.validate()


def test_eval_spec_check_surfaces_unexpected_errors(tmp_path, csv, monkeypatch):
    """Checking eval.specs turns an unknown name or missing data into a ConfigError; a bug in
    a benchmark (any other exception) surfaces as itself, with its traceback."""
    import smartclip.eval
    from smartclip.train import train
    cfg = load_config(CONFIGS / "tiny.yaml", [f"data.train={csv}", f"run_dir={tmp_path / 'run'}",
                                              "eval.specs=[retrieval:/nonexistent/pairs.csv]"])

    def planted(*args, **kwargs):
        raise RuntimeError("planted: a bug in a benchmark")

    monkeypatch.setattr(smartclip.eval, "get_benchmark", planted)
    with pytest.raises(RuntimeError, match="planted: a bug in a benchmark") as err:
        train(cfg)
    assert not isinstance(err.value, ConfigError)

    def missing(*args, **kwargs):
        raise FileNotFoundError("no such file: /nonexistent/pairs.csv")

    monkeypatch.setattr(smartclip.eval, "get_benchmark", missing)
    with pytest.raises(ConfigError, match=r"eval.specs: 'retrieval:/nonexistent/pairs.csv': no such file"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_cli_rejects_bad_config_before_any_work(tmp_path, csv, capsys):
    run_dir = tmp_path / "run"
    code = cli_main(["train", str(CONFIGS / "tiny.yaml"), f"data.train={csv}", f"run_dir={run_dir}",
                     "train.micro_batch=5"])
    assert code == 2
    assert "train.micro_batch=5 must divide the local batch of 32" in capsys.readouterr().err
    assert not run_dir.exists()


def test_cli_print_config_resolves_overrides(csv, capsys):
    assert cli_main(["train", str(CONFIGS / "tiny.yaml"), f"data.train={csv}", "train.steps=7",
                     "--print-config"]) == 0
    import yaml
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7 and printed["data"]["train"] == csv


def test_schedule_is_warmup_then_cosine_per_group():
    f = WarmupCosine(warmup=200, total=3650)
    assert f(0) == pytest.approx(1 / 200) and f(199) == pytest.approx(1.0)
    assert f(200) == pytest.approx(1.0) and f(3650) == pytest.approx(0.0)
    assert f(200 + 3450 // 2) == pytest.approx(0.5, abs=1e-3)
    g = WarmupCosine(warmup=0, total=10)
    assert g(0) == 1.0 and g(5) == pytest.approx(0.5) and g(10) == pytest.approx(0.0)
    assert WarmupCosine(3, 10, "constant")(9) == 1.0


@pytest.mark.filterwarnings("ignore:Detected call of")
def test_two_adamw_groups_clip_and_mask():
    torch.manual_seed(0)
    model = smartclip.create_model("smartclip-micro")
    model.logit_scale.requires_grad_(False)
    opt = build_optimizer(model, OptimConfig())
    groups = {g["name"]: g for g in opt.param_groups}
    mask_ids = {id(p) for p in model.mask_net.parameters()}
    assert {id(p) for p in groups["mask"]["params"]} == mask_ids
    assert not mask_ids & {id(p) for p in groups["clip"]["params"]}
    assert (groups["clip"]["weight_decay"], groups["mask"]["weight_decay"]) == (0.01, 0.0)
    sched = build_scheduler(opt, OptimConfig(), total_steps=1000)
    lrs = [g["lr"] for g in opt.param_groups]
    assert lrs == [pytest.approx(1e-6 / 200), pytest.approx(1e-3)]  # warm-up only on the CLIP weights
    for _ in range(600):
        sched.step()
    assert groups["clip"]["lr"] == pytest.approx(1e-6 * 0.5 * (1 + math.cos(math.pi * 400 / 800)))
    assert groups["mask"]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi * 600 / 1000)))
