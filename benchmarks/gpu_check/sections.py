"""The sections: what each one runs and checks, and the sizes it uses (``plan``)."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable, List, Optional

from .harness import REPO, Report, Section, child_env, run_command, worker_cmd
from .workers import WORKERS

PACKAGES = ("torch", "torchvision", "open_clip", "ftfy", "regex", "safetensors", "yaml", "numpy", "PIL", "tqdm",
            "timm", "huggingface_hub", "braceexpand", "webdataset", "faiss", "skimage", "sklearn", "matplotlib",
            "tensorboard", "transformers", "pytest", "xdist", "pytest_timeout")


# ------------------------------------------------------------------------------ settings
def plan(quick: bool) -> dict:
    """What each section measures: real sizes on a GPU, tiny ones with ``--quick``."""
    if quick:
        return {
            "train_step": [{"model": "smartclip-micro", "micro_batch": 8, "paper_batch": 16, "steps": 1,
                            "grad_ckpt_default": False, "precision": "fp32"}],
            "loss": {"sizes": [64, 128], "dims": [32], "repeats": 1},
            "encode": {"models": ["smartclip-micro"], "batch": 8, "repeats": 1, "precisions": ["fp32"]},
            "ddp": {"model": "smartclip-micro", "images": 16, "image_size": 40, "batch": 8, "micro_batch": 4,
                    "steps": 3, "workers": 0, "precision": "fp32", "gloo_model": "smartclip-micro", "gloo_batch": 8},
            "cuda_tests": ["tests/test_cuda.py"],
            "device_tests": ["tests/test_model.py", "-m", "device", "-k", "trimmed"],
            "suite": ["tests", "-m", "not device and not cuda", "--collect-only"],
            "min_section_s": 5,
            # a small shared CPU starts each Python process (open_clip's imports) slowly: more room
            "limit_scale": 3,
        }
    return {
        # the paper's per-GPU micro-batches and global batch; ViT-L/14's recipe uses gradient checkpointing
        "train_step": [{"model": "ViT-B-16", "micro_batch": 256, "paper_batch": 1024, "steps": 4,
                        "grad_ckpt_default": False, "precision": "bf16"},
                       {"model": "ViT-L-14", "micro_batch": 128, "paper_batch": 1024, "steps": 4,
                        "grad_ckpt_default": True, "precision": "bf16"}],
        "loss": {"sizes": [1024, 4096, 16384], "dims": [512, 768], "repeats": 5},
        "encode": {"models": ["ViT-B-16", "ViT-L-14"], "batch": 256, "repeats": 5, "precisions": ["fp16", "fp32"]},
        "ddp": {"model": "ViT-B-16", "images": 1024, "image_size": 224, "batch": 256, "micro_batch": None,
                "steps": 20, "workers": 8, "precision": None, "gloo_model": "smartclip-small", "gloo_batch": 64},
        "cuda_tests": ["tests/test_cuda.py"],
        "device_tests": ["tests", "-m", "device and not cuda"],
        "suite": ["tests", "-m", "not device and not cuda"],
        "min_section_s": 20,
        "limit_scale": 1,
    }


# ------------------------------------------------------------------------------ sections
def section_environment(report: Report, section: Section, args, settings):
    import torch
    info = {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "torch_cuda": torch.version.cuda, "cuda_available": torch.cuda.is_available(),
            "cpu_count": os.cpu_count(), "git_commit": _git_commit()}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2 ** 30, 1),
                    gpu_count=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    cudnn=torch.backends.cudnn.version())
        try:
            import torch.cuda.nccl
            info["nccl"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # noqa: BLE001 - reported, not needed by the other sections
            info["nccl"] = f"unknown ({type(e).__name__})"
    missing = [p for p in PACKAGES if importlib.util.find_spec(p) is None]
    versions = {}
    for name in ("open_clip", "torchvision", "numpy", "pytest"):
        if name not in missing:
            try:
                versions[name] = __import__(name).__version__
            except Exception as e:  # noqa: BLE001 - a broken install is what this section reports
                versions[name] = f"import failed: {type(e).__name__}: {e}"
    info["versions"] = versions
    info["missing_packages"] = missing
    section.summary = info
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError("--device cuda but torch.cuda.is_available() is False")
    if "open_clip" in missing:
        raise RuntimeError("open_clip is not importable: install open_clip_torch (see docs/performance.md)")


def _git_commit() -> Optional[str]:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              timeout=10).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def pytest_section(selection: List[str]):
    def run(report: Report, section: Section, args, settings):
        # default verbosity: each file's line of results reaches the log, so a run stopped at its
        # time limit still shows where tests failed
        cmd = [sys.executable, "-m", "pytest", *selection, "--device", args.device, "-rfE", "-p",
               "no:cacheprovider", "--continue-on-collection-errors", "--ignore", "tests/test_gpu_check.py"]
        if "--collect-only" not in selection:
            if importlib.util.find_spec("xdist") is not None and section.name == "suite":
                cmd += ["-n", str(max(2, min(8, (os.cpu_count() or 2) // 2))), "--dist", "loadfile"]
            if importlib.util.find_spec("pytest_timeout") is not None:
                cmd += ["--timeout", "120"]
        code, output = run_command(report, section, cmd, section.effective_limit_s, child_env(args.device))
        section.summary = pytest_summary(output)
        section.summary["exit_code"] = code
        section.status, section.error = pytest_verdict(code, section.summary)
        if code is None:
            section.error = "; ".join(filter(None, [f"stopped after {section.effective_limit_s:.0f} s",
                                                    section.error]))
    return run


def pytest_verdict(code: Optional[int], summary: dict) -> tuple[str, str]:
    """``(status, note)`` of a pytest run: failed when a test failed or errored; a test file that
    cannot be imported here (a package this machine lacks) is named, not counted as a failure."""
    uncollected = [p[len("ERROR "):] for p in summary["problems"] if p.startswith("ERROR ") and "::" not in p]
    note = f"{len(uncollected)} test file(s) not collected: {'; '.join(uncollected)}"[:400] if uncollected else ""
    if code is None:
        return "timeout", note
    if summary["counts"].get("failed") or len(summary["problems"]) > len(uncollected):
        return "failed", summary["last_line"]
    if code not in (0, 5) and not uncollected:  # 5: nothing selected
        return "failed", f"pytest exit code {code}: {summary['last_line'] or 'see gpu_check.log'}"
    return "ok", note


def pytest_summary(output: str) -> dict:
    counts = {}
    tail = output.strip().splitlines()[-1] if output.strip() else ""
    for number, word in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected|xfailed|xpassed|warnings?|"
                                   r"tests? collected)", tail):
        counts[word.rstrip("s") if word.startswith("error") else word] = int(number)
    problems = [line.strip() for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    return {"counts": counts, "last_line": tail, "problems": problems[:50]}


def _worker_section(worker: str, jobs: Callable[[dict], List[dict]]):
    """A section run by worker subprocesses (one per job, each with a share of the time limit).
    With ``--quick`` the workers run in this process: on a small CPU, starting a Python process
    that imports open_clip costs more than a quick job's work."""
    def run(report: Report, section: Section, args, settings):
        params_list = jobs(settings)
        failures = []
        started = time.monotonic()

        def on_row(row):
            with report.lock:
                section.rows.append(row)
            report.save()

        for i, params in enumerate(params_list):
            remaining = section.effective_limit_s - (time.monotonic() - started)
            share = remaining / (len(params_list) - i)  # what an early job leaves unused goes to the later ones
            params = {**params, "device": args.device}
            if args.quick:
                code = 0
                WORKERS[worker](params, on_row)
            else:
                code, _ = run_command(report, section, worker_cmd(worker, params), share, child_env(args.device),
                                      on_row)
            if code is None:
                failures.append(f"{params.get('model', worker)}: stopped after {share:.0f} s")
            elif code != 0:
                failures.append(f"{params.get('model', worker)}: exit code {code} (see gpu_check.log)")
        errors = [r for r in section.rows if r.get("error")]
        if failures:
            section.status = "timeout" if all("stopped" in f for f in failures) else "failed"
            section.error = "; ".join(failures)
        elif errors:
            section.status = "failed"
            section.error = f"{len(errors)} of {len(section.rows)} measurements failed"
    return run


def section_train_ddp(report: Report, section: Section, args, settings):
    """``smartclip train`` on generated data: one process under torchrun, then two ranks on gloo."""
    p = settings["ddp"]
    work = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    env = child_env(args.device)
    started = time.monotonic()
    try:
        csv = make_dataset(work / "data", p["images"], p["image_size"])
        recipe = "configs/sharegpt4v_l14.yaml" if "L-14" in p["model"] else "configs/sharegpt4v_b16.yaml"
        common = [f"data.train={csv}", "model.pretrained=null", "train.epochs=null", f"train.steps={p['steps']}",
                  f"train.global_batch={p['batch']}", f"data.num_workers={p['workers']}", "train.log_every=1",
                  "train.progress=false", "train.plots=false", "train.tensorboard=false",
                  f"train.device={'cuda' if args.device.startswith('cuda') else 'cpu'}", "checkpoint.keep_last=1",
                  f"checkpoint.every_steps={max(1, p['steps'] // 2)}"]
        runs = {
            # the recipe's own config (fp16, loss scaling) at the paper's micro-batch, as users launch it
            "torchrun, 1 process": ([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                     "--nproc_per_node", "1", "--module", "smartclip", "train", recipe, *common,
                                     f"model.name={p['model']}", f"run_dir={work / 'run_1'}"]
                                    + ([f"train.precision={p['precision']}"] if p["precision"] else [])
                                    + ([f"train.micro_batch={p['micro_batch']}"] if p["micro_batch"] else [])),
            # two ranks on the one GPU: DDP, features gathered with gradients, no_sync with gradient caching
            "torchrun, 2 ranks on gloo": [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                          "--nproc_per_node", "2", "--module", "benchmarks.gpu_check", "--worker",
                                          "gloo_train", "--params", json.dumps({"overrides": [
                                              *common, f"model.name={p['gloo_model']}",
                                              f"train.global_batch={p['gloo_batch']}",
                                              f"train.micro_batch={p['gloo_batch'] // 4}",
                                              "train.precision=" + ("bf16" if args.device.startswith("cuda")
                                                                    else "fp32"),
                                              f"run_dir={work / 'run_2'}"]})],
        }
        failures = []
        for (name, cmd), share in zip(runs.items(), (0.6, 1.0)):  # of the time left: the first run is larger
            remaining = section.effective_limit_s - (time.monotonic() - started)
            code, output = run_command(report, section, cmd, remaining * share, env)
            run_dir = work / ("run_1" if name.endswith("1 process") else "run_2")
            row = {"run": name, "exit_code": code, **_run_summary(run_dir, p["steps"])}
            if code != 0:
                row["error"] = "timeout" if code is None else (output.strip().splitlines() or ["no output"])[-1][-300:]
                failures.append(f"{name}: {row['error']}")
            section.rows.append(row)
            report.save()
        if failures:
            raise RuntimeError("; ".join(failures))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _run_summary(run_dir: Path, steps: int) -> dict:
    path = run_dir / "metrics.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []
    train = [r for r in records if r.get("kind") == "train"]
    start = next((r for r in records if r.get("event") == "start"), {})
    out = {"steps_logged": len(train), "steps_asked": steps, "world_size": start.get("world_size"),
           "device": start.get("device"), "checkpoints": sorted(p.name for p in (run_dir / "checkpoints").glob("*"))}
    if train:
        later = train[len(train) // 4:] or train  # after the loader and kernels warm up
        out.update(first_loss=train[0].get("loss"), last_loss=train[-1].get("loss"),
                   samples_per_s=statistics.median(r["samples_per_s"] for r in later if "samples_per_s" in r),
                   max_memory_gib=train[-1].get("max_memory_gib"), last_loss_scale=train[-1].get("loss_scale"),
                   nonfinite_skipped=train[-1].get("nonfinite_skipped"))
    return out


def make_dataset(folder: Path, n: int, size: int) -> Path:
    """``n`` generated JPEGs (smooth colour fields with a few shapes) and a CSV of long,
    several-sentence captions: ShareGPT4V-like pairs without a download."""
    import numpy as np
    from PIL import Image, ImageDraw
    from benchmarks.bench_train import SCENE
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    sentences = [s.strip() + "." for s in SCENE.split(". ") if s.strip()]
    rows = ["filepath,title"]
    yy, xx = np.mgrid[0:size, 0:size] / size
    for i in range(n):
        a, b, c = rng.random(3)
        pixels = np.stack([(a * xx + (1 - a) * yy), (b * yy), (c * (1 - xx))], -1) * 255
        image = Image.fromarray(pixels.astype(np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x0, y0 = rng.integers(0, size // 2, 2)
            draw.ellipse([x0, y0, x0 + size // 4, y0 + size // 4], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
        name = f"img{i:05d}.jpg"
        image.save(folder / name, quality=90)
        k = int(rng.integers(3, len(sentences) + 1))
        caption = " ".join(sentences[(i + j) % len(sentences)] for j in range(k)).rstrip(".").replace('"', "'")
        rows.append(f'{folder / name},"Image {i}. {caption}."')
    csv = folder / "pairs.csv"
    csv.write_text("\n".join(rows) + "\n")
    return csv


SECTIONS = [  # name, nominal time limit (s) on a GPU, function
    ("environment", 30, section_environment),
    ("cuda_tests", 90, None),
    ("device_tests", 75, None),
    ("train_step", 190, _worker_section("train_step", lambda s: s["train_step"])),
    ("loss", 50, _worker_section("loss", lambda s: [s["loss"]])),
    ("encode", 50, _worker_section("encode", lambda s: [s["encode"]])),
    ("train_ddp", 150, section_train_ddp),
    ("suite", 400, None),  # whatever the budget has left
]
