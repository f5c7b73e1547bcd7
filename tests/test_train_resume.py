"""Run directory, checkpoints, exact resume after SIGKILL, and the non-finite-loss stop."""
from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import smartclip
from smartclip.checkpoint import read_weights
from smartclip.cli import main as cli_main
from smartclip.train import (ConfigError, TrainingStopped, dump_config, list_checkpoints, load_config, read_metrics,
                             train)
from conftest import assert_same_gradients, assert_same_loss, float64_training, step_gradients
from test_train_utils import tiny_config, train_until

CONFIGS = Path(__file__).resolve().parent.parent / "configs"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from data_fixtures import make_csv_dataset
    return make_csv_dataset(tmp_path_factory.mktemp("resume_data"), 16)


@pytest.mark.slow
def test_cli_run_writes_the_documented_run_directory(tmp_path, dataset):
    run = tmp_path / "run"
    code = cli_main(["train", str(CONFIGS / "tiny.yaml"), f"data.train={dataset}", "data.num_workers=0",
                     "model.name=smartclip-micro", "train.global_batch=8", "train.steps=3", "train.log_every=1",
                     "train.progress=false", "checkpoint.every_steps=1", "checkpoint.keep_last=2", f"run_dir={run}",
                     f"eval.specs=[retrieval:{dataset}]", "eval.every_steps=2", "eval.batch_size=8"])
    assert code == 0
    # the resolved config reloads to the same values
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["steps"] == 3 and saved["model"]["name"] == "smartclip-micro"
    assert load_config(run / "config.yaml").train.global_batch == 8
    # only the last two checkpoints are kept, no temporary directory is left behind
    assert [p.name for p in list_checkpoints(run)] == ["step_00000002", "step_00000003"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_00000002", "step_00000003"]
    model, _, _ = smartclip.load(str(run / "checkpoints" / "step_00000003"))
    assert model.model_name == "smartclip-micro"
    # metrics: one record per step with the loss terms, mask statistics and throughput
    records = read_metrics(run / "metrics.jsonl", "train")
    assert [r["step"] for r in records] == [1, 2, 3]
    for key in ("loss", "sidm", "dism", "sparsity", "mask_active_mean", "mask_active_min", "mask_active_max",
                "lr_clip", "lr_mask", "samples_per_s", "steps_per_s"):
        assert all(key in r for r in records), key
    assert any((run / "tensorboard").glob("events.out.tfevents.*"))
    assert {p.name for p in (run / "plots").glob("*.png")} >= {"loss.png", "mask.png", "lr.png"}
    # periodic evaluation at step 2 and at the end, through smartclip.eval
    evals = read_metrics(run / "metrics.jsonl", "eval")
    assert [e["step"] for e in evals] == [2, 3] and all(e["results"][f"retrieval:{dataset}"] for e in evals)
    assert (run / "plots" / "eval.png").is_file()
    end = [e for e in read_metrics(run / "metrics.jsonl", "event") if e["event"] == "end"][0]
    assert end["data"]["records_read"] == 24
    # starting again in the same run_dir without resume=latest would mix two runs
    with pytest.raises(ConfigError, match="already holds checkpoints; pass resume=latest"):
        train(load_config(run / "config.yaml"))


def test_unknown_eval_benchmark_fails_before_training(tmp_path, dataset):
    cfg = tiny_config(tmp_path, dataset, "train.steps=1", "eval.specs=[cocco]")
    with pytest.raises(ConfigError, match="eval.specs: 'cocco': .*unknown benchmark 'cocco'"):
        train(cfg)
    assert not (tmp_path / "run").exists()


def test_resume_from_something_that_is_not_a_checkpoint_fails_clearly(tmp_path, dataset):
    cfg = tiny_config(tmp_path, dataset, "train.steps=1", f"resume={tmp_path}")
    with pytest.raises(ConfigError, match=r"resume=.*: not a training checkpoint \(no trainer_state.pt\); give "
                                          r"'latest', a run directory or a checkpoints/step_\* directory"):
        train(cfg)


def test_nonfinite_losses_are_skipped_then_stop_the_run_with_a_checkpoint(tmp_path, dataset):
    cfg = tiny_config(tmp_path, dataset, "train.steps=6", "train.nonfinite_limit=2", "checkpoint.every_steps=0")

    def poison(info):  # from step 2 on every forward pass is NaN
        if info.step == 1:
            with torch.no_grad():
                info.model.visual.conv1.weight.fill_(float("nan"))

    with pytest.raises(TrainingStopped, match=r"stopped at step 3: 2 non-finite losses in a row "
                                              r"\(train.nonfinite_limit=2\)") as err:
        train(cfg, on_step=poison)
    assert err.value.checkpoint == tmp_path / "run" / "checkpoints" / "step_00000003"
    events = [e for e in read_metrics(tmp_path / "run" / "metrics.jsonl", "event") if e["event"] == "nonfinite_loss"]
    assert [(e["step"], e["in_row"]) for e in events] == [(2, 1), (3, 2)]
    weights = read_weights(err.value.checkpoint)[0]
    assert torch.isfinite(weights["transformer.resblocks.0.mlp.c_fc.weight"]).all()  # no NaN update applied


_DRIVER = """
import os, signal, sys, torch
from smartclip.train import load_config, train
torch.set_num_threads(int(sys.argv[1]))

def die(info):
    if info.step == 3:
        os.kill(os.getpid(), signal.SIGKILL)

train(load_config(sys.argv[2]), on_step=die)
"""


@pytest.mark.slow
def test_sigkill_then_resume_latest_ends_identical_to_an_uninterrupted_run(tmp_path, dataset):
    # gradient caching and two captions per image: every piece of state a resume must restore
    overrides = ["train.steps=5", "checkpoint.every_steps=2", "data.captions_per_image=2", "train.micro_batch=4"]
    whole = train(tiny_config(tmp_path / "a", dataset, *overrides))

    killed = tiny_config(tmp_path / "b", dataset, *overrides)
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    dump_config(killed, tmp_path / "killed.yaml")
    proc = subprocess.run([sys.executable, str(driver), str(torch.get_num_threads()), str(tmp_path / "killed.yaml")],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    run_b = tmp_path / "b" / "run"
    assert [p.name for p in list_checkpoints(run_b)] == ["step_00000002"]
    assert max(r["step"] for r in read_metrics(run_b / "metrics.jsonl", "train")) == 3

    resumed = train(tiny_config(tmp_path / "b", dataset, *overrides, "resume=latest"))
    assert resumed.steps == 5
    # Exact equality, not a tolerance: the resumed run performs the uninterrupted run's operations
    # in the same order on the same CPU with the same thread count (the driver is given ours), so
    # every rounding is the same; any difference is lost state (optimizer, RNG, data position).
    a, b = read_weights(whole.checkpoint)[0], read_weights(resumed.checkpoint)[0]
    assert all(torch.equal(a[k], b[k]) for k in a), [k for k in a if not torch.equal(a[k], b[k])][:5]
    assert any(not torch.equal(a[k], read_weights(run_b / "checkpoints" / "step_00000002")[0][k]) for k in a)
    # the log is that of one run: steps 1..5 once each, the lost step 3 redone
    assert [r["step"] for r in read_metrics(run_b / "metrics.jsonl", "train")] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in read_metrics(run_b / "metrics.jsonl", "train")] == \
        pytest.approx([r["loss"] for r in read_metrics(whole.run_dir / "metrics.jsonl", "train")], rel=0, abs=0)


@pytest.mark.parametrize("objective,full_mask,expected", [("smartclip", False, True), ("smartclip", True, False),
                                                          ("clip", False, False)])
def test_checkpoints_say_whether_the_mask_network_was_trained(tmp_path, dataset, objective, full_mask, expected):
    """Starting from a checkpoint whose mask network was never trained (a CLIP or Long-CLIP
    start), only the SmartCLIP objective with a predicted mask marks its checkpoints trained."""
    start = smartclip.create_model("smartclip-micro")
    start.mask_trained = False
    start_dir = smartclip.save_checkpoint(start, tmp_path / "start")
    cfg = tiny_config(tmp_path, dataset, f"model.name={start_dir}", f"objective={objective}",
                      f"loss.full_mask={str(full_mask).lower()}", "train.steps=1", "eval.specs=[]",
                      *(["loss.scale=null"] if objective == "clip" else []))
    result = train(cfg)
    assert smartclip.load_checkpoint(result.checkpoint).mask_trained is expected


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_run_resumes_exactly(tmp_path, dataset, precision):
    """A whole mixed-precision run: finite losses, the fp16 loss scale logged and checkpointed,
    and a run resumed from its step-2 checkpoint ends identical to the uninterrupted one."""
    common = [f"train.precision={precision}", "eval.specs=[]", "checkpoint.every_steps=2", "checkpoint.keep_last=5"]
    full = train(tiny_config(tmp_path / "full", dataset, "train.steps=4", *common))
    records = read_metrics(Path(full.run_dir) / "metrics.jsonl", "train")
    assert len(records) == 4 and all(math.isfinite(r["loss"]) for r in records)
    assert all(("loss_scale" in r) == (precision == "fp16") for r in records)
    train_until(tiny_config(tmp_path / "part", dataset, "train.steps=4", *common), 2)
    resumed = train(tiny_config(tmp_path / "part", dataset, "train.steps=4", *common, "resume=latest"))
    assert resumed.steps == 4
    # exact: the same operations in the same order as the uninterrupted run (see the SIGKILL test)
    a, _ = read_weights(full.checkpoint)
    b, _ = read_weights(resumed.checkpoint)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_resume_refuses_settings_that_change_the_computation(tmp_path, dataset):
    first = train(tiny_config(tmp_path, dataset, "train.steps=2", "eval.specs=[]", "checkpoint.every_steps=1"))
    assert first.steps == 2
    changed = tiny_config(tmp_path, dataset, "train.steps=2", "eval.specs=[]", "resume=latest",
                          "loss.align_weight=5", "optim.mask.lr=0.01", "train.progress=false")
    with pytest.raises(ConfigError) as err:
        train(changed)
    message = str(err.value)
    assert "loss.align_weight: checkpoint 10.0, now 5.0" in message
    assert "optim.mask.lr: checkpoint 0.001, now 0.01" in message
    assert "eval" not in message and "progress" not in message  # reporting settings may change
    # the same settings resume (here: nothing left to do); an explicit opt-out continues anyway
    assert train(tiny_config(tmp_path, dataset, "train.steps=2", "eval.specs=[]", "resume=latest")).steps == 2
    changed.resume_check = False
    assert train(changed).steps == 2


def test_scale_model_is_the_starting_checkpoints_own_temperature_through_train_and_resume(tmp_path, dataset):
    """``loss.scale=model`` reads the starting checkpoint's ``logit_scale.exp()`` once; the run's
    config.yaml, every metrics record and the checkpoints carry the number, and a resume with
    either the original setting or the resolved config continues with the same value."""
    start = smartclip.create_model("smartclip-micro")
    with torch.no_grad():
        start.logit_scale.fill_(math.log(13.06))
    start_dir = smartclip.save_checkpoint(start, tmp_path / "start")
    expected = float(torch.tensor(math.log(13.06)).exp())
    common = [f"model.name={start_dir}", "loss.scale=model", "eval.specs=[]", "checkpoint.every_steps=1",
              "train.steps=3"]
    train_until(tiny_config(tmp_path, dataset, *common), 2)
    run = tmp_path / "run"
    assert yaml.safe_load((run / "config.yaml").read_text())["loss"]["scale"] == pytest.approx(expected, rel=1e-7)
    assert all(r["scale"] == pytest.approx(expected, rel=1e-7) for r in read_metrics(run / "metrics.jsonl", "train"))
    start_event = [e for e in read_metrics(run / "metrics.jsonl", "event") if e["event"] == "start"][0]
    assert (start_event["loss_scale"], start_event["loss_scale_source"]) == (pytest.approx(expected), "model")
    # a start checkpoint with another temperature would be a different computation: refused
    other_dir = smartclip.save_checkpoint(smartclip.create_model("smartclip-micro"), tmp_path / "other")
    with pytest.raises(ConfigError, match="loss.scale: checkpoint 13.0"):
        train(tiny_config(tmp_path, dataset, *common[1:], f"model.name={other_dir}", "resume=latest"))
    # the original setting resolves again from the start: the resume check passes
    result = train(tiny_config(tmp_path, dataset, *common, "resume=latest"))
    assert result.steps == 3
    resumed = [e for e in read_metrics(run / "metrics.jsonl", "event") if e["event"] == "resume"][-1]
    assert resumed["loss_scale"] == pytest.approx(expected, rel=1e-7)
    training = smartclip.checkpoint.read_config(result.checkpoint)["training"]
    assert training["loss_scale"] == pytest.approx(expected, rel=1e-7) and training["loss_scale_source"] == "model"
    # so does the run's own resolved config.yaml (the number itself)
    assert train(load_config(run / "config.yaml", ["resume=latest"])).steps == 3
    # smartclip eval says which scale the checkpoint was trained at (the last run gave it as a number)
    from smartclip.eval import markdown_table
    from smartclip.eval.runner import run_record
    model = smartclip.load_checkpoint(result.checkpoint)
    assert "fixed logit scale 13.06 (config)" in markdown_table(run_record(model, {}, "hash", "run"))


def test_channels_last_run_matches_the_default_memory_order(tmp_path, dataset):
    """``train.channels_last`` changes only the memory order of convolution weights and images:
    a ResNet-tower run has the losses and gradients of the default order at every step (float64,
    equal up to summation order: see ``assert_same_gradients``), and its checkpoint loads back as
    an ordinary model."""
    from smartclip.scenes.demo import DEMO_MODEL, demo_model_config
    torch.manual_seed(0)
    start = smartclip.build_model(demo_model_config(DEMO_MODEL, 64), {}, model_name="resnet-micro")
    start_dir = smartclip.save_checkpoint(start, tmp_path / "start")
    common = [f"model.name={start_dir}", "eval.specs=[]", "train.steps=2", "train.log_every=1"]
    runs = {}
    for name, extra in (("default", []), ("channels_last", ["train.channels_last=true"])):
        steps = []

        def record(info):
            steps.append({"loss": info.metrics["loss"], "grads": step_gradients(info.model),
                          "channels_last": info.model.visual.conv1.weight.is_contiguous(
                              memory_format=torch.channels_last)})

        with float64_training():
            result = train(tiny_config(tmp_path / name, dataset, *common, *extra), on_step=record)
        runs[name] = result, steps
    (_, default), (result, channels_last) = runs["default"], runs["channels_last"]
    assert [s["channels_last"] for s in channels_last] == [True, True]  # the option took effect
    assert [s["channels_last"] for s in default] == [False, False]
    for a, b in zip(channels_last, default, strict=True):
        assert_same_loss(a["loss"], b["loss"])
        assert_same_gradients(a["grads"], b["grads"])
    # the saved weights are ordinary contiguous tensors: a plain load gives an ordinary model
    loaded = smartclip.load_checkpoint(result.checkpoint)
    assert loaded.visual.conv1.weight.is_contiguous()
