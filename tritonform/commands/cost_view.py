"""How `tritonform plan` shows the stack's fit and cost estimate (infra/cost.py) in the terminal."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from infra.cost import StackCost


def cost_table(cost: StackCost) -> Table:
    """USD per hour by part at min, desired and max nodes, and the estimated USD per million output tokens."""
    table = Table(title="cost (estimate, USD, list prices)", title_justify="left")
    table.add_column("")
    for level in cost.levels:
        table.add_column(f"{level.level} ({level.gpu_nodes} GPU nodes)", justify="right")
    parts = list(cost.levels[0].parts)
    for part in parts:
        table.add_row(part.replace("_", " "), *(f"{level.parts[part]:.3f}" for level in cost.levels))
    table.add_row("[bold]USD per hour[/]", *(f"[bold]{level.usd_per_hour:.2f}[/]" for level in cost.levels))
    table.add_row("replicas", *(str(level.replicas) for level in cost.levels))
    table.add_row(
        "output tokens/s (full load)", *(f"{level.tokens_per_second:,.0f}" for level in cost.levels)
    )
    table.add_row(
        "[bold]USD per million output tokens[/]",
        *(
            f"[bold]{level.usd_per_million_tokens:.3f}[/]"
            if level.usd_per_million_tokens is not None
            else "-"
            for level in cost.levels
        ),
    )
    return table


def cost_lines(cost: StackCost) -> list[str]:
    """The fit and the throughput model's inputs, then the notes, one line each (rich markup escaped)."""
    lines = []
    if cost.fit is not None:
        fit = cost.fit
        lines.append(
            f"fit: {fit['total_gib']} GiB per GPU (weights {fit['weights_gib']} + "
            f"KV cache {fit['kv_cache_gib']} + activations {fit['activations_gib']} + "
            f"runtime {fit['runtime_gib']}) of {fit['usable_gib']} usable"
        )
    t = cost.throughput
    if "tokens_per_second_per_replica" in t:
        lines.append(
            f"throughput estimate: {t['model']} ({t['parameters_b']}B, {t['precision']}) on {t['gpu']}: "
            f"batch {t['batch']} x {t['bandwidth_gb_s']} GB/s x {t['efficiency']} / "
            f"{t['bytes_per_step_gib']} GiB "
            f"per step (weights + KV at {t['average_context']} tokens) = "
            f"{t['tokens_per_second_per_replica']:,.0f} tokens/s per replica; {t['label']}"
        )
    lines.extend(f"note: {note}" for note in cost.notes)
    return [escape(line) for line in lines]
