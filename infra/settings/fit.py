"""Does the stack's model fit one Triton replica's GPUs? Checked with the settings, before any cloud call.

`gpusPerReplica` becomes the replica's tensor parallel size, so it must divide the node's GPUs (a replica
never spans nodes) and is refused above 1 for the ONNX backend (its engine runs on one GPU). The model's
memory per GPU (infra/sizing.py) must stay within the GPU's usable memory; when it does not, the error
gives the figures and the cheapest machine types of the cloud that would hold it.
"""

from __future__ import annotations

from dataclasses import dataclass

from infra.catalog import GPU_MACHINES, CloudName, GpuMachine
from infra.settings.model import ModelSettings
from infra.sizing import GIB, MemoryEstimate, ModelShape, estimate_memory, weight_bytes

SUGGESTIONS = 3
# Disk the `tritonserver:<yy.mm>-trtllm-python-py3` image takes on a node once pulled and unpacked
# (NGC lists it at ~20 GB compressed); with the checkpoint beside it on the node's disk.
TRTLLM_IMAGE_DISK_GB = 40


def checkpoint_storage_gib(model: ModelSettings) -> int:
    """Node-local storage Triton's pod syncs the llmapi repository into: the checkpoint's weights
    (16-bit unless quantised) plus 10% and 1 GiB for tokenizer, configs and filesystem overhead."""
    precision = "bf16" if model.precision == "fp32" else model.precision
    return int(weight_bytes(model.shape(), precision) * 1.1 / GIB) + 1


def check_disk(backend: str, disk_size_gb: int, model: ModelSettings) -> None:
    """A TensorRT-LLM node's disk holds its image and the synced checkpoint; a ValueError says what to set."""
    if backend != "tensorrt-llm":
        return
    checkpoint = checkpoint_storage_gib(model)
    needed = TRTLLM_IMAGE_DISK_GB + checkpoint * GIB / 1e9
    if disk_size_gb < needed:
        raise ValueError(
            f"gpuPool.diskSizeGb: {disk_size_gb} GB cannot hold the TensorRT-LLM image "
            f"(~{TRTLLM_IMAGE_DISK_GB} GB) and {model.name}'s checkpoint ({checkpoint} GiB) "
            f"that each Triton pod copies to the node; set diskSizeGb to at least {int(needed) + 1}"
        )


@dataclass(frozen=True)
class Candidate:
    """A machine type that holds the model, with the tensor parallel size it needs."""

    machine: GpuMachine
    tensor_parallel: int
    estimate: MemoryEstimate

    def describe(self) -> str:
        m = self.machine
        tp = f", gpusPerReplica {self.tensor_parallel}" if self.tensor_parallel > 1 else ""
        per_gpu = f"{self.estimate.total_gib:.1f} GiB/GPU"
        return f"{m.name} ({m.gpus} x {m.gpu.name}, ${m.usd_per_hour:g}/h{tp}: {per_gpu})"


def replica_estimate(model: ModelSettings, machine: GpuMachine, tensor_parallel: int) -> MemoryEstimate:
    """Memory per GPU of one replica of `model` on `machine` with `tensor_parallel` GPUs."""
    return _estimate(model.shape(), model, machine, tensor_parallel)


def _estimate(shape: ModelShape, model: ModelSettings, machine: GpuMachine, tp: int) -> MemoryEstimate:
    return estimate_memory(
        shape,
        model.precision,
        model.context_length,
        model.concurrency,
        machine.gpu_memory_gib,
        tp,
        compute_precision=model.compute_precision(),
    )


def machines_that_fit(cloud: CloudName, model: ModelSettings) -> list[Candidate]:
    """Every catalogue machine of `cloud` that holds the model, cheapest first (the smallest TP each)."""
    shape = model.shape()
    found = []
    for machine in GPU_MACHINES[cloud].values():
        sizes = (
            [1]
            if model.backend == "onnx"
            else [n for n in range(1, machine.gpus + 1) if machine.gpus % n == 0]
        )
        for tp in sizes:
            estimate = _estimate(shape, model, machine, tp)
            if estimate.fits:
                found.append(Candidate(machine, tp, estimate))
                break
    return sorted(found, key=lambda c: (c.machine.usd_per_hour, c.machine.name))


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def check_parallelism(gpus_per_node: int, gpus_per_replica: int, backend: str) -> None:
    """`gpusPerReplica` divides the node's GPUs and is 1 on the ONNX backend; a ValueError says why not."""
    if gpus_per_node % gpus_per_replica:
        raise ValueError(
            f"triton.gpusPerReplica: {gpus_per_replica} does not divide gpuPool.gpusPerNode "
            f"({gpus_per_node}); "
            "a replica's GPUs are its tensor parallel group on one node, so use a divisor of "
            f"{gpus_per_node}: {', '.join(str(n) for n in _divisors(gpus_per_node))}"
        )
    if backend == "onnx" and gpus_per_replica > 1:
        raise ValueError(
            f"triton.gpusPerReplica: the ONNX backend runs a replica on one GPU (got {gpus_per_replica}); "
            "set gpusPerReplica: 1, or serve with model.backend: tensorrt-llm, whose tensor parallelism "
            "spreads a replica over several GPUs"
        )


def check_fit(
    cloud: CloudName, machine: GpuMachine | None, gpus_per_replica: int, model: ModelSettings
) -> None:
    """The model fits one replica's GPUs on `machine`; otherwise a ValueError with figures and choices."""
    if machine is None:
        return  # an instance type the catalogue does not list: `plan` says it cannot estimate it
    estimate = replica_estimate(model, machine, gpus_per_replica)
    if estimate.fits:
        return
    choices = machines_that_fit(cloud, model)[:SUGGESTIONS]
    if choices:
        options = "use one of the machine types that fit, cheapest first: " + "; ".join(
            c.describe() for c in choices
        )
    else:
        options = f"lower model.precision: no {cloud} machine type in infra/catalog.py holds it"
    if estimate.weights_gib < estimate.usable_gib:
        options = "lower model.contextLength or model.concurrency, or " + options
    elif model.backend == "onnx":
        options += " (tensor parallel machines need model.backend: tensorrt-llm)"
    raise ValueError(
        f"gpuPool.instanceType: {model.name} ({model.precision}, context {model.context_length}, "
        f"{model.concurrency} sequences) needs {estimate.summary()} on {machine.name}; "
        f"it does not fit: {options}"
    )
