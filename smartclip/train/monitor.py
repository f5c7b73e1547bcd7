"""What a run reports: progress, ``metrics.jsonl``, TensorBoard and plots of the curves.

Progress is a bar on a terminal; written to a file or a pipe (a cluster log, ``> log``) it
is a plain log line every tenth of the run or minute instead, not a carriage-return
update per step. Only the main process writes. Every line of ``metrics.jsonl`` is one JSON
object with a ``kind``: ``train`` (per logged step), ``eval`` (periodic evaluation) or
``event`` (start, resume, skipped non-finite step, stop).
"""
from __future__ import annotations

import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional

__all__ = ["RunMonitor", "read_metrics", "plot_metrics"]

log = logging.getLogger("smartclip.train")

# progress-bar fields, in order, and their short names
_BAR_FIELDS = [("loss", "loss"), ("sidm", "sidm"), ("dism", "dism"), ("sparsity", "sparse"),
               ("contrastive", "nce"), ("mask_active_mean", "m_mean"), ("mask_active_min", "m_min"),
               ("mask_active_max", "m_max"), ("samples_per_s", "img/s")]


def read_metrics(path, kind: Optional[str] = None) -> List[dict]:
    """Records of a ``metrics.jsonl`` file, optionally only those of one ``kind``."""
    out = []
    path = Path(path)
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if kind is None or rec.get("kind") == kind:
                out.append(rec)
    return out


class RunMonitor:
    """Progress + metrics file + TensorBoard for the main process; no-ops elsewhere.

    ``start_step`` > 0 (a resumed run) drops records after it from ``metrics.jsonl``: they
    came from steps that are being redone. ``progress``: a bar when stderr is a terminal,
    otherwise a log line each ``line_fraction`` of the run and at least every
    ``line_seconds`` (and at the last step).
    """

    def __init__(self, run_dir: Path, *, total_steps: int, start_step: int = 0, enabled: bool = True,
                 progress: bool = True, tensorboard: bool = True, line_fraction: float = 0.1,
                 line_seconds: float = 60.0):
        self.enabled, self.total_steps = enabled, total_steps
        self.path = Path(run_dir) / "metrics.jsonl"
        self.bar = self.writer = None
        self._file = None
        self.lines = False  # progress as log lines (not a terminal)
        self._line_every = max(1, math.ceil(total_steps * line_fraction))
        self._line_seconds = line_seconds
        self._start_time = self._last_line = time.monotonic()
        self._start_step = self._previous_step = start_step
        self._tick, self._tick_step = time.perf_counter(), start_step  # throughput since the last record
        if not enabled:
            return
        self._truncate_after(start_step)
        self._file = open(self.path, "a", buffering=1)
        if progress and _is_terminal(sys.stderr):
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True)
        else:
            self.lines = progress
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:  # tensorboard is optional
                log.info("tensorboard is not installed; metrics go to %s only", self.path)
            else:
                self.writer = SummaryWriter(str(Path(run_dir) / "tensorboard"), purge_step=start_step or None)

    def _truncate_after(self, step: int):
        if not self.path.exists():
            return
        keep = [r for r in read_metrics(self.path) if r.get("step", 0) <= step] if step else []
        self.path.write_text("".join(json.dumps(r) + "\n" for r in keep))

    def write(self, record: dict):
        if not self.enabled:
            return
        record = {"time": round(time.time(), 3), **record}
        self._file.write(json.dumps(record) + "\n")

    def record_step(self, step: int, values: Dict[str, float], *, batch: int,
                    after: Optional[Dict[str, float]] = None) -> Dict[str, float]:
        """Log the training ``values`` of ``step`` with the throughput since the previous record
        (``steps_per_s``, ``samples_per_s`` at ``batch`` samples a step), then ``after``; returns
        the record (on every process; only the main one writes it)."""
        now = time.perf_counter()
        elapsed = max(now - self._tick, 1e-9)
        steps = step - self._tick_step
        record = {**values, "steps_per_s": steps / elapsed, "samples_per_s": steps * batch / elapsed, **(after or {})}
        self.train_step(step, record, advance=steps)
        self._tick, self._tick_step = now, step
        return record

    def train_step(self, step: int, values: Dict[str, float], advance: int = 1):
        if not self.enabled:
            return
        self.write({"kind": "train", "step": step, **values})
        if self.writer is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.writer.add_scalar(f"train/{k}", v, step)
        shown = {short: f"{values[k]:.4g}" for k, short in _BAR_FIELDS if k in values}
        if self.bar is not None:
            self.bar.set_postfix(shown, refresh=False)
            self.bar.update(advance)
        elif self.lines:
            self._progress_line(step, shown)

    def _progress_line(self, step: int, shown: Dict[str, str]):
        now = time.monotonic()
        crossed = step // self._line_every > self._previous_step // self._line_every  # passed a tenth of the run
        self._previous_step = step
        if not (crossed or step >= self.total_steps or now - self._last_line >= self._line_seconds):
            return
        self._last_line = now
        elapsed = now - self._start_time
        done = step - self._start_step
        left = elapsed / done * (self.total_steps - step) if done > 0 else float("nan")
        fields = " ".join(f"{k}={v}" for k, v in shown.items())
        log.info("step %d/%d (%d%%) %s; %s elapsed, %s left", step, self.total_steps,
                 100 * step // max(1, self.total_steps), fields, _clock(elapsed), _clock(left))

    def advance(self, n: int = 1):
        if self.bar is not None:
            self.bar.update(n)

    def eval_results(self, step: int, results: Dict[str, dict]):
        if not self.enabled:
            return
        metrics = {spec: dict(r.get("metrics", {})) for spec, r in results.items()}
        self.write({"kind": "eval", "step": step, "results": metrics})
        if self.writer is not None:
            for spec, values in metrics.items():
                for k, v in values.items():
                    if isinstance(v, (int, float)):
                        self.writer.add_scalar(f"eval/{spec}/{k}", v, step)
        summary = ", ".join(f"{spec}: " + " ".join(f"{k}={v:.4g}" for k, v in vals.items()
                                                  if isinstance(v, (int, float)))
                            for spec, vals in metrics.items())
        self.message(f"step {step} eval (percent): {summary}")  # every metric smartclip.eval reports is a percentage

    def event(self, step: int, name: str, **details):
        if not self.enabled:
            return
        self.write({"kind": "event", "step": step, "event": name, **details})

    def message(self, text: str):
        """One line for the user: above the bar on a terminal, else a log record (not both:
        the CLI's log handler writes to the same terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text)
        else:
            log.info(text)

    def close(self):
        if self.bar is not None:
            self.bar.close()
        if self.writer is not None:
            self.writer.close()
        if self._file is not None:
            self._file.close()


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced or closed streams
        return False


def _clock(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{secs:02d}" if minutes >= 60 else f"{minutes}:{secs:02d}"


def plot_metrics(run_dir) -> List[Path]:
    """PNG plots of ``metrics.jsonl`` in ``run_dir/plots``: loss terms, mask statistics,
    learning rates, throughput and evaluation metrics. Needs matplotlib."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    records = read_metrics(run_dir / "metrics.jsonl", "train")
    evals = read_metrics(run_dir / "metrics.jsonl", "eval")
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    panels = [
        ("loss", "loss terms", ["loss", "sidm", "dism", "sparsity", "i2t", "t2i", "contrastive"]),
        ("mask", "active mask dimensions per caption", ["mask_active_mean", "mask_active_min", "mask_active_max"]),
        ("lr", "learning rate", ["lr_clip", "lr_mask"]),
        ("throughput", "samples / s", ["samples_per_s"]),
    ]
    written = []
    for name, title, keys in panels:
        present = [k for k in keys if any(k in r for r in records)]
        if not present:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        for k in present:
            pts = [(r["step"], r[k]) for r in records if k in r and r[k] is not None and math.isfinite(r[k])]
            if pts:
                ax.plot(*zip(*pts), label=k)
        ax.set_xlabel("step")
        ax.set_title(title)
        if name == "lr":
            ax.set_yscale("log")
        ax.legend()
        fig.tight_layout()
        path = out_dir / f"{name}.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        written.append(path)
    if evals:
        series: Dict[str, list] = {}
        for r in evals:
            for spec, values in r["results"].items():
                for k, v in values.items():
                    if isinstance(v, (int, float)):
                        series.setdefault(f"{spec}/{k}", []).append((r["step"], v))
        if series:
            fig, ax = plt.subplots(figsize=(6, 4))
            for label, pts in sorted(series.items()):
                ax.plot(*zip(*pts), marker="o", label=label)
            ax.set_xlabel("step")
            ax.set_title("evaluation")
            ax.legend(fontsize="small")
            fig.tight_layout()
            path = out_dir / "eval.png"
            fig.savefig(path, dpi=100)
            plt.close(fig)
            written.append(path)
    return written
