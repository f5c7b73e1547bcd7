"""Result files: one JSON per run, a Markdown table over benchmarks, side-by-side comparison."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

from ..fileio import atomic_write_json, atomic_write_text

__all__ = ["write_results", "read_results", "markdown_table", "compare_table", "RESULTS_FORMAT"]

RESULTS_FORMAT = "smartclip-eval-v1"


def write_results(run: dict, out_dir, stem: str) -> Dict[str, Path]:
    """Write ``<stem>.json`` (everything) and ``<stem>.md`` (the table) atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    atomic_write_json(paths["json"], run, default=str)
    atomic_write_text(paths["markdown"], markdown_table(run) + "\n")
    return paths


def read_results(path) -> dict:
    path = Path(path)
    try:
        run = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"results file not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not a JSON results file ({exc})") from None
    if not isinstance(run, dict) or run.get("format") != RESULTS_FORMAT or "results" not in run:
        raise ValueError(f"{path}: not a smartclip eval results file (expected format {RESULTS_FORMAT!r} "
                         f"with a 'results' object)")
    return run


def _metric_names(results: Sequence[dict]) -> List[str]:
    names: List[str] = []
    for r in results:
        for k in r.get("metrics", {}):
            if k not in names:
                names.append(k)
    return names


def _fmt(value) -> str:
    return f"{value:.2f}" if isinstance(value, (int, float)) else ("" if value is None else str(value))


def _paper_table(run: dict, results: Dict[str, dict]) -> List[str]:
    """The zero-shot results that the paper reports (Table 3) beside its numbers."""
    rows = {k: r for k, r in results.items() if r.get("paper")}
    if not rows:
        return []
    first = next(iter(rows.values()))["paper"]
    models = [k for k in first if k not in ("source", "metric")]
    versions = sorted({r["zeroshot"]["clip_benchmark_version"] for r in rows.values() if "zeroshot" in r})
    lines = ["## Zero-shot classification beside the paper", "",
             f"Paper: {first['source']}. Ours: `{run.get('model')}` (context {run.get('context_length')}); "
             f"datasets, class names and templates from CLIP_benchmark {', '.join(versions) or '?'}; "
             f"metric top-1 % (mAP % for multi-label sets).", "",
             "| dataset | metric | ours | " + " | ".join(f"{m} (paper)" for m in models)
             + " | class names | templates | partial |",
             "|---" * (6 + len(models)) + "|"]
    for key, r in rows.items():
        paper, counts = r["paper"], r.get("counts", {})
        ours = r.get("metrics", {}).get(paper["metric"])
        partial = "not run (no data)" if not r.get("metrics") else \
            f"PARTIAL ({len(r.get('missing', []))} missing)" if r.get("partial") else "no"
        lines.append(f"| {key} | {paper['metric']} | {_fmt(ours)} | " + " | ".join(_fmt(paper[m]) for m in models)
                     + f" | {counts.get('classes', '')} | {counts.get('templates', '')} | {partial} |")
    return lines + [""]


def markdown_table(run: dict) -> str:
    """One row per benchmark (metrics, item counts, partial flag), the zero-shot results the
    paper reports beside its numbers, then each protocol."""
    results = run["results"]
    lines = [f"# Evaluation of `{run.get('model')}` (weights {run.get('checkpoint_hash')}, "
             f"context {run.get('context_length')})", ""]
    training = run.get("training") or {}
    if training.get("loss_scale") is not None or training.get("loss_scale_source") == "learned":
        scale = ("learned temperature" if training.get("loss_scale_source") == "learned" else
                 f"fixed logit scale {training['loss_scale']:.4g} ({training.get('loss_scale_source', 'config')})")
        lines += [f"Trained with `objective={training.get('objective')}` at {scale}, step {training.get('step')}.", ""]
    lines += ["Every metric in percent.", ""]
    retrieval = {k: r for k, r in results.items() if any(m.startswith(("i2t", "t2i")) for m in r.get("metrics", {}))}
    other = {k: r for k, r in results.items() if k not in retrieval}
    for group in (retrieval, other):
        if not group:
            continue
        names = _metric_names(list(group.values()))
        lines.append("| benchmark | " + " | ".join(names) + " | items | partial |")
        lines.append("|---" * (len(names) + 3) + "|")
        for key, r in group.items():
            counts = r.get("counts", {})
            items = f"{counts.get('images', '?')} img" + (f" / {counts['texts']} txt" if "texts" in counts else "")
            partial = f"PARTIAL ({len(r.get('missing', []))} missing)" if r.get("partial") else "no"
            lines.append(f"| {key} | " + " | ".join(_fmt(r['metrics'].get(n)) for n in names)
                         + f" | {items} | {partial} |")
        lines.append("")
    lines.extend(_paper_table(run, results))
    lines.append("Protocols:")
    lines.append("")
    for key, r in results.items():
        lines.append(f"- **{key}**: {r.get('protocol', '')}")
    return "\n".join(lines)


def compare_table(runs: Sequence[dict], labels: Sequence[str]) -> str:
    """Benchmarks x metrics, one column per run, plus the difference of each run to the
    first. A benchmark whose protocol differs between runs is flagged."""
    if len(runs) < 2:
        raise ValueError("compare needs at least two results files")
    header = "| benchmark | metric | " + " | ".join(labels) + " | " + " | ".join(
        f"{lab} - {labels[0]}" for lab in labels[1:]) + " |"
    lines = [header, "|---" * (2 + len(labels) + len(labels) - 1) + "|"]
    keys: List[str] = []
    for run in runs:
        keys.extend(k for k in run["results"] if k not in keys)
    notes = []
    for key in keys:
        present = [run["results"].get(key) for run in runs]
        protocols = {r["protocol"] for r in present if r}
        flag = " (protocols differ)" if len(protocols) > 1 else ""
        if flag:
            notes.append(f"- {key}: the runs used different protocols: " + " / ".join(sorted(protocols)))
        for r in present:
            if r and r.get("partial"):
                flag += " (partial)"
                break
        for metric in _metric_names([r for r in present if r]):
            values = [r["metrics"].get(metric) if r else None for r in present]
            diffs = [(v - values[0]) if v is not None and values[0] is not None else None for v in values[1:]]
            lines.append(f"| {key}{flag} | {metric} | " + " | ".join(_fmt(v) for v in values) + " | "
                         + " | ".join(("" if d is None else f"{d:+.2f}") for d in diffs) + " |")
    lines += ["", "Metrics in percent; differences in percentage points."]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)
