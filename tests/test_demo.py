"""The demo end to end (shortened), its run plan, the shipped base, reuse of finished runs, the CLI."""
import json

import pytest

from smartclip.scenes.demo import (BASE_DIR, BASE_SHA256, METHODS, BaseRecipe, DemoConfig, build_base, file_sha256,
                                   plan_runs, run_demo, shipped_base)


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
    from smartclip.scenes.demo import _train_config
    from smartclip.train import config_to_dict
    cfg = DemoConfig()
    runs = {r.method: r for r in plan_runs(cfg, 1) if r.regime == "long"}
    dicts = {m: config_to_dict(_train_config(cfg, r, tmp_path, tmp_path, tmp_path / "base", tmp_path / "init"))
             for m, r in runs.items()}
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


def test_shipped_base_is_small_and_its_hash_is_checked(tmp_path, monkeypatch):
    weights = BASE_DIR / "model.safetensors"
    assert weights.stat().st_size < 10 * 1000 * 1000
    assert file_sha256(weights) == BASE_SHA256 and shipped_base() == BASE_DIR
    record = json.loads((BASE_DIR / "base.json").read_text())
    assert record["sha256"] == BASE_SHA256 and record["command"].startswith("smartclip demo --build-base")
    monkeypatch.setattr("smartclip.scenes.demo.BASE_SHA256", "0" * 64)
    with pytest.raises(ValueError, match="modified or damaged"):
        shipped_base()


@pytest.mark.slow
def test_quick_demo_writes_every_output_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    config = DemoConfig.quick(scratch=True, regimes=["long"], workers=2)
    record = run_demo(out, seeds=2, config=config, progress=False)
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
    assert "| metric |" in report and "plots/mask_curves.png" in report
    printed = capsys.readouterr().out
    assert "one-concept prompt mAP" in printed and "long captions, SmartCLIP vs CLIP:" in printed
    # a second call reuses every finished run and evaluation: same numbers
    again = run_demo(out, seeds=2, config=config, progress=False)
    assert again["summary"] == record["summary"] and all(r["reused"] for r in again["runs"].values())
    with pytest.raises(FileExistsError, match="another configuration"):
        run_demo(out, seeds=1, config=DemoConfig.quick(finetune_lr=1e-5, regimes=["long"], workers=1),
                 progress=False)


@pytest.mark.slow
def test_build_base_writes_an_fp16_checkpoint_with_its_hash_and_recipe(tmp_path):
    import smartclip
    recipe = BaseRecipe(num_pretrain=32, num_pretrain_single=16, steps=2, warmup=1, batch_size=8, probe_images=32)
    record = build_base(tmp_path / "base", recipe, progress=False, log=lambda _: None)
    assert record["sha256"] == file_sha256(tmp_path / "base" / "model.safetensors")
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
