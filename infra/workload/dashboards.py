"""Grafana dashboards as code: the gateway, Triton and the GPUs, built with grafana-foundation-sdk.

Each dashboard is a Grafana JSON model (`dashboards()`); `Dashboards` puts them into ConfigMaps labelled
for the Grafana chart's dashboard sidecar (`sidecar.dashboards.label`), which loads every ConfigMap so
labelled in the monitoring namespace. Grafana itself (chart `grafana`, version `addons.grafanaVersion`) is
installed by `Monitoring` (monitoring.py) with the stack's Prometheus as its one data source, uid
PROMETHEUS_UID, which every panel names.

Every panel reads only metrics in EXPORTED_METRICS (the gateway's, Triton's, DCGM's); the tests parse each
panel's PromQL (and the alert rules') with a PromQL parser and check the names against the real
exporters: the gateway's registry, a running Triton, the DCGM exporter's default counters.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

PROMETHEUS_UID = "prometheus"
DASHBOARD_LABEL = "grafana_dashboard"  # the sidecar's label; its value must be "1"
_RATE = "[5m]"

# What each exporter publishes that a panel or alert rule may read (series names as Prometheus stores
# them: counters with `_total`, histograms with `_bucket`).
EXPORTED_METRICS: dict[str, frozenset[str]] = {
    # serving/gateway/observability.py and holding.py
    "gateway": frozenset(
        {
            "tritonform_gateway_requests_total",
            "tritonform_gateway_request_seconds_bucket",
            "tritonform_gateway_time_to_first_token_seconds_bucket",
            "tritonform_gateway_completion_tokens_total",
            "tritonform_gateway_prompt_tokens_total",
            "tritonform_gateway_generations_in_flight",
            "tritonform_gateway_requests_held",
            "tritonform_gateway_triton_errors_total",
        }
    ),
    # Triton's per-model inference metrics (port 8002, every backend)
    "triton": frozenset(
        {
            "nv_inference_request_success",
            "nv_inference_request_failure",
            "nv_inference_count",
            "nv_inference_exec_count",
            "nv_inference_queue_duration_us",
            "nv_inference_compute_infer_duration_us",
            "nv_inference_pending_request_count",
        }
    ),
    # dcgm-exporter's default counters (etc/default-counters.csv)
    "dcgm": frozenset(
        {
            "DCGM_FI_DEV_GPU_UTIL",
            "DCGM_FI_DEV_MEM_COPY_UTIL",
            "DCGM_FI_DEV_FB_USED",
            "DCGM_FI_DEV_FB_FREE",
            "DCGM_FI_DEV_POWER_USAGE",
            "DCGM_FI_DEV_GPU_TEMP",
        }
    ),
}


@dataclass(frozen=True)
class PanelSpec:
    """One time-series panel: its PromQL queries as (expression, legend) pairs."""

    title: str
    description: str
    unit: str
    queries: tuple[tuple[str, str], ...]


def _quantile(q: float, metric: str, by: str = "le") -> str:
    return f"histogram_quantile({q}, sum by ({by}) (rate({metric}{_RATE})))"


def _per_second(metric: str, by: str = "") -> str:
    grouping = f" by ({by})" if by else ""
    return f"sum{grouping} (rate({metric}{_RATE}))"


def _ratio(numerator: str, denominator: str) -> str:
    return f"{numerator} / clamp_min({denominator}, 1e-9)"


GATEWAY_PANELS = (
    PanelSpec(
        "Requests",
        "HTTP requests per second by route",
        "reqps",
        ((_per_second("tritonform_gateway_requests_total", "route"), "{{route}}"),),
    ),
    PanelSpec(
        "5xx ratio",
        "Share of requests answered with a server error (alert above 5%)",
        "percentunit",
        (
            (
                _ratio(
                    'sum(rate(tritonform_gateway_requests_total{status=~"5.."}[5m]))',
                    _per_second("tritonform_gateway_requests_total"),
                ),
                "5xx",
            ),
        ),
    ),
    PanelSpec(
        "Time to first token",
        "p50 and p95 from request to the first generated text",
        "s",
        (
            (_quantile(0.5, "tritonform_gateway_time_to_first_token_seconds_bucket"), "p50"),
            (_quantile(0.95, "tritonform_gateway_time_to_first_token_seconds_bucket"), "p95"),
        ),
    ),
    PanelSpec(
        "Request latency p95",
        "Whole request (streams: until the last byte), by route",
        "s",
        ((_quantile(0.95, "tritonform_gateway_request_seconds_bucket", "le, route"), "{{route}}"),),
    ),
    PanelSpec(
        "Tokens per second",
        "Generated and prompt tokens over all gateway replicas",
        "short",
        (
            (_per_second("tritonform_gateway_completion_tokens_total"), "generated"),
            (_per_second("tritonform_gateway_prompt_tokens_total"), "prompt"),
        ),
    ),
    PanelSpec(
        "In flight and held",
        "Generations running, and requests held while Triton scales up from zero",
        "short",
        (
            ("sum(tritonform_gateway_generations_in_flight)", "in flight"),
            ("sum(tritonform_gateway_requests_held)", "held"),
        ),
    ),
    PanelSpec(
        "Triton errors",
        "Failed calls from the gateway to Triton, by the status answered",
        "reqps",
        ((_per_second("tritonform_gateway_triton_errors_total", "status"), "{{status}}"),),
    ),
)

TRITON_PANELS = (
    PanelSpec(
        "Inference requests",
        "Successful and failed requests per second, by model",
        "reqps",
        (
            (_per_second("nv_inference_request_success", "model"), "{{model}} ok"),
            (_per_second("nv_inference_request_failure", "model"), "{{model}} failed"),
        ),
    ),
    PanelSpec(
        "Queue time per request",
        "Average time a request waits in Triton's queue before its model takes it",
        "µs",
        (
            (
                _ratio(
                    _per_second("nv_inference_queue_duration_us"), _per_second("nv_inference_request_success")
                ),
                "queue",
            ),
        ),
    ),
    PanelSpec(
        "Pending requests",
        "Requests queued in each Triton replica (alert above 2x triton.targetInflightRequests)",
        "short",
        (("sum by (pod) (nv_inference_pending_request_count)", "{{pod}}"),),
    ),
    PanelSpec(
        "Compute time per execution",
        "Average time of one model execution",
        "µs",
        (
            (
                _ratio(
                    _per_second("nv_inference_compute_infer_duration_us"),
                    _per_second("nv_inference_exec_count"),
                ),
                "compute",
            ),
        ),
    ),
    PanelSpec(
        "Requests per execution",
        "Inferences per model execution: how much Triton's scheduler batches",
        "short",
        ((_ratio(_per_second("nv_inference_count"), _per_second("nv_inference_exec_count")), "batch"),),
    ),
)

GPU_PANELS = (
    PanelSpec(
        "GPU utilisation",
        "Time a kernel ran, per GPU",
        "percent",
        (("avg by (Hostname, gpu) (DCGM_FI_DEV_GPU_UTIL)", "{{Hostname}} gpu {{gpu}}"),),
    ),
    PanelSpec(
        "GPU memory used",
        "Framebuffer in use per GPU (alert above 97%)",
        "percentunit",
        (
            (
                "max by (Hostname, gpu) (DCGM_FI_DEV_FB_USED / (DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE))",
                "{{Hostname}} gpu {{gpu}}",
            ),
        ),
    ),
    PanelSpec(
        "Memory bandwidth utilisation",
        "Time the memory was being read or written: decode is bound by it",
        "percent",
        (("avg by (Hostname, gpu) (DCGM_FI_DEV_MEM_COPY_UTIL)", "{{Hostname}} gpu {{gpu}}"),),
    ),
    PanelSpec(
        "Power",
        "Power draw per GPU",
        "watt",
        (("avg by (Hostname, gpu) (DCGM_FI_DEV_POWER_USAGE)", "{{Hostname}} gpu {{gpu}}"),),
    ),
    PanelSpec(
        "Temperature",
        "GPU temperature",
        "celsius",
        (("max by (Hostname, gpu) (DCGM_FI_DEV_GPU_TEMP)", "{{Hostname}} gpu {{gpu}}"),),
    ),
)

DASHBOARDS: dict[str, tuple[str, tuple[PanelSpec, ...]]] = {
    "tritonform-gateway": ("tritonform: gateway", GATEWAY_PANELS),
    "tritonform-triton": ("tritonform: Triton", TRITON_PANELS),
    "tritonform-gpus": ("tritonform: GPUs", GPU_PANELS),
}


def _dashboard(uid: str, title: str, panels: tuple[PanelSpec, ...]) -> dict[str, Any]:
    from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models.dashboard import DataSourceRef

    source = DataSourceRef(type_val="prometheus", uid=PROMETHEUS_UID)
    board = (
        dashboard.Dashboard(title)
        .uid(uid)
        .tags(["tritonform"])
        .refresh("30s")
        .time("now-3h", "now")
        .timezone("browser")
        .readonly()
    )
    for spec in panels:
        panel = (
            timeseries.Panel()
            .title(spec.title)
            .description(spec.description)
            .unit(spec.unit)
            .datasource(source)
            .height(8)
            .span(12)
        )
        for ref, (expr, legend) in zip("ABCDEFGH", spec.queries, strict=False):
            panel = panel.with_target(
                prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref).datasource(source)
            )
        board = board.with_panel(panel)
    model: dict[str, Any] = json.loads(JSONEncoder(sort_keys=True).encode(board.build()))
    return model


def dashboards() -> dict[str, dict[str, Any]]:
    """Every dashboard's Grafana JSON model, by uid."""
    return {uid: _dashboard(uid, title, panels) for uid, (title, panels) in DASHBOARDS.items()}


def panel_queries(model: dict[str, Any]) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query of a dashboard's JSON model."""
    return [(p["title"], t["expr"]) for p in model.get("panels", []) for t in p.get("targets", [])]


class Dashboards(pulumi.ComponentResource):
    """The dashboards as ConfigMaps in `namespace`, labelled for the Grafana chart's sidecar."""

    def __init__(self, name: str, namespace: str, opts: pulumi.ResourceOptions | None = None) -> None:
        super().__init__("tritonform:workload:Dashboards", name, None, opts)
        for uid, model in dashboards().items():
            k8s.core.v1.ConfigMap(
                f"dashboard-{uid}",
                metadata=k8s.meta.v1.ObjectMetaArgs(
                    name=f"dashboard-{uid}",
                    namespace=namespace,
                    labels={DASHBOARD_LABEL: "1", "app.kubernetes.io/part-of": "tritonform"},
                ),
                data={f"{uid}.json": json.dumps(model, indent=2, sort_keys=True)},
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.register_outputs({})
