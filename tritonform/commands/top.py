"""`tritonform top`: a live terminal view of a running gateway, read from its Prometheus `/metrics`.

Works for the local stack (`tritonform serve`, http://127.0.0.1:8000) and a deployed one alike (any URL
whose /metrics is the gateway's). Rates (requests/s, tokens/s) come from two scrapes `--interval` apart;
TTFT percentiles from the histogram's buckets (upper bounds, as Prometheus' histogram_quantile gives).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

PREFIX = "tritonform_gateway_"


@dataclass(frozen=True)
class Snapshot:
    """The gateway's counters at one moment."""

    at: float
    requests: float = 0.0
    errors: float = 0.0  # responses with a 5xx status
    completion_tokens: float = 0.0
    in_flight: float = 0.0
    held: float | None = None  # requests held while Triton scales up, when the gateway exports it
    ttft_buckets: dict[float, float] = field(default_factory=dict)  # upper bound -> cumulative count


def parse(text: str, at: float) -> Snapshot:
    """A snapshot from /metrics text (Prometheus exposition format)."""
    from prometheus_client.parser import text_string_to_metric_families

    values: dict[str, float] = {"requests": 0.0, "errors": 0.0, "completion_tokens": 0.0, "in_flight": 0.0}
    held: float | None = None
    buckets: dict[float, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name, labels, value = sample.name, sample.labels, float(sample.value)
            if name == f"{PREFIX}requests_total":
                values["requests"] += value
                values["errors"] += value if str(labels.get("status", "")).startswith("5") else 0.0
            elif name == f"{PREFIX}completion_tokens_total":
                values["completion_tokens"] += value
            elif name == f"{PREFIX}generations_in_flight":
                values["in_flight"] += value
            elif name.startswith(PREFIX) and "held" in name and not name.endswith("_created"):
                held = (held or 0.0) + value
            elif name == f"{PREFIX}time_to_first_token_seconds_bucket":
                bound = float(labels["le"])
                buckets[bound] = buckets.get(bound, 0.0) + value
    return Snapshot(at=at, held=held, ttft_buckets=buckets, **values)


def quantile(buckets: dict[float, float], q: float) -> float | None:
    """The bucket upper bound below which a share `q` of the observations lie (None: none observed)."""
    ordered = sorted(buckets.items())
    total = ordered[-1][1] if ordered else 0.0
    if total <= 0:
        return None
    for bound, count in ordered:
        if count >= q * total:
            return bound
    return ordered[-1][0]


def view(before: Snapshot, now: Snapshot, url: str) -> Table:
    """One screen: totals, rates over the last interval, TTFT percentiles."""
    seconds = max(now.at - before.at, 1e-9)
    recent = {b: c - before.ttft_buckets.get(b, 0.0) for b, c in now.ttft_buckets.items()}
    table = Table(title=f"tritonform gateway {url}", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")

    def seconds_text(value: float | None) -> str:
        return "-" if value is None else ("> last bucket" if value == float("inf") else f"{value:g} s")

    rows = [
        ("requests", f"{now.requests:,.0f} ({(now.requests - before.requests) / seconds:.1f}/s)"),
        ("errors (5xx)", f"{now.errors:,.0f} ({(now.errors - before.errors) / seconds:.1f}/s)"),
        ("tokens/s", f"{(now.completion_tokens - before.completion_tokens) / seconds:,.1f}"),
        ("tokens generated", f"{now.completion_tokens:,.0f}"),
        ("in flight", f"{now.in_flight:,.0f}"),
        ("held", "-" if now.held is None else f"{now.held:,.0f}"),
        ("TTFT p50 / p95 (interval)", f"{seconds_text(quantile(recent, 0.5))} / "
         f"{seconds_text(quantile(recent, 0.95))}"),
        ("TTFT p50 / p95 (since start)", f"{seconds_text(quantile(now.ttft_buckets, 0.5))} / "
         f"{seconds_text(quantile(now.ttft_buckets, 0.95))}"),
    ]  # fmt: skip
    for name, value in rows:
        table.add_row(name, value)
    return table


def scrape(url: str, timeout: float = 5.0) -> Snapshot:
    import httpx

    response = httpx.get(url.rstrip("/") + "/metrics", timeout=timeout)
    response.raise_for_status()
    return parse(response.text, time.monotonic())


def top(
    url: Annotated[
        str, typer.Option("--url", help="The gateway's base URL (its /metrics is read).")
    ] = "http://127.0.0.1:8000",
    interval: Annotated[float, typer.Option("--interval", help="Seconds between scrapes.", min=0.2)] = 2.0,
    once: Annotated[bool, typer.Option("--once", help="Print one view after one interval and exit.")] = False,
) -> None:
    """Watch a running gateway live: requests, errors, tokens/s, time to first token, requests in flight
    and held, from its Prometheus metrics. Ctrl-C stops it."""
    import httpx
    from rich.live import Live

    console = Console()
    try:
        before = scrape(url)
        time.sleep(interval)
        now = scrape(url)
        if once:
            console.print(view(before, now, url))
            return
        with Live(view(before, now, url), console=console, refresh_per_second=4) as live:
            while True:
                time.sleep(interval)
                before, now = now, scrape(url)
                live.update(view(before, now, url))
    except httpx.HTTPError as exc:
        Console(stderr=True).print(
            f"[red]error:[/] cannot read {url}/metrics ({exc}); is the gateway running?"
        )
        raise typer.Exit(2) from None
    except KeyboardInterrupt:
        return


def register(app: typer.Typer) -> None:
    app.command("top")(top)
