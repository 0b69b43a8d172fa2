"""Prometheus, Grafana and KEDA: metrics scraping, the dashboards, and the autoscaler that scales Triton on
the metrics (down to zero).

KEDA replaces prometheus-adapter (retired upstream in favour of KEDA): its Prometheus scaler reads the
gateway's generations in flight plus held requests, summed over every gateway pod, and drives Triton's
Deployment between `triton.minReplicas` (0 allowed) and `maxReplicas` (see infra/workload/triton.py).
"""

from __future__ import annotations

import pulumi
import pulumi_kubernetes as k8s

from infra.settings import StackSettings

MONITORING_NAMESPACE = "monitoring"
CHARTS_REPO = "https://prometheus-community.github.io/helm-charts"
KEDA_NAMESPACE = "keda"
KEDA_CHARTS_REPO = "https://kedacore.github.io/charts"
# The grafana chart moved to the community repository in 2026 (grafana/helm-charts#4087); the old
# grafana.github.io repository is frozen at chart 10.5.15 and marked deprecated.
GRAFANA_CHARTS_REPO = "https://grafana-community.github.io/helm-charts"
# Where KEDA's Prometheus scaler queries (the prometheus chart's server Service, port 80).
PROMETHEUS_URL = f"http://prometheus-server.{MONITORING_NAMESPACE}.svc"


def grafana_chart_values() -> dict[str, object]:
    """Grafana with the stack's Prometheus as its data source (uid PROMETHEUS_UID, which the dashboards
    name) and the sidecar that loads every ConfigMap labelled DASHBOARD_LABEL in the monitoring namespace.
    Reached with `kubectl -n monitoring port-forward svc/grafana 3000:80`; the chart keeps the admin
    password in the `grafana` Secret."""
    from infra.workload.dashboards import DASHBOARD_LABEL, PROMETHEUS_UID

    return {
        "datasources": {
            "datasources.yaml": {
                "apiVersion": 1,
                "datasources": [
                    {
                        "name": "Prometheus",
                        "type": "prometheus",
                        "uid": PROMETHEUS_UID,
                        "url": PROMETHEUS_URL,
                        "access": "proxy",
                        "isDefault": True,
                    }
                ],
            }
        },
        "sidecar": {
            "dashboards": {
                "enabled": True,
                "label": DASHBOARD_LABEL,
                "labelValue": "1",
                "searchNamespace": MONITORING_NAMESPACE,
            }
        },
        "persistence": {"enabled": False},  # dashboards come from ConfigMaps, data from Prometheus
        "resources": {
            "requests": {"cpu": "100m", "memory": "256Mi"},
            "limits": {"cpu": "500m", "memory": "512Mi"},
        },
    }


class Monitoring(pulumi.ComponentResource):
    """A `monitoring` namespace with Prometheus (scrapes pods annotated prometheus.io/scrape), and KEDA in
    its own namespace. `self.keda` is the release ScaledObjects depend on (it installs their CRD)."""

    def __init__(
        self, name: str, settings: StackSettings, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("tritonform:workload:Monitoring", name, None, opts)
        from infra.workload.dashboards import Dashboards
        from infra.workload.gpu_observability import alert_rules

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
        grafana_values = grafana_chart_values()
        k8s.helm.v3.Release(
            "grafana",
            name="grafana",
            chart="grafana",
            version=addons.grafana_version,
            namespace=MONITORING_NAMESPACE,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=GRAFANA_CHARTS_REPO),
            values=grafana_values,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[prometheus]),
        )
        Dashboards("dashboards", MONITORING_NAMESPACE, opts=after_ns)
        keda_namespace = k8s.core.v1.Namespace(
            KEDA_NAMESPACE,
            metadata=k8s.meta.v1.ObjectMetaArgs(name=KEDA_NAMESPACE),
            opts=pulumi.ResourceOptions(parent=self),
        )
        self.keda = k8s.helm.v3.Release(
            "keda",
            name="keda",
            chart="keda",
            version=addons.keda_version,
            namespace=KEDA_NAMESPACE,
            repository_opts=k8s.helm.v3.RepositoryOptsArgs(repo=KEDA_CHARTS_REPO),
            values={
                "resources": {
                    "operator": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"cpu": "500m", "memory": "512Mi"},
                    },
                    "metricServer": {
                        "requests": {"cpu": "100m", "memory": "128Mi"},
                        "limits": {"cpu": "500m", "memory": "512Mi"},
                    },
                },
            },
            opts=pulumi.ResourceOptions(parent=self, depends_on=[prometheus, keda_namespace]),
        )
        self.register_outputs({"namespace": MONITORING_NAMESPACE})
