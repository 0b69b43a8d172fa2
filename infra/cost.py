"""What a stack costs per hour and per million output tokens: the `cost` block of `tritonform plan`.

From the settings and the catalogue's list prices alone (no cloud call): USD per hour at the GPU pool's
minimum, desired and maximum node counts (the system pool at its own min/desired/max), plus the always-on
parts (control plane, NAT, load balancer, API gateway tier). Usage-priced parts (per request, per GB,
load-balancer capacity units) are not in the figures and are named in `notes`.

The per-token figure is an estimate: full load (every replica decoding `model.concurrency` sequences)
at the memory-bound decode speed of infra/sizing.py, whose inputs it shows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from infra.catalog import FIXED_PRICES, PRICES_CHECKED, PRICES_SOURCE, SYSTEM_MACHINE_PRICES
from infra.settings import StackSettings
from infra.settings.fit import replica_estimate
from infra.sizing import estimate_throughput

LEVELS = ("min", "desired", "max")


@dataclass(frozen=True)
class CostLevel:
    """USD per hour at one node count, by part, and the estimated USD per million output tokens."""

    level: str
    gpu_nodes: int
    system_nodes: int
    replicas: int
    parts: dict[str, float]
    tokens_per_second: float

    @property
    def usd_per_hour(self) -> float:
        return sum(self.parts.values())

    @property
    def usd_per_million_tokens(self) -> float | None:
        if self.tokens_per_second <= 0:
            return None
        return self.usd_per_hour / (self.tokens_per_second * 3600) * 1e6

    def as_dict(self) -> dict[str, Any]:
        per_million = self.usd_per_million_tokens
        return {
            "gpu_nodes": self.gpu_nodes,
            "system_nodes": self.system_nodes,
            "replicas": self.replicas,
            "usd_per_hour": round(self.usd_per_hour, 3),
            "parts_usd_per_hour": {k: round(v, 4) for k, v in self.parts.items()},
            "output_tokens_per_second": round(self.tokens_per_second, 1),
            "usd_per_million_output_tokens": round(per_million, 3) if per_million is not None else None,
        }


@dataclass(frozen=True)
class StackCost:
    """The cost block: levels, the throughput model's inputs, the fit, sources and notes."""

    levels: tuple[CostLevel, ...]
    throughput: dict[str, Any]
    fit: dict[str, Any] | None
    notes: tuple[str, ...] = field(default_factory=tuple)

    def level(self, name: str) -> CostLevel:
        return next(level for level in self.levels if level.level == name)

    def as_dict(self) -> dict[str, Any]:
        return {
            "currency": "USD",
            "estimate": True,
            **{level.level: level.as_dict() for level in self.levels},
            "throughput_model": self.throughput,
            "fit": self.fit,
            "notes": list(self.notes),
        }


def _fixed_parts(settings: StackSettings, nodes: int) -> dict[str, float]:
    prices = FIXED_PRICES[settings.cloud]
    parts = {
        "control_plane": prices.control_plane_prod
        if settings.environment == "prod"
        else prices.control_plane_dev,
        "load_balancer": prices.load_balancer,
    }
    # The clouds differ only in data (infra/catalog.py): NAT priced per gateway (one per zone in prod, as
    # the network creates them) and/or per VM up to a cap; the API entry either sums its always-on parts or
    # is one tier chosen by environment (or the stack's own tier setting).
    gateways = settings.network.zone_count if settings.environment == "prod" else 1
    parts["nat"] = gateways * prices.nat_gateway + min(nodes * prices.nat_per_vm, prices.nat_per_vm_cap)
    if prices.api_gateway_tier_by_environment:
        tier = _api_tier_setting(settings) or prices.api_gateway_tier_by_environment[settings.environment]
        parts["api_gateway"] = prices.api_gateway[tier]
    else:
        parts["api_gateway"] = sum(prices.api_gateway.values())
    return parts


def _api_tier_setting(settings: StackSettings) -> str | None:
    """The API entry's tier the stack sets itself (Azure's `azure.apimSku`), if any."""
    return getattr(settings.azure, "apim_sku", None) if settings.azure else None


def stack_cost(settings: StackSettings) -> StackCost:
    """The estimated hourly and per-token cost of a stack at its GPU pool's min, desired and max nodes."""
    notes = [
        f"list prices from infra/catalog.py, checked {PRICES_CHECKED}: {PRICES_SOURCE[settings.cloud]}",
        "not included: usage-priced parts (API requests, data processed by NAT and load balancers, egress, "
        "object storage, logs, disks)",
    ]
    machine = settings.gpu_machine
    model = settings.model
    tp = settings.triton.gpus_per_replica
    gpu_price = machine.usd_per_hour if machine else 0.0
    if machine is None:
        notes.append(
            f"{settings.gpu_pool.instance_type} is not in infra/catalog.py: "
            "its price, fit and speed are unknown"
        )
    elif settings.gpu_pool.capacity == "spot":
        notes.append("the GPU pool is spot capacity: billed below the on-demand list price used here")
    system_price = SYSTEM_MACHINE_PRICES[settings.cloud].get(settings.system_instance_type)
    if system_price is None:
        notes.append(f"system machine type {settings.system_instance_type} has no price in infra/catalog.py")
    shape = model.shape()
    throughput = (
        estimate_throughput(
            shape,
            model.precision,
            model.context_length,
            model.concurrency,
            machine.hbm_bandwidth_gb_s,
            tp,
            compute_precision=model.compute_precision(),
        )
        if machine
        else None
    )
    replicas_per_node = settings.gpu_pool.gpus_per_node // tp
    if settings.gpu_pool.max_nodes * replicas_per_node > settings.triton.max_replicas:
        notes.append(
            f"at gpuPool.maxNodes ({settings.gpu_pool.max_nodes}) the pool holds "
            f"{settings.gpu_pool.max_nodes * replicas_per_node} replicas but triton.maxReplicas is "
            f"{settings.triton.max_replicas}: nodes beyond that would be paid for and idle"
        )
    levels = []
    for level in LEVELS:
        gpu_nodes = getattr(settings.gpu_pool, f"{level}_nodes")
        system_nodes = getattr(settings.system_pool, f"{level}_nodes")
        replicas = min(gpu_nodes * replicas_per_node, settings.triton.max_replicas)
        parts = {
            "gpu_pool": gpu_nodes * gpu_price,
            "system_pool": system_nodes * (system_price or 0.0),
            **_fixed_parts(settings, gpu_nodes + system_nodes),
        }
        speed = replicas * throughput.tokens_per_second if throughput else 0.0
        levels.append(CostLevel(level, gpu_nodes, system_nodes, replicas, parts, speed))
    model_inputs: dict[str, Any] = {
        "label": "estimate: memory-bound decode, every replica at full load; compute limits not modelled",
        "model": shape.name,
        "parameters_b": round(shape.parameter_count / 1e9, 3),
        "precision": model.precision,
        "context_length": model.context_length,
        "tensor_parallel": tp,
        "formula": "tokens/s per replica = batch x bandwidth x efficiency / "
        "(weight bytes + KV bytes read) per GPU",
    }
    if machine is not None and throughput is not None:
        model_inputs |= {"gpu": machine.gpu.name, **throughput.as_dict()}
        model_inputs["tokens_per_second_per_replica"] = model_inputs.pop("tokens_per_second")
    fit = replica_estimate(model, machine, tp).as_dict() if machine else None
    return StackCost(tuple(levels), model_inputs, fit, tuple(notes))


@dataclass(frozen=True)
class IdleCost:
    """What a stack costs per hour with no traffic: as configured, and with Triton at zero."""

    gpu_nodes: int  # GPU nodes the idle Triton replicas keep up (at least gpuPool.minNodes)
    today: dict[str, float]  # USD/h by part: the GPU nodes, the system pool at minNodes, always-on parts
    at_zero: dict[str, float]  # with triton.minReplicas 0 and gpuPool.minNodes 0: system pool + always-on


def idle_cost(settings: StackSettings) -> IdleCost:
    """Idle cost per hour from the catalogue's list prices (infra/catalog.py), usage-priced parts left out."""
    machine = settings.gpu_machine
    replicas_per_node = max(1, settings.gpu_pool.gpus_per_node // settings.triton.gpus_per_replica)
    needed = -(-settings.triton_min_replicas // replicas_per_node)  # ceil
    gpu_nodes = max(settings.gpu_pool.min_nodes, needed)
    system_nodes = settings.system_pool.min_nodes
    system_price = SYSTEM_MACHINE_PRICES[settings.cloud].get(settings.system_instance_type, 0.0)
    system = {"system_pool": system_nodes * system_price}
    today = {
        "gpu_pool": gpu_nodes * (machine.usd_per_hour if machine else 0.0),
        **system,
        **_fixed_parts(settings, gpu_nodes + system_nodes),
    }
    return IdleCost(gpu_nodes, today, {**system, **_fixed_parts(settings, system_nodes)})


def idle_cost_table(stacks: dict[str, StackSettings]) -> str:
    """The README's idle-cost table (markdown) for `stacks` (name -> settings)."""
    rows = [
        "| stack | GPU nodes idle today | today (GPU + system + edge) | Triton at zero (system + edge) |",
        "|---|---|---|---|",
    ]
    for name, s in stacks.items():
        cost = idle_cost(s)
        machine = s.gpu_machine
        gpu = f"{cost.gpu_nodes} x {s.gpu_pool.instance_type}"
        gpu += f" (${cost.today['gpu_pool']:.3f})" if machine else " (price not in the catalogue)"
        parts = ", ".join(f"{k} ${v:.4f}" for k, v in cost.at_zero.items() if v > 0)
        today, at_zero = sum(cost.today.values()), sum(cost.at_zero.values())
        rows.append(f"| {name} | {gpu} | ${today:.3f} | ${at_zero:.3f} ({parts}) |")
    return "\n".join(rows)


if __name__ == "__main__":  # python -m infra.cost: the idle-cost table of the shipped stacks
    from pathlib import Path

    from infra.settings import load_stack_file

    stack_dir = Path(__file__).resolve().parents[1] / "stacks"
    shipped = {
        p.name.removeprefix("Pulumi.").removesuffix(".yaml"): load_stack_file(p)
        for p in sorted(stack_dir.glob("Pulumi.*.yaml"))
    }
    print(idle_cost_table(shipped))
