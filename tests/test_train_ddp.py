"""Several processes (gloo on CPU) train exactly like one process with their combined batch,
and torchrun restarts a killed rank from the latest checkpoint."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from smartclip.checkpoint import read_weights
from smartclip.train import read_metrics, train
from conftest import assert_same_gradients, assert_same_loss, float64_training, step_gradients
from test_train_utils import tiny_config

pytestmark = pytest.mark.slow
STEPS = 2
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "TORCHELASTIC_RESTART_COUNT",
               "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _overrides(objective: str, run_dir, *extra, steps: int = STEPS):
    return [f"objective={objective}", f"train.steps={steps}", "checkpoint.every_steps=2", "train.log_every=1",
            f"run_dir={run_dir}", *extra]


class _Recorder:
    """``on_step``: the loss and the parameter gradients of every step (the gradients are still
    in ``.grad`` after the optimizer step: the loop zeroes them before the next one)."""

    def __init__(self):
        self.steps = []

    def __call__(self, info):
        self.steps.append({"loss": info.metrics["loss"], "grads": step_gradients(info.model)})


def _train_float64(cfg) -> list:
    record = _Recorder()
    with float64_training():
        train(cfg, on_step=record)
    return record.steps


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from data_fixtures import make_csv_dataset
    return make_csv_dataset(tmp_path_factory.mktemp("ddp_data"), 16)


@pytest.fixture(scope="module")
def single_process(tmp_path_factory, dataset):
    """Per objective: the losses and gradients of one float64 process with the whole global
    batch of 8."""
    assert not any(v in os.environ for v in LAUNCH_VARS)
    out = {}
    for objective in ("smartclip", "clip"):
        tmp = tmp_path_factory.mktemp(f"single_{objective}")
        out[objective] = _train_float64(tiny_config(tmp, dataset, *_overrides(objective, tmp / "run")))
    return out


def _worker(rank: int, world: int, port: int, csv: str, tmp: str, objective: str, extra: list, launcher: str,
            float64: bool, steps: int):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if launcher == "slurm":  # what srun sets for each task
        os.environ.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(world), SLURM_LOCALID=str(rank))
    else:  # what torchrun sets
        os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    cfg = tiny_config(Path(tmp), csv, *_overrides(objective, Path(tmp) / "run", *extra, steps=steps))
    if float64:
        torch.save(_train_float64(cfg), Path(tmp) / f"steps_rank{rank}.pt")
    else:
        train(cfg)


def _two_processes(tmp_path, dataset, objective, extra=(), launcher="torchrun", float64=True, steps=STEPS):
    mp.spawn(_worker, args=(2, _free_port(), dataset, str(tmp_path), objective, list(extra), launcher, float64,
                            steps), nprocs=2, join=True)


@pytest.mark.parametrize("objective, extra, launcher", [
    ("clip", [], "slurm"),  # SLURM task variables instead of torchrun's
    ("smartclip", ["train.micro_batch=2"], "torchrun"),  # also gradient caching under DDP (no_sync, then sync)
])
def test_two_processes_match_one_process_with_the_combined_batch(tmp_path, dataset, single_process, objective, extra,
                                                                 launcher):
    """The claim, in its own quantities: each step's loss and gradients (after DDP's averaging)
    equal those of one process with the combined batch, in float64 up to summation order."""
    _two_processes(tmp_path, dataset, objective, extra, launcher)
    final = tmp_path / "run" / "checkpoints" / f"step_{STEPS:08d}"
    assert sorted(p.name for p in final.glob("rank_*.pt")) == ["rank_0.pt", "rank_1.pt"]
    start = read_metrics(tmp_path / "run" / "metrics.jsonl", "event")[0]
    assert start["world_size"] == 2 and start["local_batch"] == 4
    ranks = [torch.load(tmp_path / f"steps_rank{r}.pt") for r in range(2)]
    one = single_process[objective]
    assert len(one) == len(ranks[0]) == len(ranks[1]) == STEPS
    # step 1 starts from the same weights: its gradients are the claim. Later steps start from
    # weights one Adam update apart (at most lr·Δg/eps ≈ 1e-4·1e-18/1e-8 in float64), whose effect
    # on the gradients is far below the tolerance, so they are compared the same way.
    for step in range(STEPS):
        for r in range(2):
            assert_same_loss(ranks[r][step]["loss"], one[step]["loss"])
            assert_same_gradients(ranks[r][step]["grads"], one[step]["grads"])
    assert one[0]["loss"] != one[1]["loss"]  # the first step changed the weights


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory, dataset):
    """Final weights of an uninterrupted two-process float32 run (launched like torchrun)."""
    tmp = tmp_path_factory.mktemp("two_process")
    _two_processes(tmp, dataset, "smartclip", float64=False, steps=4)
    return read_weights(tmp / "run" / "checkpoints" / f"step_{4:08d}")[0]


_DRIVER = """
import os, signal, sys, torch
from smartclip.train import load_config, train
torch.set_num_threads(1)

def die_once(info):  # rank 1 is killed at step 3 of the first attempt only
    if info.step == 3 and os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0":
        os.kill(os.getpid(), signal.SIGKILL)

train(load_config(None, sys.argv[1:]), on_step=die_once)
"""


def test_torchrun_restarts_a_killed_rank_from_the_latest_checkpoint(tmp_path, dataset, two_process_run):
    driver = tmp_path / "driver.py"
    driver.write_text(_DRIVER)
    cfg = tiny_config(tmp_path, dataset, *_overrides("smartclip", tmp_path / "run", steps=4))
    overrides = [f"data.train={dataset}", "data.num_workers=0", "model.name=smartclip-micro", "train.global_batch=8",
                 "train.progress=false", "train.plots=false", "train.tensorboard=false",
                 f"optim.clip.lr={cfg.optim.clip.lr}", "optim.clip.warmup_steps=0",
                 *_overrides("smartclip", tmp_path / "run", steps=4)]
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS}
    proc = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "--max-restarts", "1",
                           str(driver), *overrides], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    events = read_metrics(tmp_path / "run" / "metrics.jsonl", "event")
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["step"] == 2, events
    steps = [r["step"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl", "train")]
    assert steps == [1, 2, 3, 4]  # the lost step 3 was redone, and logged once
    # The resumed run repeats the uninterrupted run's arithmetic operation for operation (same
    # processes, threads, batches and restored optimizer state), so it ends bit for bit the same.
    final = read_weights(tmp_path / "run" / "checkpoints" / f"step_{4:08d}")[0]
    assert final.keys() == two_process_run.keys()
    assert [k for k in final if not torch.equal(final[k], two_process_run[k])] == []
