"""Prometheus and the Prometheus adapter: metrics scraping and the load metric Triton autoscales on."""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.settings import StackSettings

MONITORING_NAMESPACE = "monitoring"
CHARTS_REPO = "https://prometheus-community.github.io/helm-charts"


def _adapter_rules(metric: str) -> dict[str, object]:
    """Serve the gateway's in-flight gauge, summed over pods, as an external metric for the HPA."""
    return {
        "default": False,
        "external": [
            {
                "seriesQuery": metric,
                "resources": {"overrides": {"namespace": {"resource": "namespace"}}},
                "name": {"as": metric},
                "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            }
        ],
    }


class Monitoring(pulumi.ComponentResource):
    """A `monitoring` namespace: Prometheus (scrapes pods annotated prometheus.io/scrape) and its adapter."""

    def __init__(
        self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tritonform:workload:Monitoring", name, None, opts)
        from infra.workload.gpu_observability import alert_rules
        from infra.workload.triton import INFLIGHT_METRIC

        addons = settings.addons
        namespace = k8s.core.v1.Namespace(
            MONITORING_NAMESPACE,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=MONITORING_NAMESPACE),
            opts=pulumi.ResourceOptions(parent=self),
        )
        after_ns = pulumi.ResourceOptions(parent=self, depends_on=[namespace])
        prometheus = k8s.helm.v3.Release(
            "prometheus",
            name="prometheus",  # fixed, so the server's Service is prometheus-server
            chart="prometheus",
            version=addons.prometheus_version,
            namespace=MONITORING_NAMESPACE,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=CHARTS_REPO),
            values={
                "alertmanager": {"enabled": False},
                # Alerts show in Prometheus (no Alertmanager here): infra/workload/gpu_observability.py
                "serverFiles": {"alerting_rules.yml": alert_rules(settings)},
                "prometheus-pushgateway": {"enabled": False},
                "server": {
                    "retention": "7d",
                    "persistentVolume": {"size": "20Gi"},
                    "resources": {
                        "requests": {"cpu": "250m", "memory": "1Gi"},
                        "limits": {"cpu": "1", "memory": "2Gi"},
                    },
                },
            },
            opts=after_ns,
        )
        k8s.helm.v3.Release(
            "prometheus-adapter",
            name="prometheus-adapter",
            chart="prometheus-adapter",
            version=addons.prometheus_adapter_version,
            namespace=MONITORING_NAMESPACE,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=CHARTS_REPO),
            values={
                "prometheus": {"url": f"http://prometheus-server.{MONITORING_NAMESPACE}.svc", "port": 80},
                "rules": _adapter_rules(INFLIGHT_METRIC),
                "resources": {
                    "requests": {"cpu": "100m", "memory": "128Mi"},
                    "limits": {"cpu": "500m", "memory": "512Mi"},
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[prometheus]),
        )
        self.register_outputs({"namespace": MONITORING_NAMESPACE})
