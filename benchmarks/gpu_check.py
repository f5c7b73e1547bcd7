"""One command that checks SmartCLIP on a GPU and measures what matters there, in under 8 minutes.

    python benchmarks/gpu_check.py --out runs/gpu_check                 # on a machine with a CUDA GPU
    python benchmarks/gpu_check.py --device cpu --quick --out runs/x    # tiny models (the test suite runs this)

Sections, in this order; each is timed, has its own time limit inside the overall ``--budget``,
and fails alone (a failure or a timeout is recorded and the next section runs):

    environment   versions, the GPU, which packages import
    cuda_tests    pytest tests/test_cuda.py --device cuda: the CUDA-marked tests
    device_tests  pytest -m device --device cuda: the suite's tests that take a device
    train_step    training-step throughput and peak memory: ViT-B/16 at micro-batch 256 and ViT-L/14
                  at 128, bf16, with and without gradient checkpointing, objective smartclip vs clip,
                  ShareGPT4V-like captions, a synthetic batch already in GPU memory; plus the paper's
                  global batch of 1024 on this one GPU through gradient caching
    loss          the modular loss at N = 1024, 4096, 16384 against the direct formula (where it fits)
                  and open_clip's ClipLoss: time and memory of forward + backward
    encode        images/s and texts/s (248 tokens) of the encoders retrieval and zero-shot use
    train_ddp     `smartclip train` under torchrun (one process, 20 steps, generated data), and two
                  ranks sharing the GPU over gloo, so DDP, gathering with gradients and no_sync run
                  on CUDA tensors (NCCL refuses two ranks on one GPU)
    suite         the rest of the test suite with --device cuda, in the time that is left

Random-initialised models and generated data: nothing is downloaded. Results go to ``--out``:
``gpu_check.json`` (rewritten whenever a section or a measurement finishes, so a killed run
leaves what it did), ``gpu_check.md`` (the same as tables) and ``gpu_check.log`` (the output of
every subprocess). See docs/performance.md.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

REPO = Path(__file__).resolve().parent.parent
ROW = "GPU_CHECK_ROW "  # prefix of the result lines a worker prints
REFERENCE = {"samples_per_s_per_gpu": 365, "s_per_step": 0.70, "peak_gib": 51,
             "what": "public reproduction of the released recipe: ViT-B/16, fp16, global batch 1024 = "
                     "4 x 256 on four A800-80GB, loader and DDP included"}
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


# ---------------------------------------------------------------------------- the report
@dataclass
class Section:
    name: str
    limit_s: float
    status: str = "pending"      # ok | failed | timeout | skipped
    seconds: float = 0.0
    effective_limit_s: float = 0.0
    rows: List[dict] = field(default_factory=list)
    summary: Dict[str, object] = field(default_factory=dict)
    error: str = ""
    commands: List[List[str]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("name", "status", "seconds", "limit_s", "effective_limit_s",
                                              "summary", "rows", "error", "commands")}


class Report:
    """Sections and where they are written; every ``save()`` rewrites the JSON and Markdown."""

    def __init__(self, out: Path, args, argv: List[str]):
        self.out = out
        self.meta = {"command": " ".join(["python", "benchmarks/gpu_check.py", *argv]), "device": args.device,
                     "quick": args.quick, "budget_s": args.budget,
                     "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "finished": False}
        self.sections: Dict[str, Section] = {}
        self.start = time.monotonic()
        self.lock = threading.Lock()
        out.mkdir(parents=True, exist_ok=True)
        self.log_path = out / "gpu_check.log"
        self.log_path.write_text("")

    def log(self, text: str):
        with self.lock, open(self.log_path, "a") as f:
            f.write(text)

    def save(self):
        with self.lock:
            data = {**self.meta, "elapsed_s": round(time.monotonic() - self.start, 1),
                    "sections": {n: s.to_dict() for n, s in self.sections.items()}}
            _write_atomic(self.out / "gpu_check.json", json.dumps(data, indent=1, default=str))
            _write_atomic(self.out / "gpu_check.md", render_markdown(data))


def _write_atomic(path: Path, text: str):
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


# ------------------------------------------------------------------------ running things
def child_env(device: str) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONUNBUFFERED": "1",
           "TOKENIZERS_PARALLELISM": "false", "SMARTCLIP_GPU_CHECK": "1"}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), str(REPO / "benchmarks")]
                                        + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID", "SLURM_NTASKS"):
        env.pop(var, None)  # a launcher's variables would make the children join its job
    if device == "cpu":
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def run_command(report: Report, section: Section, cmd: List[str], limit: float, env: dict,
                on_row: Optional[Callable[[dict], None]] = None) -> tuple[Optional[int], str]:
    """Run ``cmd`` in its own process group with a time limit. Its output goes to the log as it
    comes; lines starting with ROW are results, handed to ``on_row`` at once. Returns
    ``(exit code or None on timeout, output)``."""
    section.commands.append(cmd)
    report.log(f"\n===== {section.name}: {' '.join(cmd)} (limit {limit:.0f} s)\n")
    # its own process group (not session), so a timeout can kill torchrun's or pytest's children too
    group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **group)
    lines: List[str] = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            report.log(line)
            if line.startswith(ROW) and on_row is not None:
                try:
                    on_row(json.loads(line[len(ROW):]))
                except (json.JSONDecodeError, TypeError) as e:
                    report.log(f"[gpu_check] unreadable result line: {e}\n")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        code = proc.wait(timeout=max(limit, 1))
    except subprocess.TimeoutExpired:
        code = None
        _kill_group(proc)
        proc.wait()
    reader.join(timeout=10)
    return code, "".join(lines)


def _kill_group(proc):
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun's workers and pytest's children too
    except ProcessLookupError:
        pass


def _worker_cmd(name: str, params: dict) -> List[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--worker", name, "--params", json.dumps(params)]


def print_row(row: dict):
    print(ROW + json.dumps(row), flush=True)


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


def _pytest_section(selection: List[str]):
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
        section.summary = _pytest_summary(output)
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


def _pytest_summary(output: str) -> dict:
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
                code, _ = run_command(report, section, _worker_cmd(worker, params), share, child_env(args.device),
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
                                          "--nproc_per_node", "2", str(Path(__file__).resolve()), "--worker",
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
    from bench_train import SCENE
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


# ------------------------------------------------------------------------------- workers
def worker_train_step(params: dict, emit: Callable[[dict], None]):
    """Training-step throughput of one model: every configuration in this process, one model."""
    import torch
    import smartclip
    from bench_train import caption_tokens, time_step

    device = torch.device(params["device"])
    built = time.perf_counter()
    torch.manual_seed(0)
    model = smartclip.create_model(params["model"], device=device).train()
    build_s = time.perf_counter() - built
    tokenizer = smartclip.get_tokenizer(model)
    mb, steps = params["micro_batch"], params["steps"]
    paper = params["paper_batch"]
    ckpt = params["grad_ckpt_default"]
    configs = [  # the most important first: a timeout loses the last ones
        ("smartclip", False, "long", mb, mb), ("clip", False, "long", mb, mb),
        ("smartclip", True, "long", mb, mb), ("clip", True, "long", mb, mb),
        ("smartclip", ckpt, "long", paper, mb),  # the paper's global batch on this GPU, gradient caching
        ("smartclip", False, "short", mb, mb), ("clip", False, "short", mb, mb),
    ]
    half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(params["precision"])
    autocast = (lambda: torch.autocast(device.type, dtype=half)) if half else None
    for objective, checkpointing, captions, batch, micro in configs:
        row = {"model": params["model"], "objective": objective, "grad_checkpointing": checkpointing,
               "captions": captions, "batch": batch, "micro_batch": micro, "precision": params["precision"],
               "build_s": round(build_s, 1)}
        try:
            model.set_grad_checkpointing(checkpointing)
            tokens = caption_tokens(tokenizer, batch, captions).to(device)
            images = torch.randn(batch, 3, *model.image_size, device=device)
            r = time_step(model, objective, images, tokens, micro if micro < batch else None,
                          steps if batch == micro else max(1, steps // 2), autocast=autocast)
            seconds = statistics.median(r["times"])
            cuda = device.type == "cuda"  # a CPU's peak resident set is not per configuration here
            row.update(s_per_step=seconds, s_per_step_min=min(r["times"]), samples_per_s=batch / seconds,
                       text_positions=r["text_positions"], peak_step_gib=r["peak_mib"] / 1024 if cuda else None,
                       peak_gib=r["peak_total_mib"] / 1024 if cuda else None)
        except Exception as e:  # noqa: BLE001 - an out-of-memory here must not lose the other configurations
            row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
        finally:
            images = tokens = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        emit(row)


def worker_loss(params: dict, emit: Callable[[dict], None]):
    """The modular loss against the direct formula and open_clip's ClipLoss (bench_core's cases)."""
    import torch
    from bench_core import run_loss_case

    cuda = params["device"].startswith("cuda")
    if cuda:
        torch.cuda.set_device(torch.device(params["device"]).index or 0)  # bench_core uses the current device
    for d in params["dims"]:
        for n in params["sizes"]:
            for method in ("clip", "ours", "direct"):
                for tf32 in ((False, True) if cuda and method != "direct" else (False,)):
                    row = {"method": method, "N": n, "d": d, "tf32": tf32}
                    need = 6 * n * n * d * 4  # the direct formula keeps about six [N, N, d] fp32 tensors
                    free = torch.cuda.mem_get_info()[0] if cuda else None
                    if method == "direct" and cuda and need > 0.8 * free:
                        row["note"] = f"not run: needs about {need / 2 ** 30:.0f} GiB, {free / 2 ** 30:.0f} GiB free"
                        emit(row)
                        continue
                    try:
                        torch.backends.cuda.matmul.allow_tf32 = tf32
                        r = run_loss_case(method, n, d, params["repeats"], "cuda" if cuda else "cpu")
                        row.update(seconds=r["seconds"], peak_mib=r["peak_mb"] if cuda else None)
                    except Exception as e:  # noqa: BLE001 - out of memory: recorded, next case
                        row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
                    finally:
                        torch.backends.cuda.matmul.allow_tf32 = False
                        if cuda:
                            torch.cuda.empty_cache()
                    emit(row)


def worker_encode(params: dict, emit: Callable[[dict], None]):
    """Encoding throughput with no loader: images/s and texts/s at the full 248 positions."""
    import torch
    import smartclip

    device = torch.device(params["device"])
    batch, repeats = params["batch"], params["repeats"]
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else (lambda: None)

    def rate(fn, n):
        fn()
        sync()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        return n / statistics.median(times)

    dtypes = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
    for name in params["models"]:
        torch.manual_seed(0)
        model = smartclip.create_model(name, device=device).eval()  # built once, cast per precision
        eot = smartclip.get_tokenizer(model).eot_token_id
        for precision in params["precisions"]:
            row = {"model": name, "precision": precision, "batch": batch}
            try:
                model.to(dtypes[precision])
                images = torch.randn(batch, 3, *model.image_size, device=device, dtype=dtypes[precision])
                tokens = torch.randint(1, eot - 1, (batch, model.context_length), device=device)
                tokens[:, -1] = eot  # every text fills all 248 positions: nothing to trim
                with torch.no_grad():
                    row["images_per_s"] = rate(lambda: model.encode_image(images), batch)
                    row["texts_per_s"] = rate(lambda: model.encode_text(tokens), batch)
                row["text_positions"] = model.context_length
            except Exception as e:  # noqa: BLE001 - recorded; the next precision or model still runs
                row["error"] = f"{type(e).__name__}: {str(e)[:300]}"
            finally:
                images = tokens = None
                if device.type == "cuda":
                    torch.cuda.empty_cache()
            emit(row)
        model = None


def worker_gloo_train(params: dict, emit: Callable[[dict], None]):
    """One rank of `smartclip train` in a process group this worker starts on gloo (torchrun sets
    RANK, WORLD_SIZE and the rendezvous address); the training loop joins the existing group."""
    import torch.distributed as dist
    from smartclip.cli import main
    dist.init_process_group("gloo")
    try:
        code = main(["train", *params["overrides"]])
    finally:
        dist.destroy_process_group()
    sys.exit(code)


WORKERS = {"train_step": worker_train_step, "loss": worker_loss, "encode": worker_encode,
           "gloo_train": worker_gloo_train}


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


# ---------------------------------------------------------------------------- markdown
def _fmt(value, digits=2):
    if value is None:
        return ""
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def render_markdown(data: dict) -> str:
    gpu = data["sections"].get("environment", {}).get("summary", {}).get("gpu")
    lines = [f"# GPU check on {gpu or data['device']}", "",
             f"`{data['command']}`, started {data['started']}, {data['elapsed_s']} s"
             f"{'' if data['finished'] else ' (not finished)'}.", "",
             "| section | status | seconds | limit s | note |", "|---|---|---|---|---|"]
    for s in data["sections"].values():
        note = s["error"] or _section_note(s)
        lines.append(f"| {s['name']} | {s['status']} | {s['seconds']:.1f} | {s['effective_limit_s']:.0f} | "
                     f"{note.replace('|', '/')[:200]} |")
    for s in data["sections"].values():
        body = RENDER.get(s["name"], _render_pytest)(s)
        if body:
            lines += ["", f"## {s['name']}", "", *body]
    return "\n".join(lines) + "\n"


def _section_note(s: dict) -> str:
    counts = s["summary"].get("counts") if isinstance(s["summary"], dict) else None
    return ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else ""


def _render_environment(s):
    info = s["summary"]
    return [f"- {k}: {v}" for k, v in info.items()]


def _render_pytest(s):
    summary = s["summary"]
    out = [f"`{' '.join(s['commands'][0][2:])}`" if s["commands"] else "", "", summary.get("last_line", "")]
    out += [f"- {p}" for p in summary.get("problems", [])]
    return out


def _render_train_step(s):
    out = ["Synthetic batch in memory; autocast at the precision shown; median of the timed steps; peak = "
           "`torch.cuda.max_memory_allocated` (model, optimizer state, activations). Reference: "
           f"{REFERENCE['samples_per_s_per_gpu']} samples/s per GPU, {REFERENCE['s_per_step']} s/step, "
           f"{REFERENCE['peak_gib']} GiB peak ({REFERENCE['what']}).", "",
           "| model | precision | batch | micro | objective | captions (longest, tokens) | grad ckpt | s/step "
           "| samples/s | vs reference | time vs clip | peak GiB | memory vs clip |", "|" + "---|" * 13]
    clip = {(r["model"], r["grad_checkpointing"], r["captions"], r["batch"]): r for r in s["rows"]
            if r.get("objective") == "clip" and "s_per_step" in r}
    for r in s["rows"]:
        cells = [r["model"], r["precision"], r["batch"], r["micro_batch"], r["objective"]]
        if "s_per_step" not in r:
            out.append("| " + " | ".join(map(str, cells + [r["captions"], r["grad_checkpointing"],
                                                            r.get("error", "")[:120]])) + " | | | | | |")
            continue
        base = clip.get((r["model"], r["grad_checkpointing"], r["captions"], r["batch"]))
        cells += [f"{r['captions']} ({r['text_positions']})", r["grad_checkpointing"], f"{r['s_per_step']:.3f}",
                  f"{r['samples_per_s']:.0f}", f"{r['samples_per_s'] / REFERENCE['samples_per_s_per_gpu']:.2f}x",
                  _fmt(r["s_per_step"] / base["s_per_step"] if base else None), _fmt(r["peak_gib"], 1),
                  _fmt(r["peak_gib"] / base["peak_gib"] if base and r["peak_gib"] and base["peak_gib"] else None)]
        out.append("| " + " | ".join(map(str, cells)) + " |")
    return out


def _render_loss(s):
    out = ["Forward + backward of the loss alone, fp32 inputs; median time; peak = growth of "
           "`max_memory_allocated` during the step.", "",
           "| N | d | method | TF32 | ms | peak MiB | note |", "|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        ms = r["seconds"] * 1000 if r.get("seconds") is not None else None
        out.append(f"| {r['N']} | {r['d']} | {r['method']} | {r['tf32']} | {_fmt(ms, 1)} | {_fmt(r.get('peak_mib'), 0)} "
                   f"| {r.get('note') or r.get('error') or ''} |")
    return out


def _render_encode(s):
    out = ["No loader: a batch already on the device; texts fill all 248 positions.", "",
           "| model | precision | batch | images/s | texts/s | note |", "|---|---|---|---|---|---|"]
    for r in s["rows"]:
        out.append(f"| {r['model']} | {r['precision']} | {r['batch']} | {_fmt(r.get('images_per_s'), 0)} | "
                   f"{_fmt(r.get('texts_per_s'), 0)} | {r.get('error', '')} |")
    return out


def _render_ddp(s):
    out = ["| run | exit | steps | world | device | first loss | last loss | samples/s | max GiB | loss scale | "
           "checkpoints | error |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in s["rows"]:
        out.append(f"| {r['run']} | {r['exit_code']} | {r.get('steps_logged')}/{r.get('steps_asked')} | "
                   f"{r.get('world_size')} | {r.get('device')} | {_fmt(r.get('first_loss'), 3)} | "
                   f"{_fmt(r.get('last_loss'), 3)} | {_fmt(r.get('samples_per_s'), 1)} | "
                   f"{_fmt(r.get('max_memory_gib'), 1)} | {_fmt(r.get('last_loss_scale'), 0)} | "
                   f"{', '.join(r.get('checkpoints') or [])} | {str(r.get('error', ''))[:120]} |")
    return out


RENDER = {"environment": _render_environment, "train_step": _render_train_step, "loss": _render_loss,
          "encode": _render_encode, "train_ddp": _render_ddp}


# -------------------------------------------------------------------------------- main
def run_sections(report: Report, sections, args, settings, deadline: float):
    """Run each section inside what is left of the budget; record failures and go on."""
    for name, limit, fn in sections:
        section = report.sections[name]
        left = deadline - time.monotonic()
        section.effective_limit_s = round(min(limit, left), 1)
        if section.effective_limit_s < settings["min_section_s"]:
            section.status, section.error = "skipped", f"time budget spent ({left:.0f} s left)"
            report.save()
            continue
        section.status = "running"
        report.save()
        start = time.monotonic()
        try:
            fn(report, section, args, settings)
            if section.status == "running":
                section.status = "ok"
        except Exception as e:  # noqa: BLE001 - fail-soft: the next section still runs
            section.status = "failed"
            section.error = f"{type(e).__name__}: {e}"[:1000]
            report.log(f"\n[gpu_check] {name} failed: {section.error}\n")
        section.seconds = round(time.monotonic() - start, 1)
        report.save()


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--quick", action="store_true", help="tiny models and sizes (for the test suite, on a CPU)")
    p.add_argument("--out", default="runs/gpu_check", help="folder for gpu_check.json, .md and .log")
    p.add_argument("--budget", type=float, default=450, help="seconds for the whole check (default 450)")
    p.add_argument("--sections", help="comma-separated subset of: " + ", ".join(n for n, _, _ in SECTIONS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    p.add_argument("--params", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        WORKERS[args.worker](json.loads(args.params), print_row)
        return 0
    if not (args.device == "cpu" or args.device.startswith("cuda")):
        p.error(f"--device {args.device}: use cuda, cuda:N or cpu")
    if args.quick and args.device == "cpu":
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # before torch is imported; children inherit it
    settings = plan(args.quick)
    sections = [(n, lim * settings["limit_scale"], fn or _pytest_section(settings[n])) for n, lim, fn in SECTIONS]
    if args.sections:
        wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
        unknown = sorted(set(wanted) - {n for n, _, _ in sections})
        if unknown:
            p.error(f"--sections: unknown {unknown}; choose from {[n for n, _, _ in sections]}")
        sections = [s for s in sections if s[0] in wanted]
    report = Report(Path(args.out), args, argv)
    for name, limit, _ in sections:
        report.sections[name] = Section(name, limit)
    report.save()
    try:
        run_sections(report, sections, args, settings, time.monotonic() + args.budget)
    finally:
        report.meta["finished"] = True
        report.save()
    failed = [s.name for s in report.sections.values() if s.status not in ("ok", "skipped")]
    print(f"gpu_check: {len(report.sections) - len(failed)} of {len(report.sections)} sections ok or skipped"
          + (f"; not ok: {', '.join(failed)}" if failed else "") + f". Results: {report.out / 'gpu_check.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
