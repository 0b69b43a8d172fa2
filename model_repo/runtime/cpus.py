"""How many CPUs this process may keep busy, for the engine's default thread count (standard library only)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cpus(cgroup_root: Path = Path("/sys/fs/cgroup")) -> int:
    """How many CPUs this process may keep busy: its affinity mask, capped by a cgroup CPU quota (a
    container's CPU limit, e.g. Kubernetes `limits.cpu: 4` on a 64-core node). os.cpu_count() sees
    the whole node, and that many onnxruntime threads under a 4-CPU quota get throttled."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(cgroup_root)
    return max(1, min(cpus, math.ceil(quota))) if quota is not None else max(1, cpus)


def cgroup_cpu_quota(root: Path = Path("/sys/fs/cgroup"), own: str | None = None) -> float | None:
    """CPUs allowed by the cgroup quota (cgroup v2 `cpu.max` of this process's group and its parents:
    the smallest; else v1 `cpu.cfs_quota_us`), or None when there is no quota or nothing to read.
    `own`: the process's v2 group path (default: read from /proc/self/cgroup)."""
    if own is None:
        own = ""
        try:
            for line in Path("/proc/self/cgroup").read_text().splitlines():
                if line.startswith("0::"):
                    own = line[3:].strip()
        except OSError:
            pass
    parts = [p for p in own.split("/") if p]
    limits = []
    for depth in range(len(parts), -1, -1):  # a parent's quota binds its children too
        try:
            quota, period = (root.joinpath(*parts[:depth]) / "cpu.max").read_text().split()[:2]
            if quota != "max":
                limits.append(int(quota) / int(period))
        except (OSError, ValueError):
            continue
    if limits:
        return min(limits)
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
    except (OSError, ValueError):
        return None
    return quota_us / period_us if quota_us > 0 and period_us > 0 else None
