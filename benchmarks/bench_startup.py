"""Start-up time of the ``smartclip`` command: ``--help`` of the command and of every
sub-command, against ``python -c "import torch"`` in the same run.

    .venv/bin/python benchmarks/bench_startup.py              # 5 repeats of each
    .venv/bin/python benchmarks/bench_startup.py --repeats 3
    .venv/bin/python benchmarks/bench_startup.py --repo ../old-checkout   # another version's code

Each row is a fresh interpreter (``python -m smartclip ...``, what the console script runs),
timed from start to exit; reported: the median over ``--repeats`` (rounds interleave the rows,
so a busy moment of the shared machine hits every row alike) and its ratio to
``import torch`` (< 1 is faster). The baselines also show ``python -c pass`` (the
interpreter alone) and ``import open_clip`` (what every command imported before the
library's names were made lazy).
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path



def help_commands():
    """``[]`` (top level) and every command / sub-command, as argv lists."""
    from smartclip.cli import COMMANDS

    rows = [[]]
    for name, (module_name, _) in COMMANDS.items():
        parser = argparse.ArgumentParser()
        importlib.import_module(f"smartclip.cli.{module_name}").add_arguments(parser)
        rows.append([name])
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                rows += [[name, sub] for sub in action.choices]
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--repo", default=str(Path(__file__).resolve().parents[1]),
                    help="the checkout whose smartclip is timed (default: this one)")
    args = ap.parse_args()
    sys.path.insert(0, args.repo)

    py = sys.executable
    rows = {"python -c pass (interpreter)": [py, "-c", "pass"],
            "python -c 'import torch' (baseline)": [py, "-c", "import torch"],
            "python -c 'import open_clip'": [py, "-c", "import open_clip"]}
    for argv in help_commands():
        rows[" ".join(["smartclip", *argv, "--help"])] = [py, "-m", "smartclip", *argv, "--help"]
    env = {**os.environ, "PYTHONPATH": args.repo + os.pathsep + os.environ.get("PYTHONPATH", ""),
           "HF_HUB_OFFLINE": "1"}

    times = {label: [] for label in rows}
    for _ in range(args.repeats):
        for label, cmd in rows.items():
            start = time.perf_counter()
            subprocess.run(cmd, env=env, cwd=args.repo, check=True,  # -m looks in the current folder first
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            times[label].append(time.perf_counter() - start)

    baseline = statistics.median(times["python -c 'import torch' (baseline)"])
    print(f"{args.repo}: median of {args.repeats}, {os.cpu_count()} CPUs, Python {sys.version.split()[0]}\n")
    print("| command | seconds | / import torch |")
    print("|---|---|---|")
    for label, values in times.items():
        median = statistics.median(values)
        print(f"| `{label}` | {median:.2f} | {median / baseline:.2f} |")


if __name__ == "__main__":
    main()
