"""The demo's report: comparisons with a fixed decision rule, the summary table, the console
summary, and plots (training curves, mask metrics over fine-tuning, per-concept mask usage,
retrieval examples). It reads results; it never runs the demo (``demo`` imports this module,
not the other way round)."""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Dict, List, Sequence

import numpy as np

__all__ = ["compare", "summary_table", "console_summary", "write_report", "plotted_runs", "verdict",
           "HEADLINE_METRICS", "CLAIM_METRICS", "column_label", "grid_table", "write_grid_report", "meets_mask_bar",
           "MASK_BAR"]

# (metric key, label, claim it tests; see CLAIMS)
HEADLINE_METRICS = [
    ("long_i2t@1", "long caption image->text R@1", "1, 2"),
    ("long_t2i@1", "long caption text->image R@1", "1, 2"),
    ("short_i2t@1", "short caption image->text R@1", "1"),
    ("short_t2i@1", "short caption text->image R@1", "1"),
    ("concept_map", "one-concept prompt mAP", "2"),
    ("single_acc", "one-object scene top-1", "2"),
    ("probe_map", "linear probe mAP", "1"),
    ("mask_jaccard_same", "mask Jaccard, same concept", "3"),
    ("mask_jaccard_diff", "mask Jaccard, different concepts", "3"),
    ("mask_algebra", "mask(A) & mask(B) vs shared concept", "3"),
    ("mask_algebra_control", "... vs a concept neither names", "3"),
    ("mask_active", "active mask dimensions (%)", "3"),
]
# the paper's three claims, as the demo tests them (docs/demo.md)
CLAIMS = {
    "1": "short partial captions: CLIP drops what the captions of an image do not share",
    "2": "long captions: CLIP entangles concepts, so a prompt naming one concept works worse",
    "3": "the masks identify concepts",
}

# metrics where a larger value is better for the claim; mask metrics are judged separately
CLAIM_METRICS = ["long_i2t@1", "long_t2i@1", "short_i2t@1", "short_t2i@1", "concept_map", "single_acc", "probe_map"]
# SmartCLIP is compared with each of these in every regime
BASELINES = ("clip", "smartclip_fullmask", "smartclip_scale100")
METHOD_LABELS = {"clip": "CLIP", "smartclip": "SmartCLIP", "smartclip_fullmask": "mask=1",
                 "smartclip_scale100": "SmartCLIP, scale 100"}


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


def compare(summary: Dict[str, Dict[str, dict]], regimes: Sequence[str]) -> List[dict]:
    """SmartCLIP against CLIP and against each control, per regime and metric, plus the
    mask-identification gaps of every SmartCLIP group (SmartCLIP at the base's temperature and
    at scale 100)."""
    rows = []
    for regime in regimes:
        prefix = f"{regime}/"
        smart = summary.get(prefix + "smartclip")
        if smart is not None:
            for other in BASELINES:
                base = summary.get(prefix + other)
                if base is None:
                    continue
                for metric in CLAIM_METRICS:
                    if metric in smart and metric in base:
                        rows.append({"regime": regime, "a": "smartclip", "b": other, "metric": metric,
                                     "a_mean": smart[metric]["mean"], "b_mean": base[metric]["mean"],
                                     "difference": smart[metric]["mean"] - base[metric]["mean"],
                                     "verdict": verdict(smart[metric], base[metric])})
        for method in ("smartclip", "smartclip_scale100"):
            group = summary.get(prefix + method)
            if group is None:
                continue
            for high, low in (("mask_jaccard_same", "mask_jaccard_diff"), ("mask_algebra", "mask_algebra_control")):
                if high in group and low in group:
                    rows.append({"regime": regime, "method": method, "a": high, "b": low, "metric": "mask gap",
                                 "a_mean": group[high]["mean"], "b_mean": group[low]["mean"],
                                 "difference": group[high]["mean"] - group[low]["mean"],
                                 "verdict": verdict(group[high], group[low])})
    return rows


def column_label(group: str) -> str:
    if "/" not in group:
        return group
    regime, method = group.split("/")
    return f"{regime}: {METHOD_LABELS[method]}"


def _cell(stat: dict) -> str:
    if stat is None:
        return "–"
    if stat["n"] > 1:
        return f"{stat['mean']:.1f} ± {stat['std']:.1f}"
    return f"{stat['mean']:.1f}"


def summary_table(record: dict) -> str:
    """Markdown table: one row per metric, one column per run group (mean ± std over seeds)."""
    groups = list(record["summary"])
    header = "| metric | claim | " + " | ".join(column_label(g) for g in groups) + " |"
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


_WORDS = {"better": "**SmartCLIP better**", "worse": "**SmartCLIP worse**",
          "no clear difference": "no clear difference", "one seed: no verdict": "one seed: no verdict"}
_GAP_WORDS = {"better": "larger, by the rule", "worse": "smaller, by the rule",
              "no clear difference": "no clear difference", "one seed: no verdict": "one seed: no verdict"}


def _verdict_lines(record: dict) -> List[str]:
    out = []
    for row in record["comparisons"]:
        if row["metric"] == "mask gap":
            out.append(f"- {row['regime']}, {METHOD_LABELS[row['method']]}: `{row['a']}` {row['a_mean']:.1f} vs "
                       f"`{row['b']}` {row['b_mean']:.1f} (gap {row['difference']:+.1f}): "
                       + _GAP_WORDS[row["verdict"]])
        else:
            out.append(f"- {row['regime']}, `{row['metric']}`: SmartCLIP {row['a_mean']:.1f} vs "
                       f"{METHOD_LABELS[row['b']]} {row['b_mean']:.1f} ({row['difference']:+.1f}): "
                       + _WORDS[row["verdict"]])
    return out


def console_summary(record: dict) -> List[str]:
    """A few lines: what was compared, and the verdicts against CLIP by regime."""
    cfg, base = record["config"], record["base"]
    scale = f"{base['logit_scale']:.1f}" if cfg["scale"] == "model" else str(cfg["scale"])
    lines = [f"[demo] compared from one base model (its own logit scale {scale}), {record['seeds']} seed(s) each: "
             f"CLIP (learned temperature) vs SmartCLIP (modular loss at scale {scale}); controls: mask = 1, "
             f"SmartCLIP at scale {cfg['ablation_scale']:g}"]
    rows = record["comparisons"]
    for regime in dict.fromkeys(r["regime"] for r in rows):
        vs_clip = [r for r in rows if r["regime"] == regime and r.get("b") == "clip"]
        if not vs_clip:
            continue
        if all(r["verdict"] == "one seed: no verdict" for r in vs_clip):
            lines.append(f"[demo] {regime} captions: one seed, no verdicts (run --seeds 3)")
            continue
        parts = []
        for word in ("better", "worse"):
            hits = [f"{r['metric']} ({r['difference']:+.1f})" for r in vs_clip if r["verdict"] == word]
            if hits:
                parts.append(f"{word} on {', '.join(hits)}")
        same = sum(r["verdict"] == "no clear difference" for r in vs_clip)
        if same:
            parts.append(f"no clear difference on {same} metric{'s' if same > 1 else ''}")
        lines.append(f"[demo] {regime} captions, SmartCLIP vs CLIP: " + "; ".join(parts))
        gaps = [r for r in rows if r["regime"] == regime and r["metric"] == "mask gap" and r["method"] == "smartclip"]
        if gaps:
            lines.append(f"[demo] {regime} captions, SmartCLIP masks: " + "; ".join(
                f"{r['a'].replace('mask_', '')} - {r['b'].replace('mask_', '')} {r['difference']:+.1f} "
                f"({_GAP_WORDS[r['verdict']]})" for r in gaps))
    return lines


# --------------------------------------------------------------------------- plots
def _loss_curve(run_dir: Path):
    """Steps and the contrastive cross-entropy of a run (mean of SIDM and DISM for the modular
    loss, InfoNCE for CLIP)."""
    from smartclip.train import read_metrics
    recs = read_metrics(Path(run_dir) / "metrics.jsonl", kind="train")
    loss = [(r["sidm"] + r["dism"]) / 2 if "sidm" in r else r.get("contrastive", r.get("loss")) for r in recs]
    return np.array([r["step"] for r in recs]), np.array(loss)


_COLOURS = {"clip": "tab:blue", "smartclip": "tab:red", "smartclip_fullmask": "tab:green",
            "smartclip_scale100": "tab:orange"}


def _stage_key(run) -> str:
    return "scratch-long" if run.stage == "scratch" else run.regime


def _plot_training(out: Path, runs, plots: Path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    stages = list(dict.fromkeys(_stage_key(r) for r in runs))
    fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
    for ax, stage in zip(axes[0], stages):
        seen = set()
        for r in runs:
            if _stage_key(r) != stage:
                continue
            steps, loss = _loss_curve(out / "runs" / r.name)
            ax.plot(steps, loss, color=_COLOURS[r.method], alpha=0.8, lw=1,
                    label=METHOD_LABELS[r.method] if r.method not in seen else None)
            seen.add(r.method)
        ax.set_title(f"fine-tune: {stage} captions" if stage != "scratch-long" else "from scratch: long captions")
        ax.set_xlabel("step")
        ax.set_ylabel("contrastive cross-entropy")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plots / "training_curves.png", dpi=110)
    plt.close(fig)


def _plot_mask_curves(record: dict, plots: Path) -> bool:
    """Active mask fraction and the two mask-specificity gaps over fine-tuning steps, per
    SmartCLIP group (mean over seeds, band = min..max)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    by_group: Dict[str, List[List[dict]]] = {}
    for name, run in record["runs"].items():
        if run["curve"]:
            by_group.setdefault(name.rsplit("/seed", 1)[0], []).append(run["curve"])
    if not by_group:
        return False
    panels = [("mask_active", "active mask dimensions (%)"),
              ("jaccard_gap", "Jaccard same - different concept"),
              ("algebra_gap", "algebra: shared - control concept")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    styles = {"short": "-", "long": "--", "scratch-long": ":"}
    colours = {"smartclip": "tab:red", "smartclip_scale100": "tab:orange"}
    for group, curves in by_group.items():
        regime, method = group.split("/")
        steps = [p["step"] for p in curves[0]]
        for ax, (key, label) in zip(axes, panels):
            values = np.array([[p[key] for p in c[:len(steps)]] for c in curves if len(c) >= len(steps)])
            ax.plot(steps, values.mean(0), styles.get(regime, "-"), color=colours.get(method, "tab:grey"), lw=1.3,
                    label=column_label(group))
            ax.fill_between(steps, values.min(0), values.max(0), color=colours.get(method, "tab:grey"), alpha=0.12)
            ax.set_xlabel("fine-tuning step")
            ax.set_title(label, fontsize=9)
    axes[0].set_ylim(0, 100)
    for ax in axes[1:]:
        ax.axhline(0, color="black", lw=0.6)
    axes[0].legend(fontsize=7)
    fig.suptitle("SmartCLIP masks during fine-tuning (test-scene captions; mean over seeds, band = range)",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(plots / "mask_curves.png", dpi=110)
    plt.close(fig)
    return True


def _mask_usage_runs(runs) -> list:
    return [r for r in runs if r.mask_trained and r.seed == 0 and r.method == "smartclip"]


def _retrieval_runs(runs) -> tuple:
    """``(regime, runs)`` of the retrieval examples: CLIP's and SmartCLIP's seed-0 fine-tunes."""
    regime = "long" if any(r.regime == "long" and r.stage == "finetune" for r in runs) else "short"
    return regime, [r for r in runs if r.stage == "finetune" and r.regime == regime and r.seed == 0
                    and r.method in ("clip", "smartclip")]


def plotted_runs(runs) -> set:
    """Names of the runs whose checkpoints the report's plots load (the demo keeps their weights)."""
    return {r.name for r in _mask_usage_runs(runs) + _retrieval_runs(runs)[1]}


def _plot_mask_usage(runs, checkpoints: Dict[str, str], plots: Path) -> List[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import smartclip
    from .evaluate import concept_mask_usage
    from .generator import CONCEPTS
    chosen = _mask_usage_runs(runs)
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
    regime, chosen = _retrieval_runs(runs)
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
def write_report(out: Path, record: dict, runs, data_dir: Path) -> Path:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    checkpoints = {name: run["checkpoint"] for name, run in record["runs"].items()}
    _plot_training(out, runs, plots)
    curves = _plot_mask_curves(record, plots)
    usage_groups = _plot_mask_usage(runs, checkpoints, plots)
    regime = _plot_retrieval(runs, checkpoints, data_dir, plots)
    cfg, base = record["config"], record["base"]
    scale = f"{base['logit_scale']:.2f}" if cfg["scale"] == "model" else str(cfg["scale"])
    lines = [
        "# SmartCLIP vs CLIP on the embedded scene benchmark",
        "",
        f"Command: `{record['command']}` (wall time {record['wall_time_s']:.0f} s). "
        "Design, hyperparameters and the decision rule are fixed in docs/demo.md.",
        "",
        f"Data: {cfg['num_train']} training scenes, {record['counts']['test_images']} test scenes whose "
        f"concept pairs never occur together in training, {record['counts']['single_images']} one-object scenes, "
        f"{record['counts']['concepts']} concepts. Every run starts from one base model "
        f"({'shipped' if base['shipped'] else 'given'}: `{base['path']}`, SHA-256 `{base['sha256'][:16]}...`, "
        f"learned logit scale {base['logit_scale']:.2f}) and fine-tunes {cfg['finetune_steps']} steps at batch "
        f"{cfg['batch_size']}. SmartCLIP's modular loss runs at scale {scale}"
        + (" (the base's own temperature, as the paper runs at OpenAI CLIP's own 100)" if cfg["scale"] == "model"
           else "") + f"; the `SmartCLIP, scale {cfg['ablation_scale']:g}` column is the control that switches "
        "temperature.",
        "",
        "## Results",
        "",
        summary_table(record),
        "",
        "Columns: `random init` and `base` are the starting points; `short:` / `long:` are the fine-tuning "
        "caption regimes; `mask=1` is SmartCLIP's loss with the mask forced to all ones"
        + ("; `scratch-long:` trained from random weights." if cfg["scratch"] else ".")
        + " Mask metrics are shown only where the mask network was trained. Claims: "
        + "; ".join(f"({k}) {v}" for k, v in CLAIMS.items()) + ".",
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
    ]
    if curves:
        lines += ["Mask metrics during fine-tuning (every run's curve is on the test-scene captions):", "",
                  "![mask curves](plots/mask_curves.png)", ""]
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


# --------------------------------------------------------------------------- the ablation grid
GRID_COLUMNS = [("long_i2t@1", "long i2t@1"), ("long_t2i@1", "long t2i@1"), ("short_i2t@1", "short i2t@1"),
                ("short_t2i@1", "short t2i@1"), ("concept_map", "concept mAP"), ("single_acc", "one-object top-1"),
                ("probe_map", "probe mAP"), ("mask_jaccard_gap", "Jaccard gap"),
                ("mask_algebra_gap", "algebra gap"), ("mask_active", "active %")]
# masks that "identify concepts" in the sense of docs/demo.md: both gaps at least 30 points with
# at most 30 % of the dimensions active
MASK_BAR = {"min_gap": 30.0, "max_active": 30.0}


def meets_mask_bar(stats: Dict[str, dict]) -> bool:
    try:
        return (stats["mask_jaccard_gap"]["mean"] >= MASK_BAR["min_gap"]
                and stats["mask_algebra_gap"]["mean"] >= MASK_BAR["min_gap"]
                and stats["mask_active"]["mean"] <= MASK_BAR["max_active"])
    except KeyError:
        return False


def _versus(stats: Dict[str, dict], reference: Dict[str, dict]) -> str:
    """Metrics better / worse than the reference by the decision rule, as ``+metric`` / ``-metric``."""
    marks = []
    for metric in CLAIM_METRICS:
        if metric in stats and metric in reference:
            v = verdict(stats[metric], reference[metric])
            if v in ("better", "worse"):
                marks.append(("+" if v == "better" else "-") + metric)
    return " ".join(marks) or "no clear difference"


def grid_table(record: dict) -> str:
    """Markdown: one row per group (CLIP, SmartCLIP as released, each combination), mean ± std over
    seeds, the metrics better (+) or worse (-) than CLIP by the rule, and the mask bar."""
    summary, reference = record["summary"], record["summary"].get(record["reference"], {})
    header = "| run | " + " | ".join(label for _, label in GRID_COLUMNS) + " | vs CLIP (rule) | mask bar |"
    lines = [header, "|" + "---|" * (len(GRID_COLUMNS) + 3)]
    for group, stats in summary.items():
        cells = [_cell(stats.get(key)) for key, _ in GRID_COLUMNS]
        versus = "reference" if group == record["reference"] else _versus(stats, reference)
        bar = "–" if "mask_active" not in stats else ("**yes**" if meets_mask_bar(stats) else "no")
        lines.append(f"| {record['labels'][group]} | " + " | ".join(cells) + f" | {versus} | {bar} |")
    lines += ["", f"Percent; mean ± sample std over {record['seeds']} seeds; {record['regime']} captions; scored on "
              f"the {record['split']} split. Gaps: Jaccard same - different concept, mask algebra shared - control "
              f"concept. Mask bar: both gaps >= {MASK_BAR['min_gap']:g} points with at most "
              f"{MASK_BAR['max_active']:g} % active dimensions."]
    return "\n".join(lines)


def _plot_grid(record: dict, plots: Path) -> List[str]:
    """For each grid key: active %, Jaccard gap and algebra gap (mean ± std over seeds) against the
    key's values, one line per setting of the other keys."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    written = []
    grid, summary, overrides = record["grid"], record["summary"], record["overrides"]
    panels = [("mask_active", "active mask dimensions (%)"), ("mask_jaccard_gap", "Jaccard same - different"),
              ("mask_algebra_gap", "algebra: shared - control")]
    for key, values in grid.items():
        lines: Dict[str, Dict[str, dict]] = {}
        for group, combo in overrides.items():
            if not combo:
                continue
            setting = dict(item.split("=", 1) for item in combo)
            rest = " ".join(f"{k}={v}" for k, v in setting.items() if k != key) or "all"
            lines.setdefault(rest, {})[setting[key]] = summary[group]
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
        for ax, (metric, title) in zip(axes, panels):
            for rest, points in lines.items():
                xs = [i for i, v in enumerate(values) if v in points and metric in points[v]]
                ax.errorbar(xs, [points[values[i]][metric]["mean"] for i in xs],
                            yerr=[points[values[i]][metric]["std"] for i in xs], marker="o", capsize=3, lw=1.2,
                            label=rest)
            ax.set_xticks(range(len(values)), values)
            ax.set_xlabel(key)
            ax.set_title(title, fontsize=9)
        axes[0].set_ylim(0, 100)
        for ax in axes[1:]:
            ax.axhline(MASK_BAR["min_gap"], color="tab:green", lw=0.8, ls="--")
            ax.axhline(0, color="black", lw=0.6)
        axes[0].axhline(MASK_BAR["max_active"], color="tab:green", lw=0.8, ls="--")
        axes[0].legend(fontsize=6)
        fig.suptitle(f"grid on {record['regime']} captions, {record['split']} split (dashed: the mask bar)", fontsize=9)
        fig.tight_layout()
        name = f"{record['name']}__{key.replace('.', '-')}.png"
        fig.savefig(plots / name, dpi=110)
        plt.close(fig)
        written.append(name)
    return written


def write_grid_report(out: Path, record: dict) -> Path:
    plots = out / "plots"
    plots.mkdir(exist_ok=True)
    names = _plot_grid(record, plots)
    lines = [f"# Ablation grid ({record['split']} split)", "", f"Command: `{record['command']}` "
             f"(wall time {record['wall_time_s']:.0f} s). Every run fine-tunes the base "
             f"(`{record['base']['path']}`, SHA-256 `{record['base']['sha256'][:16]}...`) with the demo's settings "
             "and the grid's overrides; decision rule of docs/demo.md against CLIP's fine-tune.", "",
             grid_table(record), ""]
    lines += [f"![{n}](plots/{n})\n" for n in names]
    path = out / f"{record['name']}.md"
    path.write_text("\n".join(lines))
    return path
