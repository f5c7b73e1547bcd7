"""The demo end to end (shortened), its run plan, the shipped base, reuse of finished runs, the CLI."""
import json
import typing

import pytest

from smartclip.fileio import sha256_file
from smartclip.scenes.demo import (BASE_DIR, BASE_SHA256, METHODS, BaseRecipe, DemoConfig, build_base, plan_runs,
                                   run_demo, shipped_base)
from smartclip.scenes.plan import DemoPaths, MethodName, train_config


def test_plan_fine_tunes_every_method_from_the_base_with_identical_settings():
    cfg = DemoConfig(scratch=True)
    runs = plan_runs(cfg, seeds=3)
    finetunes = [r for r in runs if r.stage == "finetune"]
    assert len(finetunes) == (2 + len(METHODS)) * 3  # the controls run in the long regime only
    assert {r.method for r in finetunes if r.regime == "short"} == {"clip", "smartclip"}
    assert {r.steps for r in finetunes} == {cfg.finetune_steps}
    scratch = [r for r in runs if r.stage == "scratch"]
    assert {r.method for r in scratch} == {"clip", "smartclip"} and {r.steps for r in scratch} == {cfg.scratch_steps}
    assert [r.mask_trained for r in runs if r.seed == 0 and r.regime == "long" and r.stage == "finetune"] == \
        [False, True, False, True]


def test_fine_tune_configs_differ_only_in_objective_mask_and_scale(tmp_path):
    from smartclip.train import config_to_dict
    cfg = DemoConfig()
    runs = {r.method: r for r in plan_runs(cfg, 1) if r.regime == "long"}
    paths = DemoPaths(tmp_path, tmp_path, tmp_path / "base", tmp_path / "init")
    dicts = {m: config_to_dict(train_config(cfg, r, paths)) for m, r in runs.items()}
    assert dicts["smartclip"]["loss"]["scale"] == "model" and dicts["smartclip_fullmask"]["loss"]["scale"] == "model"
    assert dicts["smartclip_scale100"]["loss"]["scale"] == 100.0 and dicts["clip"]["loss"]["scale"] is None
    for m, d in dicts.items():
        assert d["model"]["name"] == str(tmp_path / "base")
        assert d["optim"] == dicts["smartclip"]["optim"] and d["train"] == dicts["smartclip"]["train"]
        assert d["data"] == dicts["smartclip"]["data"] and d["seed"] == 0


def test_bad_demo_configs_fail_with_the_field_name():
    with pytest.raises(ValueError, match="regimes"):
        DemoConfig(regimes=["medium"]).validate()
    with pytest.raises(ValueError, match="methods"):
        DemoConfig(methods=["siglip"]).validate()
    with pytest.raises(ValueError, match="finetune_steps"):
        DemoConfig(finetune_steps=0).validate()
    with pytest.raises(ValueError, match="scale"):
        DemoConfig(scale="sharp").validate()
    from smartclip.train import ConfigError
    with pytest.raises(ConfigError, match="demo.finetune_stepz: unknown key in 'demo'. Did you mean 'finetune_steps'"):
        DemoConfig.quick(finetune_stepz=3)
    assert set(typing.get_args(MethodName)) == set(METHODS)  # the config's choices are the methods run


def test_a_finished_run_is_reused_from_its_score_once_its_checkpoint_is_deleted(tmp_path):
    from smartclip.scenes.finetune import _finished
    run_dir, result = tmp_path / "runs/long/clip/seed0", tmp_path / "evals/long_clip_seed0.json"
    run_dir.mkdir(parents=True)
    result.parent.mkdir()
    config = {"seed": 0}
    done = {"config": config, "checkpoint": str(run_dir / "checkpoints/step_00000002"), "steps": 2,
            "checkpoint_hash": "abc"}
    (run_dir / "done.json").write_text(json.dumps(done))
    assert _finished(run_dir, config, result) is None  # deleted and never scored on this split: train again
    result.write_text(json.dumps({"checkpoint_hash": "abc", "metrics": {}}))
    assert _finished(run_dir, config, result) == done
    result.write_text(json.dumps({"checkpoint_hash": "other weights", "metrics": {}}))
    assert _finished(run_dir, config, result) is None
    with pytest.raises(FileExistsError, match="another configuration"):
        _finished(run_dir, {"seed": 1}, result)


def test_cli_command_line_is_the_one_given():
    import argparse
    from smartclip.cli.demo import add_arguments, command_line
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert command_line(parser.parse_args(["--quick", "--out", "/tmp/d q", "--seeds", "2", "--scratch"])) == \
        "smartclip demo --out '/tmp/d q' --seeds 2 --scratch --quick"
    assert command_line(parser.parse_args(["--grid", "loss.dual_lr=1,10", "--keep-checkpoints", "--workers", "1"])) \
        == "smartclip demo --out runs/demo --seeds 3 --keep-checkpoints --workers 1 --grid loss.dual_lr=1,10 " \
           "--grid-split val --grid-regime long"


def test_shipped_base_is_small_and_its_hash_is_checked(tmp_path, monkeypatch):
    weights = BASE_DIR / "model.safetensors"
    assert weights.stat().st_size < 10 * 1000 * 1000
    assert sha256_file(weights) == BASE_SHA256 and shipped_base() == BASE_DIR
    record = json.loads((BASE_DIR / "base.json").read_text())
    assert record["sha256"] == BASE_SHA256 and record["command"].startswith("smartclip demo --build-base")
    monkeypatch.setattr("smartclip.scenes.base_model.BASE_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="modified or damaged"):
        shipped_base()


@pytest.mark.slow
def test_quick_demo_writes_every_output_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    config = DemoConfig.quick(scratch=True, regimes=["long"], workers=2)
    command = f"smartclip demo --out {out} --seeds 2 --quick"
    record = run_demo(out, seeds=2, config=config, progress=False, command=command)
    for name in ("results.json", "report.md", "plots/training_curves.png", "plots/mask_curves.png",
                 "plots/mask_usage.png", "plots/retrieval_examples.png", "data/labels.json"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    groups = ["random init", "base"] + [f"long/{m}" for m in METHODS] + ["scratch-long/clip", "scratch-long/smartclip"]
    assert list(saved["summary"]) == groups
    smart, clip = saved["summary"]["long/smartclip"], saved["summary"]["long/clip"]
    assert smart["long_t2i@1"]["n"] == 2 and len(smart["long_t2i@1"]["values"]) == 2
    assert "mask_algebra" in smart and "mask_algebra" not in clip  # CLIP never trains the mask
    assert saved["base"]["sha256"] == BASE_SHA256 and saved["base"]["shipped"]
    # every run that trains the mask is followed at every step (curve_every=1) from step 0
    for name, run in saved["runs"].items():
        trains_mask = run["method"] in ("smartclip", "smartclip_scale100")
        assert [p["step"] for p in run["curve"]] == (list(range(run["steps"] + 1)) if trains_mask else []), name
    # the modular loss ran at the base's own temperature, the control at 100
    cfg = json.loads((out / "runs/long/smartclip/seed0/done.json").read_text())["config"]
    assert cfg["model"]["name"] == str(BASE_DIR) and cfg["loss"]["scale"] == "model"
    from smartclip.train import read_metrics
    scales = {m: read_metrics(out / f"runs/long/{m}/seed0/metrics.jsonl", "train")[0]["scale"] for m in METHODS}
    assert scales["smartclip"] == pytest.approx(saved["base"]["logit_scale"], rel=1e-6)
    assert scales["smartclip_fullmask"] == scales["smartclip"] and scales["smartclip_scale100"] == 100.0
    assert {c["verdict"] for c in saved["comparisons"]} <= {"better", "worse", "no clear difference"}
    assert {c["b"] for c in saved["comparisons"] if c["metric"] != "mask gap"} == \
        {"clip", "smartclip_fullmask", "smartclip_scale100"}
    report = (out / "report.md").read_text()
    assert "| metric |" in report and "plots/mask_curves.png" in report and f"Command: `{command}`" in report
    # only the weights the report's plots load are kept: no optimizer state, no other checkpoint
    plotted = {"long/clip/seed0", "long/smartclip/seed0", "scratch-long/smartclip/seed0"}
    for name, run in saved["runs"].items():
        checkpoints = out / "runs" / name / "checkpoints"
        assert run["checkpoint_kept"] == (name in plotted), name
        if name in plotted:
            assert sorted(p.name for p in checkpoints.glob("*/*")) == ["model.safetensors", "smartclip_config.json"]
        else:
            assert not checkpoints.exists() and (out / "runs" / name / "done.json").is_file(), name
    printed = capsys.readouterr().out
    assert "one-concept prompt mAP" in printed and "long captions, SmartCLIP vs CLIP:" in printed
    # a second call reuses every finished run and evaluation, checkpoint or not: same numbers
    again = run_demo(out, seeds=2, config=config, progress=False)
    assert again["summary"] == record["summary"] and all(r["reused"] for r in again["runs"].values())
    # --keep-checkpoints keeps each run's whole checkpoint, with the optimizer state to continue
    kept = run_demo(out / "kept", seeds=1, config=DemoConfig.quick(regimes=["long"], methods=["clip"], workers=1,
                                                                     keep_checkpoints=True), progress=False)
    assert kept["runs"]["long/clip/seed0"]["checkpoint_kept"]
    assert (out / "kept/runs/long/clip/seed0/checkpoints/step_00000002/trainer_state.pt").is_file()
    with pytest.raises(FileExistsError, match="another configuration"):
        run_demo(out, seeds=1, config=DemoConfig.quick(finetune_lr=1e-5, regimes=["long"], workers=1),
                 progress=False)


@pytest.mark.slow
def test_build_base_writes_an_fp16_checkpoint_with_its_hash_and_recipe(tmp_path):
    import smartclip
    recipe = BaseRecipe(num_pretrain=32, num_pretrain_single=16, steps=2, warmup=1, batch_size=8, probe_images=32)
    record = build_base(tmp_path / "base", recipe, progress=False, log=lambda _: None)
    assert record["sha256"] == sha256_file(tmp_path / "base" / "model.safetensors")
    assert record["recipe"]["steps"] == 2 and "concept_map" in record["val_metrics"]
    from safetensors.torch import load_file
    tensors = load_file(str(tmp_path / "base" / "model.safetensors")).values()
    assert {str(t.dtype) for t in tensors if t.is_floating_point()} == {"torch.float16"}
    model = smartclip.load_checkpoint(tmp_path / "base")
    assert not model.mask_trained and model.logit_scale.dtype.is_floating_point


def test_cli_data_only_and_bad_arguments(tmp_path, capsys):
    from smartclip.cli import main
    assert main(["demo", "--out", str(tmp_path / "d"), "--quick", "--data-only"]) == 0
    assert (tmp_path / "d/data/train_long.csv").is_file() and (tmp_path / "d/data/val_long.csv").is_file()
    assert main(["demo", "--out", str(tmp_path / "d"), "--seeds", "0"]) == 2
    assert "--seeds must be >= 1" in capsys.readouterr().err


def test_decision_rule():
    from smartclip.scenes.report import verdict
    a = {"mean": 12.0, "std": 1.0, "n": 3}
    assert verdict(a, {"mean": 10.0, "std": 1.0, "n": 3}) == "better"          # 2.0 > 2 * 0.82
    assert verdict(a, {"mean": 11.0, "std": 0.5, "n": 3}) == "no clear difference"  # 1.0 is not > 1
    assert verdict({"mean": 10.0, "std": 3.0, "n": 3}, a) == "no clear difference"  # 2.0 < 2 * 1.83
    assert verdict({"mean": 5.0, "std": 0.0, "n": 3}, a) == "worse"
    assert verdict({"mean": 20.0, "std": 0.0, "n": 1}, a) == "one seed: no verdict"


def test_grid_arguments_are_checked_before_any_work(tmp_path):
    from smartclip.scenes.demo import parse_grid, run_grid
    assert parse_grid(["loss.gate_temperature=[0.7,0.1],[0.7,0.7]", "loss.dual_lr=1,10"]) == \
        {"loss.gate_temperature": ["[0.7,0.1]", "[0.7,0.7]"], "loss.dual_lr": ["1", "10"]}
    for bad, message in [(["loss.dual_lr"], "expected KEY=V1,V2"), (["loss.dual_lr=1,"], "an empty value"),
                         (["a=1", "a=2"], "given twice")]:
        with pytest.raises(ValueError, match=message):
            parse_grid(bad)
    from smartclip.train import ConfigError
    with pytest.raises(ConfigError, match="loss.sparsity_wieght: unknown key"):
        run_grid(tmp_path / "g", {"loss.sparsity_wieght": ["1"]}, seeds=1, config=DemoConfig.quick(), progress=False)
    assert not (tmp_path / "g").exists() or not any((tmp_path / "g").iterdir())


@pytest.mark.slow
def test_quick_grid_writes_a_table_and_plots_and_reuses_runs(tmp_path, capsys):
    from smartclip.scenes.demo import run_grid, summarise_grids
    out = tmp_path / "grid"
    cfg = DemoConfig.quick(workers=2)
    grid = {"loss.sparsity_target": ["0.2"], "loss.dual_lr": ["1", "50"]}
    record = run_grid(out, grid, seeds=2, config=cfg, split="val", progress=False)
    groups = list(record["summary"])
    assert groups[:2] == ["long/clip", "long/smartclip"] and len(groups) == 4
    assert record["labels"][groups[3]] == "loss.sparsity_target=0.2 loss.dual_lr=50"
    name = "grid_val_loss-sparsity_target+loss-dual_lr"
    for path in (f"{name}.json", f"{name}.md", f"plots/{name}__loss-dual_lr.png", f"plots/{name}__loss-sparsity_target.png"):
        assert (out / path).is_file(), path
    table = (out / f"{name}.md").read_text()
    assert "| loss.sparsity_target=0.2 loss.dual_lr=50 |" in table and "mask bar" in table
    # the variant really ran: its multiplier moved; the released runs have none
    from smartclip.train import read_metrics
    run_dir = out / "runs" / "grid/long/smartclip/loss.sparsity_target=0.2,loss.dual_lr=50/seed0"
    assert read_metrics(run_dir / "metrics.jsonl", "train")[-1]["sparsity_multiplier"] != 2.0
    # scored on the validation scenes, not the test scenes
    scored = json.loads((out / "evals" / "val" / "long_clip_seed0.json").read_text())
    assert "scored on the val split" in scored["protocol"] and scored["counts"]["test_images"] == cfg.num_val
    again = run_grid(out, grid, seeds=2, config=cfg, split="test", progress=False)  # same runs, test scenes
    assert again["summary"]["long/clip"] != record["summary"]["long/clip"]
    assert summarise_grids(out, "val", log=lambda _: None).is_file()
