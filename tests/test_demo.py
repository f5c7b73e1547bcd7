"""The demo end to end (shortened), its run plan, reuse of finished runs, and the CLI."""
import json

import pytest

from smartclip.demo import DemoConfig, plan_runs, run_demo


def test_plan_has_shared_pretraining_and_identical_finetunes():
    cfg = DemoConfig(scratch=True)
    runs = plan_runs(cfg, seeds=3)
    assert [r.name for r in runs if r.stage == "pretrain"] == ["pretrain"]
    finetunes = [r for r in runs if r.stage == "finetune"]
    assert len(finetunes) == 2 * 3 * 3
    assert {r.steps for r in finetunes} == {cfg.finetune_steps} and {r.init for r in finetunes} == {"pretrain"}
    scratch = [r for r in runs if r.stage == "scratch"]
    assert {r.steps for r in scratch} == {cfg.pretrain_steps + cfg.finetune_steps}
    assert [r.mask_trained for r in runs if r.seed == 0 and r.stage == "finetune"] == [False, True, False] * 2


def test_bad_demo_configs_fail_with_the_field_name():
    with pytest.raises(ValueError, match="regimes"):
        DemoConfig(regimes=["medium"]).validate()
    with pytest.raises(ValueError, match="methods"):
        DemoConfig(methods=["siglip"]).validate()
    with pytest.raises(ValueError, match="finetune_steps"):
        DemoConfig(finetune_steps=0).validate()


@pytest.mark.slow
def test_quick_demo_writes_every_output_and_reuses_finished_runs(tmp_path, capsys):
    out = tmp_path / "demo"
    # the long regime only (the short one differs by its CSV, and pretraining reads that CSV)
    config = DemoConfig.quick(scratch=True, regimes=["long"])
    record = run_demo(out, seeds=2, config=config, progress=False)
    for name in ("results.json", "report.md", "plots/training_curves.png", "plots/mask_density.png",
                 "plots/mask_usage.png", "plots/retrieval_examples.png", "data/labels.json", "init/model.safetensors"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    groups = ["random init", "pretrain"] + [f"long/{m}" for m in ("clip", "smartclip", "smartclip_fullmask")]
    groups += ["scratch-long/clip", "scratch-long/smartclip"]
    assert list(saved["summary"]) == groups
    smart, clip = saved["summary"]["long/smartclip"], saved["summary"]["long/clip"]
    assert smart["long_t2i@1"]["n"] == 2 and len(smart["long_t2i@1"]["values"]) == 2
    assert "mask_algebra" in smart and "mask_algebra" not in clip  # CLIP never trains the mask
    assert {c["verdict"] for c in saved["comparisons"]} <= {"better", "worse", "no clear difference"}
    assert saved["comparisons"]  # two seeds: every comparison gets a verdict
    report = (out / "report.md").read_text()
    assert "| metric |" in report and "plots/mask_density.png" in report
    assert "one-concept prompt mAP" in capsys.readouterr().out  # the summary table is printed
    # fine-tunes start from the pretraining checkpoint, not from scratch
    cfg = json.loads((out / "runs/long/smartclip/seed0/done.json").read_text())["config"]
    assert cfg["model"]["name"] == saved["runs"]["pretrain"]["checkpoint"]
    # a second call reuses every finished run and evaluation: same numbers
    again = run_demo(out, seeds=2, config=config, progress=False)
    assert again["summary"] == record["summary"]
    with pytest.raises(FileExistsError, match="another configuration"):
        run_demo(out, seeds=1, config=DemoConfig.quick(finetune_lr=1e-5, regimes=["long"]), progress=False)


def test_cli_data_only_and_bad_arguments(tmp_path, capsys):
    from smartclip.cli import main
    assert main(["demo", "--out", str(tmp_path / "d"), "--quick", "--data-only"]) == 0
    assert (tmp_path / "d/data/train_long.csv").is_file()
    with pytest.raises(SystemExit, match="--seeds must be >= 1"):
        main(["demo", "--out", str(tmp_path / "d"), "--seeds", "0"])


def test_decision_rule():
    from smartclip.scenes.report import verdict
    a = {"mean": 12.0, "std": 1.0, "n": 3}
    assert verdict(a, {"mean": 10.0, "std": 1.0, "n": 3}) == "better"          # 2.0 > 2 * 0.82
    assert verdict(a, {"mean": 11.0, "std": 0.5, "n": 3}) == "no clear difference"  # 1.0 is not > 1
    assert verdict({"mean": 10.0, "std": 3.0, "n": 3}, a) == "no clear difference"  # 2.0 < 2 * 1.83
    assert verdict({"mean": 5.0, "std": 0.0, "n": 3}, a) == "worse"
    assert verdict({"mean": 20.0, "std": 0.0, "n": 1}, a) == "one seed: no verdict"
