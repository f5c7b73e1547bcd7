"""The demo's report: comparisons with a fixed decision rule, the summary table, and plots
(training curves, mask density over training, per-concept mask usage, retrieval examples)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np

__all__ = ["compare", "summary_table", "write_report", "verdict", "COLUMN_LABELS"]

# metrics where a larger value is better for the claim; mask metrics are judged separately
CLAIM_METRICS = ["long_i2t@1", "long_t2i@1", "short_i2t@1", "short_t2i@1", "concept_map", "single_acc", "probe_map"]


def verdict(a: dict, b: dict, min_points: float = 1.0) -> str:
    """The decision rule fixed in docs/demo.md: A beats B on a metric when the mean difference
    exceeds both ``min_points`` and twice its standard error over seeds; otherwise no difference.
    With one seed there is no standard error, so no verdict."""
    if a["n"] < 2 or b["n"] < 2:
        return "one seed: no verdict"
    diff = a["mean"] - b["mean"]
    se = math.sqrt((a["std"] ** 2) / a["n"] + (b["std"] ** 2) / b["n"])
    if abs(diff) > max(min_points, 2 * se):
        return "better" if diff > 0 else "worse"
    return "no clear difference"


def compare(summary: Dict[str, Dict[str, dict]], cfg) -> List[dict]:
    """SmartCLIP vs CLIP and SmartCLIP vs the all-ones control, per regime and metric, plus the
    mask-identification gaps of every SmartCLIP group."""
    rows = []
    prefixes = [f"{r}/" for r in cfg.regimes] + (["scratch-long/"] if cfg.scratch else [])
    for prefix in prefixes:
        smart = summary.get(prefix + "smartclip")
        if smart is None:
            continue
        for other in ("clip", "smartclip_fullmask"):
            base = summary.get(prefix + other)
            if base is None:
                continue
            for metric in CLAIM_METRICS:
                if metric in smart and metric in base:
                    rows.append({"regime": prefix.rstrip("/"), "a": "smartclip", "b": other, "metric": metric,
                                 "a_mean": smart[metric]["mean"], "b_mean": base[metric]["mean"],
                                 "difference": smart[metric]["mean"] - base[metric]["mean"],
                                 "verdict": verdict(smart[metric], base[metric])})
        for high, low in (("mask_jaccard_same", "mask_jaccard_diff"), ("mask_algebra", "mask_algebra_control")):
            if high in smart and low in smart:
                rows.append({"regime": prefix.rstrip("/"), "a": high, "b": low, "metric": "mask gap",
                             "a_mean": smart[high]["mean"], "b_mean": smart[low]["mean"],
                             "difference": smart[high]["mean"] - smart[low]["mean"],
                             "verdict": verdict(smart[high], smart[low])})
    return rows


def _column_label(group: str) -> str:
    if group in ("random init", "pretrain"):
        return group
    regime, method = group.split("/")
    return f"{regime}: " + {"clip": "CLIP", "smartclip": "SmartCLIP", "smartclip_fullmask": "mask=1"}[method]


COLUMN_LABELS = _column_label


def _cell(stat: dict) -> str:
    if stat is None:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    return f"{stat['mean']:.1f}"


def summary_table(record: dict) -> str:
    """Markdown table: one row per metric, one column per run group (mean ± std over seeds)."""
    from smartclip.demo import HEADLINE_METRICS
    groups = list(record["summary"])
    header = "| metric | claim | " + " | ".join(_column_label(g) for g in groups) + " |"
    lines = [header, "|" + "---|" * (len(groups) + 2)]
    for key, label, claim in HEADLINE_METRICS:
        cells = [_cell(record["summary"][g].get(key)) for g in groups]
        if all(c == "–" for c in cells):
            continue
        lines.append(f"| {label} (`{key}`) | {claim} | " + " | ".join(cells) + " |")
    seeds = record["seeds"]
    lines.append("")
    lines.append(f"Percent; mean ± sample std over {seeds} fine-tuning seeds" if seeds > 1 else
                 "Percent; one seed (run with --seeds 3 for mean ± std)")
    return "\n".join(lines)


def _verdict_lines(record: dict) -> List[str]:
    out = []
    names = {"clip": "CLIP", "smartclip_fullmask": "the mask=1 control"}
    for row in record["comparisons"]:
        if row["metric"] == "mask gap":
            out.append(f"- {row['regime']}: SmartCLIP `{row['a']}` {row['a_mean']:.1f} vs `{row['b']}` "
                       f"{row['b_mean']:.1f} (gap {row['difference']:+.1f}): "
                       + {"better": "larger, by the rule", "worse": "smaller, by the rule",
                          "no clear difference": "no clear difference",
                          "one seed: no verdict": "one seed: no verdict"}[row["verdict"]])
        else:
            word = {"better": "**SmartCLIP better**", "worse": "**SmartCLIP worse**",
                    "no clear difference": "no clear difference",
                    "one seed: no verdict": "one seed: no verdict"}[row["verdict"]]
            out.append(f"- {row['regime']}, `{row['metric']}`: SmartCLIP {row['a_mean']:.1f} vs "
                       f"{names[row['b']]} {row['b_mean']:.1f} ({row['difference']:+.1f}): {word}")
    return out


# --------------------------------------------------------------------------- plots
def _curves(run_dir: Path):
    from smartclip.train import read_metrics
    recs = read_metrics(Path(run_dir) / "metrics.jsonl", kind="train")
    steps = np.array([r["step"] for r in recs])

    def series(rec):
        if "sidm" in rec:
            return (rec["sidm"] + rec["dism"]) / 2
        return rec.get("contrastive", rec.get("loss"))

    return steps, np.array([series(r) for r in recs]), np.array([r.get("mask_active_frac", np.nan) for r in recs])


def _plot_training(out: Path, runs, plots: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = []
    for r in runs:
        key = "pretrain" if r.stage == "pretrain" else ("scratch-long" if r.stage == "scratch" else r.regime)
        if key not in stages:
            stages.append(key)
    colours = {"clip": "tab:blue", "smartclip": "tab:red", "smartclip_fullmask": "tab:green"}
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        seen = set()
        for r in runs:
            key = "pretrain" if r.stage == "pretrain" else ("scratch-long" if r.stage == "scratch" else r.regime)
            if key != stage:
                continue
            steps, loss, _ = _curves(out / "runs" / r.name)
            label = r.method if r.method not in seen else None
            seen.add(r.method)
            ax.plot(steps, loss, color=colours[r.method], alpha=0.8, lw=1, label=label)
        ax.set_title(stage if stage == "pretrain" else f"fine-tune: {stage} captions" if stage != "scratch-long"
                     else "from scratch: long captions")
        ax.set_xlabel("step")
        ax.set_ylabel("contrastive cross-entropy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "training_curves.png", dpi=110)
    plt.close(fig)


def _plot_mask_density(out: Path, runs, plots: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    colours = {"short": "tab:orange", "long": "tab:purple"}
    seen = set()
    for r in runs:
        if not r.mask_trained:
            continue
        steps, _, frac = _curves(out / "runs" / r.name)
        key = f"{'scratch, ' if r.stage == 'scratch' else ''}{r.regime} captions"
        ax.plot(steps, 100 * frac, color=colours[r.regime], ls="--" if r.stage == "scratch" else "-",
                lw=1, alpha=0.85, label=key if key not in seen else None)
        seen.add(key)
    ax.set_xlabel("step")
    ax.set_ylabel("active mask dimensions (%)")
    ax.set_ylim(0, 100)
    ax.set_title("SmartCLIP mask density during training")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "mask_density.png", dpi=110)
    plt.close(fig)


def _plot_mask_usage(runs, checkpoints: Dict[str, str], plots: Path) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import smartclip
    from .evaluate import concept_mask_usage
    from .generator import CONCEPTS
    chosen = [r for r in runs if r.mask_trained and r.seed == 0]
    if not chosen:
        return []
    fig, axes = plt.subplots(len(chosen), 1, figsize=(9, 2.6 * len(chosen)), squeeze=False)
    names = [c.name for c in CONCEPTS]
    for ax, r in zip(axes[:, 0], chosen):
        model, _, tokenizer = smartclip.load(checkpoints[r.name])
        usage = concept_mask_usage(model, tokenizer, names)
        ax.imshow(usage, aspect="auto", cmap="Greys", vmin=0, vmax=1, interpolation="nearest")
        ax.set_yticks(range(len(names)), names, fontsize=6)
        ax.set_title(f"{r.group}: mask of the prompt 'a <concept>' (black = selected dimension)", fontsize=8)
        ax.set_xlabel("embedding dimension", fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "mask_usage.png", dpi=110)
    plt.close(fig)
    return [r.group for r in chosen]


def _plot_retrieval(runs, checkpoints: Dict[str, str], data_dir: Path, plots: Path, queries: int = 4, top: int = 3):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import textwrap
    from PIL import Image
    import smartclip
    from smartclip.eval.encode import encode_images, encode_texts
    from .generator import load_labels
    regime = "long" if any(r.regime == "long" and r.stage == "finetune" for r in runs) else "short"
    chosen = [r for r in runs if r.stage == "finetune" and r.regime == regime and r.seed == 0
              and r.method in ("clip", "smartclip")]
    if not chosen:
        return None
    test = load_labels(data_dir)["splits"]["test"]
    paths = [str(data_dir / t["filepath"]) for t in test]
    captions = [t["long_caption"] for t in test[:queries]]
    fig, axes = plt.subplots(queries, len(chosen) * top, figsize=(1.5 * top * len(chosen), 1.9 * queries),
                             squeeze=False)
    for c, r in enumerate(chosen):
        model, preprocess, tokenizer = smartclip.load(checkpoints[r.name])
        img = encode_images(model, preprocess, paths, batch_size=128)
        txt = encode_texts(model, tokenizer, captions)
        sims = (txt / txt.norm(dim=-1, keepdim=True)) @ (img / img.norm(dim=-1, keepdim=True)).T
        for q in range(queries):
            for k, idx in enumerate(sims[q].topk(top).indices.tolist()):
                ax = axes[q, c * top + k]
                with Image.open(paths[idx]) as im:
                    ax.imshow(np.asarray(im.convert("RGB")))
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_color("tab:green" if idx == q else "tab:red")
                    spine.set_linewidth(3)
                if q == 0 and k == 0:
                    ax.set_title(f"{'SmartCLIP' if r.method == 'smartclip' else 'CLIP'} top {top}", fontsize=8,
                                 loc="left")
            if c == 0:
                axes[q, 0].set_ylabel("\n".join(textwrap.wrap(captions[q], 28))[:160], fontsize=5,
                                      rotation=0, ha="right", va="center")
    fig.suptitle(f"text->image retrieval with {regime} test captions (green = the described scene)", fontsize=9)
    fig.tight_layout()
    fig.savefig(plots / "retrieval_examples.png", dpi=110)
    plt.close(fig)
    return regime


# --------------------------------------------------------------------------- report
def write_report(out: Path, record: dict, runs, data_dir: Path, checkpoints: Dict[str, str],
                 log: Callable[[str], None] = print) -> Path:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    _plot_training(out, runs, plots)
    _plot_mask_density(out, runs, plots)
    usage_groups = _plot_mask_usage(runs, checkpoints, plots)
    regime = _plot_retrieval(runs, checkpoints, data_dir, plots)
    cfg = record["config"]
    lines = [
        "# SmartCLIP vs CLIP on the embedded scene benchmark",
        "",
        f"Command: `{record['command']}` (wall time {record['wall_time_s']:.0f} s). "
        "Design, hyperparameters and the decision rule are fixed in docs/demo.md.",
        "",
        f"Data: {cfg['num_train']} training scenes, {record['counts']['test_images']} test scenes whose "
        f"concept pairs never occur together in training, {record['counts']['single_images']} one-object scenes, "
        f"{record['counts']['concepts']} concepts. Pretraining {cfg['pretrain_steps']} steps (CLIP objective, "
        f"short captions); each fine-tune {cfg['finetune_steps']} steps at batch {cfg['batch_size']}.",
        "",
        "## Results",
        "",
        summary_table(record),
        "",
        "Columns: `random init` and `pretrain` are the starting points; `short:` / `long:` are the fine-tuning "
        "caption regimes; `mask=1` is SmartCLIP's loss with the mask forced to all ones"
        + ("; `scratch-long:` trained from random weights." if cfg["scratch"] else "."),
        "Mask metrics are shown only where the mask network was trained.",
        "",
        "## Verdicts (rule fixed in advance: a difference counts when it exceeds 1 point and twice its "
        "standard error over seeds; one seed gives no verdict)",
        "",
        *_verdict_lines(record),
        "",
        "## Plots",
        "",
        "![training curves](plots/training_curves.png)",
        "",
        "![mask density](plots/mask_density.png)",
        "",
    ]
    if usage_groups:
        lines += [f"Per-concept mask usage ({', '.join(usage_groups)}, seed 0):", "",
                  "![mask usage](plots/mask_usage.png)", ""]
    if regime:
        lines += [f"Retrieval examples ({regime} captions, seed 0):", "",
                  "![retrieval examples](plots/retrieval_examples.png)", ""]
    lines += ["## Protocol", "", record["protocol"], "", "Counts: " + json.dumps(record["counts"]), ""]
    path = out / "report.md"
    path.write_text("\n".join(lines))
    return path
