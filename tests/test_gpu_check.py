"""benchmarks/gpu_check (python -m benchmarks.gpu_check): the quick run on a CPU, and that one failing or slow section loses nothing else."""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# gpu_check runs the test suite; the suite must not run gpu_check again from inside it
pytestmark = pytest.mark.skipif("SMARTCLIP_GPU_CHECK" in os.environ, reason="inside a gpu_check run")


@pytest.fixture()
def gpu_check(monkeypatch):
    """The package, imported the way `python -m benchmarks.gpu_check` does from the repository root."""
    monkeypatch.syspath_prepend(str(REPO))
    return importlib.import_module("benchmarks.gpu_check")


@pytest.mark.slow
def test_quick_run_on_the_cpu_fills_every_section(tmp_path):
    out = tmp_path / "check"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.gpu_check", "--device", "cpu", "--quick", "--out",
                           str(out), "--budget", "900"], cwd=REPO, capture_output=True, text=True, timeout=1000)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert report["finished"] and list(sections) == ["environment", "cuda_tests", "device_tests", "train_step",
                                                     "loss", "encode", "train_ddp", "suite"]
    assert {s["status"] for s in sections.values()} == {"ok"}, {n: s["error"] for n, s in sections.items()}
    assert sections["environment"]["summary"]["torch"]
    # without a GPU the CUDA-marked tests are collected and skipped; the device tests pass on the CPU
    assert sections["cuda_tests"]["summary"]["counts"].get("skipped", 0) >= 10
    assert "failed" not in sections["cuda_tests"]["summary"]["counts"]
    assert sections["device_tests"]["summary"]["counts"].get("passed", 0) >= 1
    assert sections["suite"]["summary"]["counts"].get("tests collected", 0) > 100

    steps = sections["train_step"]["rows"]
    assert {(r["objective"], r["captions"], r["grad_checkpointing"]) for r in steps} >= {
        ("smartclip", "long", False), ("clip", "long", False), ("smartclip", "long", True), ("clip", "short", False)}
    assert all(r["samples_per_s"] > 0 and not r.get("error") for r in steps)
    assert any(r["batch"] > r["micro_batch"] for r in steps)  # the paper's batch through gradient caching
    longest = {r["captions"]: r["text_positions"] for r in steps}  # what CLIP's trimmed text tower runs
    assert longest["short"] == 63 and 100 <= longest["long"] <= 240

    loss = sections["loss"]["rows"]
    assert {r["method"] for r in loss} == {"clip", "ours", "direct"} and all(r["seconds"] > 0 for r in loss)
    assert all(r["images_per_s"] > 0 and r["texts_per_s"] > 0 for r in sections["encode"]["rows"])
    runs = sections["train_ddp"]["rows"]
    assert [(r["world_size"], r["steps_logged"], r["exit_code"]) for r in runs] == [(1, 3, 0), (2, 3, 0)]

    markdown = (out / "gpu_check.md").read_text()
    for name in ("train_step", "loss", "encode", "train_ddp", "cuda_tests"):
        assert f"## {name}" in markdown
    assert "===== train_ddp" in (out / "gpu_check.log").read_text()


def test_a_failing_or_slow_section_loses_nothing_else(tmp_path, gpu_check):
    args = argparse.Namespace(device="cpu", quick=True, budget=60.0)
    report = gpu_check.Report(tmp_path, args, ["--device", "cpu"])

    def broken(report, section, args, settings):
        raise RuntimeError("out of memory, say")

    def slow(report, section, args, settings):  # one result, then hangs past its limit
        code = f"print({gpu_check.ROW!r} + '{{\"n\": 1}}', flush=True); import time; time.sleep(60)"
        code, _ = gpu_check.run_command(report, section, [sys.executable, "-c", code], section.effective_limit_s,
                                        gpu_check.child_env("cpu"), on_row=section.rows.append)
        assert code is None
        section.status = "timeout"

    def fine(report, section, args, settings):
        section.rows.append({"n": 2})

    sections = [("broken", 10, broken), ("slow", 2, slow), ("fine", 10, fine), ("late", 10, fine)]
    for name, limit, _ in sections:
        report.sections[name] = gpu_check.Section(name, limit)
    start = time.monotonic()
    gpu_check.run_sections(report, sections[:3], args, {"min_section_s": 1}, deadline=start + 60)
    gpu_check.run_sections(report, sections[3:], args, {"min_section_s": 1}, deadline=time.monotonic())
    assert time.monotonic() - start < 30  # the hung child was killed at its limit

    saved = json.loads((tmp_path / "gpu_check.json").read_text())["sections"]
    assert saved["broken"]["status"] == "failed" and "out of memory, say" in saved["broken"]["error"]
    assert saved["slow"]["status"] == "timeout" and saved["slow"]["rows"] == [{"n": 1}]
    assert saved["fine"]["status"] == "ok" and saved["fine"]["rows"] == [{"n": 2}]
    assert saved["late"]["status"] == "skipped" and "budget" in saved["late"]["error"]
    markdown = (tmp_path / "gpu_check.md").read_text()
    assert "| broken | failed |" in markdown and "| slow | timeout |" in markdown


def test_pytest_verdict_tells_failures_from_test_files_this_machine_cannot_import(gpu_check):
    missing = ("ERROR tests/test_search.py - ModuleNotFoundError: No module named 'faiss'\n"
               "==== 40 passed, 1 error in 9.1s ====\n")
    assert gpu_check.pytest_verdict(1, gpu_check.pytest_summary("....\n" + missing)) == (
        "ok", "1 test file(s) not collected: tests/test_search.py - ModuleNotFoundError: No module named 'faiss'")
    failed = "FAILED tests/test_cuda.py::test_bf16_step_on_cuda[4-clip] - AssertionError\n==== 1 failed, 9 passed ===="
    status, note = gpu_check.pytest_verdict(1, gpu_check.pytest_summary(failed))
    assert status == "failed" and "1 failed" in note
    errored = "ERROR tests/test_cuda.py::test_x - RuntimeError: CUDA error\n==== 1 error in 2s ===="
    assert gpu_check.pytest_verdict(1, gpu_check.pytest_summary(errored))[0] == "failed"
    assert gpu_check.pytest_verdict(0, gpu_check.pytest_summary("==== 19 skipped in 5s ====")) == ("ok", "")
    assert gpu_check.pytest_verdict(None, gpu_check.pytest_summary("...."))[0] == "timeout"
