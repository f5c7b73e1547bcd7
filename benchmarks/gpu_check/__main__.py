"""``python -m benchmarks.gpu_check``: the command line (see the package's docstring)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from . import __doc__ as DOC
from .harness import Report, Section, print_row, run_sections
from .sections import SECTIONS, pytest_section, plan
from .workers import WORKERS


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    sections = [(n, lim * settings["limit_scale"], fn or pytest_section(settings[n])) for n, lim, fn in SECTIONS]
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
