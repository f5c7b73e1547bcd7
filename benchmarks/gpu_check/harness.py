"""The harness: a report of sections rewritten as results come, a command run in its own process
group under a time limit with its result lines handed on as they come, and the sections run one
after another inside the overall budget, each failing alone."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

from smartclip.fileio import atomic_write_json, atomic_write_text

from .rendering import render_markdown

REPO = Path(__file__).resolve().parents[2]
ROW = "GPU_CHECK_ROW "  # prefix of the result lines a worker prints
COMMAND = "python -m benchmarks.gpu_check"


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
        self.meta = {"command": " ".join([COMMAND, *argv]), "device": args.device,
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
            atomic_write_json(self.out / "gpu_check.json", data, indent=1, default=str)
            atomic_write_text(self.out / "gpu_check.md", render_markdown(data))


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


def worker_cmd(name: str, params: dict) -> List[str]:
    """The command that runs worker ``name`` (see ``workers.py``) in a fresh process."""
    return [sys.executable, "-m", "benchmarks.gpu_check", "--worker", name, "--params", json.dumps(params)]


def print_row(row: dict):
    print(ROW + json.dumps(row), flush=True)


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
