"""OpenMP settings for every vigil process, applied by ``vigil/__init__.py`` before torch loads.

Why: torch's CPU kernels run on OpenMP (libgomp). After each parallel region its threads
spin-wait for the next one, by default for 300k spins (~3 ms), then sleep. On a busy machine (a
CI runner, a line-side box that serves while it retrains) the spinning threads burn the time
slices the working threads need, and every step waits for its slowest thread: a training step
measured up to ~20x slower, and 6-9x slower than with ``OMP_WAIT_POLICY=PASSIVE`` (no spinning)
in ``bench/contention.py``. Never spinning costs the other way: every op wakes the sleeping
thread, and a batch-1 forward pass is hundreds of small ops, so ``draem`` scored 256x256 images
1.6x slower, and a training epoch ran 1.5x slower, with PASSIVE than with a short spin on an
idle machine. vigil therefore sets ``GOMP_SPINCOUNT=SPIN_COUNT`` (~30 microseconds by
libgomp's own estimate, 100x below its default): long enough to bridge the gap between the ops
of one pass, short enough that a preempted team soon stops burning the cores (README, "Busy
machine"). libgomp reads the variables once, when torch's shared libraries load, so they must
be in the environment before the first ``import torch``: every entry point (``pipelines/*.py``,
``bench/*.py``, the ``vigil`` console script, the MLflow pyfunc package) imports ``vigil`` first.

Thread count: ``OMP_NUM_THREADS`` (torch's intra-op threads, MKL and OpenBLAS follow it)
defaults to the cores this process may use: its CPU affinity (``taskset``, ``docker
--cpuset-cpus``) capped by a cgroup CPU quota (``docker --cpus``), where torch alone would take
every core of the machine. Serving bounds its own count per worker (``server.torch_threads``
in configs/serving.yaml, 1 by default) and sweep workers theirs; child processes inherit the
variables.

Values the user set are kept: with ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` in the environment
vigil sets no spin count (``OMP_WAIT_POLICY=PASSIVE``: never spin, ``ACTIVE``: always spin).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

# libgomp's spins before a waiting thread sleeps (libgomp estimates ~100k spins per ms)
SPIN_COUNT = 3_000
CGROUP_V2_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")
CGROUP_V1_QUOTA = Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us")
CGROUP_V1_PERIOD = Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us")


def _cgroup_cpu_limit() -> float | None:
    """CPUs granted by a cgroup quota (v2 ``cpu.max`` or v1 CFS files), None when unlimited."""
    try:
        if CGROUP_V2_CPU_MAX.is_file():
            quota, period = CGROUP_V2_CPU_MAX.read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        if CGROUP_V1_QUOTA.is_file() and CGROUP_V1_PERIOD.is_file():
            quota_us = int(CGROUP_V1_QUOTA.read_text())
            return None if quota_us <= 0 else quota_us / int(CGROUP_V1_PERIOD.read_text())
    except (OSError, ValueError):
        return None  # unreadable or unexpected: no limit known
    return None


def usable_cpus() -> int:
    """The cores this process may use: its affinity set, capped by a cgroup quota, >= 1."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = _cgroup_cpu_limit()
    if limit is not None:
        cpus = min(cpus, math.ceil(limit))
    return max(1, cpus)


def apply_process_defaults() -> None:
    """Set ``GOMP_SPINCOUNT=SPIN_COUNT`` (unless a wait policy or spin count is set) and
    ``OMP_NUM_THREADS=usable_cpus()`` (unless set).

    Has an effect only before torch is first imported (see the module docstring).
    """
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", str(SPIN_COUNT))
    os.environ.setdefault("OMP_NUM_THREADS", str(usable_cpus()))
