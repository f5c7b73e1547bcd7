"""The Markdown report: a table of the sections, then each section's own table."""
from __future__ import annotations

REFERENCE = {"samples_per_s_per_gpu": 365, "s_per_step": 0.70, "peak_gib": 51,
             "what": "public reproduction of the released recipe: ViT-B/16, fp16, global batch 1024 = "
                     "4 x 256 on four A800-80GB, loader and DDP included"}


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
