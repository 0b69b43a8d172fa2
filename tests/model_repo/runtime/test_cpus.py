"""CPU detection for the engine's default thread count: affinity mask and cgroup quotas."""

from __future__ import annotations

from pathlib import Path

from model_repo.runtime.cpus import cgroup_cpu_quota, usable_cpus


def test_cgroup_cpu_quota_reads_v2_groups_and_their_parents_then_v1(tmp_path: Path) -> None:
    """A container's CPU limit decides how many threads onnxruntime gets, not the node's core count."""
    assert cgroup_cpu_quota(tmp_path, own="") is None  # no cgroup files: no limit known
    pod = tmp_path / "kubepods" / "pod1"
    pod.mkdir(parents=True)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    (pod / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path, own="/kubepods/pod1") == 1.5
    (pod / "cpu.max").write_text("max 100000\n")
    (tmp_path / "kubepods" / "cpu.max").write_text("400000 100000\n")  # the parent's quota binds
    assert cgroup_cpu_quota(tmp_path, own="/kubepods/pod1") == 4.0
    (tmp_path / "kubepods" / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path, own="/kubepods/pod1") is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert cgroup_cpu_quota(v1, own="") is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000\n")
    assert cgroup_cpu_quota(v1, own="") == 3.0


def test_usable_cpus_never_exceeds_the_quota_nor_the_affinity_mask(tmp_path: Path) -> None:
    import os

    mask = len(os.sched_getaffinity(0))
    (tmp_path / "cpu.max").write_text("50000 100000\n")  # half a CPU still gets one thread
    assert usable_cpus(tmp_path) == 1
    (tmp_path / "cpu.max").write_text(f"{(mask + 3) * 100000} 100000\n")
    assert usable_cpus(tmp_path) == mask
    assert usable_cpus(tmp_path / "nowhere") == mask
