"""The thread counts smartclip chooses for itself (applied by the ``smartclip`` command).

PyTorch's CPU kernels run on an OpenMP pool of one thread per logical CPU, and GNU OpenMP
threads that wait at the end of a parallel region spin for a while before they sleep. When
another process holds one of the cores, the threads of every region wait for the one that is
descheduled, spinning on the cores the others need: ``benchmarks/bench_threads.py`` measured
training steps several times slower than with one thread (docs/performance.md, *Threads*).

The policy, applied once at the start of a command and only where the user has not chosen:

- the main process uses as many threads as cores are really available to it: the CPUs it
  may run on (``os.sched_getaffinity``), capped by a cgroup CPU quota (containers) and by the
  number of physical cores (hyper-threads share one core's arithmetic units);
- waiting OpenMP threads sleep instead of spinning (``OMP_WAIT_POLICY=PASSIVE``,
  ``KMP_BLOCKTIME=0`` for Intel's OpenMP), which removes the penalty of a busy neighbour;
- DataLoader workers run one thread each (:func:`worker_init`): they are separate processes,
  already one per core.

A user who sets ``OMP_NUM_THREADS`` (or ``OMP_WAIT_POLICY`` / ``KMP_BLOCKTIME``) keeps that
setting; so does a program that calls ``torch.set_num_threads`` itself (the library never
changes threads; only the command line does). ``torchrun`` sets ``OMP_NUM_THREADS=1`` for
each process unless it is set.

This module imports nothing heavy: it must run before ``import torch`` for the OpenMP
settings to reach the OpenMP runtime, which reads them once when it is loaded.
"""
from __future__ import annotations

import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

__all__ = ["ThreadPlan", "available_cores", "physical_cores", "cgroup_cpu_limit", "plan", "configure",
           "worker_init"]

# settings the user may have chosen; we fill in only those left unset
_WAIT_SETTINGS = {"OMP_WAIT_POLICY": "PASSIVE", "KMP_BLOCKTIME": "0"}


@dataclass(frozen=True)
class ThreadPlan:
    threads: int                 # intra-op threads of the main process
    source: str                  # "OMP_NUM_THREADS" (the user's) or "smartclip"
    available: int               # cores this process may use
    environment: Dict[str, str]  # variables set (only those the user left unset)

    def describe(self) -> str:
        if self.source != "smartclip":
            return f"{self.threads} threads ({self.source} as set)"
        return f"{self.threads} threads ({self.available} cores available)"


def cgroup_cpu_limit(root: str = "/sys/fs/cgroup") -> Optional[float]:
    """The cgroup CPU quota in cores (``cpu.max`` of cgroup v2, ``cpu.cfs_quota_us`` of v1), or
    None when there is none or it cannot be read."""
    base = Path(root)
    try:
        quota, period = (base / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((base / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((base / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def physical_cores(cpuinfo: str = "/proc/cpuinfo") -> Optional[int]:
    """Distinct (package, core) pairs in ``/proc/cpuinfo``, or None where that cannot be read."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        return None
    cores, package = set(), "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "physical id":
            package = value.strip()
        elif key == "core id":
            cores.add((package, value.strip()))
    return len(cores) or None


def available_cores() -> int:
    """The CPUs this process may run on, capped by a cgroup quota (rounded up: a quota of 1.5
    cores still runs two threads in parallel part of the time)."""
    try:
        n = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        n = os.cpu_count() or 1
    quota = cgroup_cpu_limit()
    if quota:
        n = min(n, math.ceil(quota))
    return max(1, n)


def plan(environ=None) -> ThreadPlan:
    """What :func:`configure` would do, without doing it."""
    environ = os.environ if environ is None else environ
    available = available_cores()
    env = {k: v for k, v in _WAIT_SETTINGS.items() if k not in environ}
    user = environ.get("OMP_NUM_THREADS", "").strip()
    if user:
        try:
            return ThreadPlan(max(1, int(user.split(",")[0])), "OMP_NUM_THREADS", available, env)
        except ValueError:
            pass  # not a number: OpenMP ignores it too; choose as if unset
    physical = physical_cores()
    threads = min(available, physical) if physical else available
    return ThreadPlan(threads, "smartclip", available, {"OMP_NUM_THREADS": str(threads), **env})


def configure() -> ThreadPlan:
    """Apply :func:`plan` to this process (and, through the environment, to the processes it
    starts). Call it before ``import torch`` so that the OpenMP runtime reads the settings; if
    torch is already imported, its thread count is still set."""
    chosen = plan()
    os.environ.update(chosen.environment)
    torch = sys.modules.get("torch")  # looked up, not imported: importing torch here defeats the point
    if torch is not None and chosen.source == "smartclip" and hasattr(torch, "set_num_threads"):
        torch.set_num_threads(chosen.threads)
    return chosen


def worker_init(_worker_id: int = 0) -> None:
    """``worker_init_fn`` of smartclip's DataLoaders: one thread per worker process."""
    import torch
    torch.set_num_threads(1)
