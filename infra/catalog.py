"""GPU machine catalogue per cloud: what each machine type carries and costs.

Plain data, no cloud SDK imports, so settings validation and cost figures stay cheap.
Prices are public list prices (USD per hour, on-demand, one common region) and are
only used for the estimates that `tritonform plan` prints; they are labelled as such.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

CloudName = Literal["aws", "gcp", "azure"]
CLOUDS: tuple[CloudName, ...] = ("aws", "gcp", "azure")


@dataclass(frozen=True)
class GpuMachine:
    """One GPU machine type: how many GPUs of which model, and its list price."""

    name: str
    gpus: int
    gpu_model: str
    vcpus: int
    memory_gib: int
    usd_per_hour: float


def _table(*machines: GpuMachine) -> dict[str, GpuMachine]:
    return {m.name: m for m in machines}


# AWS: NVIDIA GPU instance types that run the EKS accelerated AMIs (x86_64).
AWS_GPU_MACHINES = _table(
    GpuMachine("g4dn.xlarge", 1, "T4", 4, 16, 0.526),
    GpuMachine("g4dn.2xlarge", 1, "T4", 8, 32, 0.752),
    GpuMachine("g4dn.12xlarge", 4, "T4", 48, 192, 3.912),
    GpuMachine("g5.xlarge", 1, "A10G", 4, 16, 1.006),
    GpuMachine("g5.2xlarge", 1, "A10G", 8, 32, 1.212),
    GpuMachine("g5.4xlarge", 1, "A10G", 16, 64, 1.624),
    GpuMachine("g5.12xlarge", 4, "A10G", 48, 192, 5.672),
    GpuMachine("g5.48xlarge", 8, "A10G", 192, 768, 16.288),
    GpuMachine("g6.xlarge", 1, "L4", 4, 16, 0.805),
    GpuMachine("g6.2xlarge", 1, "L4", 8, 32, 0.978),
    GpuMachine("g6.12xlarge", 4, "L4", 48, 192, 4.602),
    GpuMachine("g6e.xlarge", 1, "L40S", 4, 32, 1.861),
    GpuMachine("g6e.12xlarge", 4, "L40S", 48, 384, 10.493),
    GpuMachine("p4d.24xlarge", 8, "A100", 96, 1152, 21.958),
    GpuMachine("p5.48xlarge", 8, "H100", 192, 2048, 55.04),
)
AWS_GPU_FAMILIES = frozenset(name.split(".")[0] for name in AWS_GPU_MACHINES)

# GCP: machine types with attached or built-in NVIDIA accelerators, keyed by machine type.
GCP_GPU_MACHINES = _table(
    GpuMachine("n1-standard-4", 1, "nvidia-tesla-t4", 4, 15, 0.54),
    GpuMachine("n1-standard-8", 1, "nvidia-tesla-t4", 8, 30, 0.73),
    GpuMachine("g2-standard-4", 1, "nvidia-l4", 4, 16, 0.71),
    GpuMachine("g2-standard-8", 1, "nvidia-l4", 8, 32, 0.85),
    GpuMachine("g2-standard-24", 2, "nvidia-l4", 24, 96, 2.00),
    GpuMachine("a2-highgpu-1g", 1, "nvidia-tesla-a100", 12, 85, 3.67),
    GpuMachine("a2-ultragpu-1g", 1, "nvidia-a100-80gb", 12, 170, 5.07),
    GpuMachine("a3-highgpu-8g", 8, "nvidia-h100-80gb", 208, 1872, 88.25),
)
GCP_ACCELERATORS = frozenset(m.gpu_model for m in GCP_GPU_MACHINES.values())

# Azure: NVIDIA GPU VM sizes.
AZURE_GPU_MACHINES = _table(
    GpuMachine("Standard_NC4as_T4_v3", 1, "T4", 4, 28, 0.526),
    GpuMachine("Standard_NC8as_T4_v3", 1, "T4", 8, 56, 0.752),
    GpuMachine("Standard_NC64as_T4_v3", 4, "T4", 64, 440, 4.352),
    GpuMachine("Standard_NC24ads_A100_v4", 1, "A100", 24, 220, 3.673),
    GpuMachine("Standard_NC48ads_A100_v4", 2, "A100", 48, 440, 7.346),
    GpuMachine("Standard_NC40ads_H100_v5", 1, "H100", 40, 320, 6.98),
    GpuMachine("Standard_ND96asr_v4", 8, "A100", 96, 900, 27.197),
)

GPU_MACHINES: dict[CloudName, dict[str, GpuMachine]] = {
    "aws": AWS_GPU_MACHINES,
    "gcp": GCP_GPU_MACHINES,
    "azure": AZURE_GPU_MACHINES,
}


def gpu_machine(cloud: CloudName, machine_type: str) -> GpuMachine | None:
    """The catalogue entry for a machine type, or None when it is not a known GPU machine."""
    return GPU_MACHINES[cloud].get(machine_type)
