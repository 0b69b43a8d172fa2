"""Watch the GPUs and the service: NVIDIA's DCGM exporter on the GPU pool, and Prometheus alert rules.

- `DcgmExporter`: the `dcgm-exporter` Helm chart (NVIDIA, version `addons.dcgmExporterVersion`) as a
  DaemonSet on the GPU nodes only (the pool's node selector and tolerations, as Triton's pods), its pods
  annotated for the Prometheus the stack runs (the chart's ServiceMonitor needs the Prometheus operator,
  which this stack does not install, so it is off). Where the node keeps the driver outside any container
  runtime (GKE's COS: `GpuScheduling.driver_host_path`), the exporter mounts it (`driver_values`). GKE's
  managed DCGM metrics are not used: they go to Cloud Monitoring, not to the stack's Prometheus that the
  alert rules and dashboards read, and they are not offered on the other clouds.
- `alert_rules()`: the rule groups Prometheus loads (`serverFiles.alerting_rules.yml` of its chart): the
  gateway's error ratio and time to first token, requests queued in Triton, GPU memory nearly full.
  `check_rules` validates their structure (the Prometheus rule-file format) and that every metric they
  read is one the gateway, Triton or DCGM export.
"""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pulumi_kubernetes as k8s

from infra.platform.base import GpuScheduling
from infra.settings import StackSettings
from infra.workload.dashboards import EXPORTED_METRICS

DCGM_REPO = "https://nvidia.github.io/dcgm-exporter/helm-charts"
DCGM_PORT = 9400

# Metrics the rules may read: what the gateway, Triton and DCGM export (one inventory with the dashboards).
KNOWN_METRICS = frozenset().union(*EXPORTED_METRICS.values())
_SEVERITIES = frozenset({"warning", "critical"})
_DURATION = re.compile(r"^[0-9]+[smh]$")
_METRIC = re.compile(r"\b(tritonform_[a-z_]+|nv_[a-z_]+|DCGM_FI_[A-Z_]+)\b")


def alert_rules(settings: StackSettings) -> dict[str, Any]:
    """The stack's alert rules as a Prometheus rule file (`groups:`)."""
    ttft_slo = 2.0
    queue_per_replica = settings.triton.target_inflight_requests * 2
    return {
        "groups": [
            {
                "name": "tritonform-gateway",
                "rules": [
                    {
                        "alert": "GatewayErrorRatioHigh",
                        "expr": (
                            'sum(rate(tritonform_gateway_requests_total{status=~"5.."}[5m]))'
                            " / clamp_min(sum(rate(tritonform_gateway_requests_total[5m])), 1e-9) > 0.05"
                        ),
                        "for": "5m",
                        "labels": {"severity": "critical"},
                        "annotations": {"summary": "More than 5% of gateway requests fail with 5xx"},
                    },
                    {
                        "alert": "GatewayTimeToFirstTokenP95High",
                        "expr": (
                            "histogram_quantile(0.95, sum by (le) "
                            f"(rate(tritonform_gateway_time_to_first_token_seconds_bucket[5m]))) > {ttft_slo}"
                        ),
                        "for": "10m",
                        "labels": {"severity": "warning"},
                        "annotations": {"summary": f"p95 time to first token above {ttft_slo:g}s"},
                    },
                ],
            },
            {
                "name": "tritonform-triton",
                "rules": [
                    {
                        "alert": "TritonQueueDeep",
                        "expr": f"max(nv_inference_pending_request_count) > {queue_per_replica}",
                        "for": "5m",
                        "labels": {"severity": "warning"},
                        "annotations": {
                            "summary": f"Requests wait in Triton's queue (> {queue_per_replica} on a "
                            "replica): add replicas or GPU nodes"
                        },
                    },
                ],
            },
            {
                "name": "tritonform-gpu",
                "rules": [
                    {
                        "alert": "GpuMemoryNearlyFull",
                        "expr": "max by (Hostname, gpu) (DCGM_FI_DEV_FB_USED / "
                        "(DCGM_FI_DEV_FB_USED + DCGM_FI_DEV_FB_FREE)) > 0.97",
                        "for": "10m",
                        "labels": {"severity": "warning"},
                        "annotations": {"summary": "A GPU's memory is over 97% used"},
                    },
                ],
            },
        ]
    }


def _balanced(expr: str) -> bool:
    depth = 0
    for char in expr:
        depth += {"(": 1, ")": -1, "[": 1, "]": -1, "{": 1, "}": -1}.get(char, 0)
        if depth < 0:
            return False
    return depth == 0


def check_rules(document: dict[str, Any]) -> list[str]:
    """Problems in a rule file (empty when valid): the Prometheus rule-file structure (groups with unique
    names, each rule an `alert` with `expr`, a duration `for`, a severity label and a summary), balanced
    brackets in each expression, and only metrics the stack's exporters produce."""
    problems = []
    names = [group.get("name") for group in document.get("groups", [])]
    if not names or len(set(names)) != len(names):
        problems.append(f"groups need unique names, got {names}")
    for group in document.get("groups", []):
        for rule in group.get("rules", []):
            where = f"{group.get('name')}/{rule.get('alert')}"
            extra = set(rule) - {"alert", "expr", "for", "labels", "annotations", "keep_firing_for"}
            if not rule.get("alert") or not isinstance(rule.get("expr"), str) or extra:
                problems.append(f"{where}: needs alert and expr, no other keys than the rule format's")
                continue
            if not _DURATION.match(str(rule.get("for", ""))):
                problems.append(f"{where}: `for` must be a duration such as 5m")
            if rule.get("labels", {}).get("severity") not in _SEVERITIES:
                problems.append(f"{where}: labels.severity must be one of {sorted(_SEVERITIES)}")
            if not rule.get("annotations", {}).get("summary"):
                problems.append(f"{where}: annotations.summary is missing")
            if not _balanced(rule["expr"]):
                problems.append(f"{where}: unbalanced brackets in {rule['expr']!r}")
            unknown = set(_METRIC.findall(rule["expr"])) - KNOWN_METRICS
            if unknown:
                problems.append(f"{where}: reads metrics nothing exports: {sorted(unknown)}")
    return problems


DRIVER_MOUNT = "/usr/local/nvidia"  # where GKE's device plugin puts the driver in GPU containers too


def driver_values(host_path: str | None) -> dict[str, Any]:
    """The exporter's chart values that reach a driver kept on the node (`GpuScheduling.driver_host_path`,
    GKE's COS nodes): the folder mounted read-only where GKE's GPU containers see it, its libraries on
    the loader's path (NVML, which DCGM reads through), and the device files opened as GKE's own DCGM
    DaemonSet does (privileged: no container runtime hands them to a pod that requests no GPU)."""
    if host_path is None:
        return {}
    return {
        "extraHostVolumes": [{"name": "nvidia-driver", "hostPath": host_path}],
        "extraVolumeMounts": [{"name": "nvidia-driver", "mountPath": DRIVER_MOUNT, "readOnly": True}],
        "extraEnv": [
            {"name": "LD_LIBRARY_PATH", "value": f"{DRIVER_MOUNT}/lib64"},
        ],
        "securityContext": {"privileged": True, "runAsNonRoot": False, "runAsUser": 0},
    }


class DcgmExporter(pulumi.ComponentResource):
    """NVIDIA's DCGM exporter on every GPU node, scraped by the stack's Prometheus."""

    def __init__(
        self,
        name: str,
        settings: StackSettings,
        scheduling: GpuScheduling,
        namespace: str,
        opts: pulumi.ResourceOptions | None = None,
    ) -> None:
        super().__init__("tritonform:workload:DcgmExporter", name, None, opts)
        k8s.helm.v3.Release(
            "dcgm-exporter",
            name="dcgm-exporter",
            chart="dcgm-exporter",
            version=settings.addons.dcgm_exporter_version,
            namespace=namespace,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=DCGM_REPO),
            values={
                "serviceMonitor": {"enabled": False},  # no Prometheus operator: scraped by annotation
                "podAnnotations": {
                    "prometheus.io/scrape": "true",
                    "prometheus.io/port": str(DCGM_PORT),
                    "prometheus.io/path": "/metrics",
                },
                "nodeSelector": dict(scheduling.node_selector),
                "tolerations": [dict(t) for t in scheduling.tolerations],
                **driver_values(scheduling.driver_host_path),
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.register_outputs({})
