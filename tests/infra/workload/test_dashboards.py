"""Grafana dashboards as code: every stack installs Grafana (its data source: the stack's Prometheus) and
the gateway, Triton and GPU dashboards as ConfigMaps its sidecar loads; every panel's PromQL and every
alert rule's parses with a PromQL parser (promql-parser, Prometheus' grammar) and reads only series that
the gateway, Triton or DCGM export (the gateway's and Triton's are checked against the real exporters in
test_the_gateway_exports_every_series_the_dashboards_read and tests/model_repo/test_triton_serving.py)."""

from __future__ import annotations

import json
from collections.abc import Callable

import promql_parser
import pytest

from infra.offline import Plan
from infra.workload.dashboards import (
    DASHBOARD_LABEL,
    EXPORTED_METRICS,
    PROMETHEUS_UID,
    dashboards,
    panel_queries,
)
from infra.workload.gpu_observability import alert_rules
from infra.workload.monitoring import MONITORING_NAMESPACE, PROMETHEUS_URL
from serving.gateway.holding import ColdStartHold
from serving.gateway.observability import GatewayMetrics

PlanOf = Callable[[str], Plan]
EXPORTED = frozenset().union(*EXPORTED_METRICS.values())


def series_read(expr: str) -> set[str]:
    """The metric names an expression selects; ValueError (the parser's message) if it is not PromQL."""
    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector):
            names.add(str(node.name))
        return True

    promql_parser.walk(promql_parser.parse(expr), visit)
    return names


@pytest.mark.parametrize("stack", ["aws-dev", "gcp-prod", "azure-dev"])
def test_grafana_and_the_dashboards_are_provisioned(stack: str, serving_plan_of: PlanOf) -> None:
    plan = serving_plan_of(stack)
    (grafana,) = [
        r.inputs for r in plan.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "grafana"
    ]
    assert grafana["version"] == plan.settings.addons.grafana_version
    assert grafana["namespace"] == MONITORING_NAMESPACE
    (source,) = grafana["values"]["datasources"]["datasources.yaml"]["datasources"]
    assert (source["uid"], source["url"], source["type"]) == (PROMETHEUS_UID, PROMETHEUS_URL, "prometheus")
    sidecar = grafana["values"]["sidecar"]["dashboards"]
    assert sidecar["enabled"] and (sidecar["label"], sidecar["labelValue"]) == (DASHBOARD_LABEL, "1")

    maps = [
        r.inputs
        for r in plan.of_type("kubernetes:core/v1:ConfigMap")
        if r.inputs["metadata"].get("labels", {}).get(DASHBOARD_LABEL) == "1"
    ]
    assert {m["metadata"]["namespace"] for m in maps} == {sidecar["searchNamespace"]}
    loaded = {
        uid: json.loads(text) for m in maps for uid, text in ((k[:-5], v) for k, v in m["data"].items())
    }
    assert loaded == dashboards()
    assert set(loaded) == {"tritonform-gateway", "tritonform-triton", "tritonform-gpus"}


def test_every_panel_reads_series_its_exporters_publish() -> None:
    """Each panel has a title, a unit and queries on the Prometheus data source; each query parses and
    selects only exported series; each exporter's series are shown somewhere."""
    shown: set[str] = set()
    for uid, model in dashboards().items():
        assert model["uid"] == uid and model["panels"], uid
        for panel in model["panels"]:
            assert (
                panel["type"] == "timeseries" and panel["title"] and panel["fieldConfig"]["defaults"]["unit"]
            )
            assert panel["datasource"]["uid"] == PROMETHEUS_UID
            assert panel["targets"], panel["title"]
        for title, expr in panel_queries(model):
            names = series_read(expr)
            assert names and names <= EXPORTED, (uid, title, sorted(names - EXPORTED))
            shown |= names
    assert EXPORTED - shown == set(), "exported series no panel shows"


def test_every_alert_rule_parses_and_reads_exported_series(plan_of: PlanOf) -> None:
    rules = alert_rules(plan_of("aws-prod").settings)
    for group in rules["groups"]:
        for rule in group["rules"]:
            names = series_read(rule["expr"])
            assert names and names <= EXPORTED, (rule["alert"], sorted(names - EXPORTED))


def test_the_parser_rejects_what_is_not_promql() -> None:
    """The check is a real parser: a broken expression is an error naming the problem."""
    with pytest.raises(ValueError, match="unclosed left parenthesis"):
        series_read("sum(rate(tritonform_gateway_requests_total[5m])")
    assert series_read('sum by (le) (rate(a_bucket{x="1"}[5m])) / b') == {"a_bucket", "b"}


def test_the_gateway_exports_every_series_the_dashboards_read() -> None:
    """The gateway's registry (with its cold-start hold, as the app builds it) exports every gateway
    series in EXPORTED_METRICS (counters gain `_total`, histograms `_bucket`)."""
    from prometheus_client import generate_latest

    metrics = GatewayMetrics()
    ColdStartHold(30.0, 8, metrics.registry)
    metrics.requests.labels("chat", "200").inc()
    metrics.latency.labels("chat").observe(0.2)
    metrics.ttft.labels("chat").observe(0.1)
    metrics.triton_errors.labels("503").inc()
    exported = {
        line.split("{")[0].split(" ")[0]
        for line in generate_latest(metrics.registry).decode().splitlines()
        if line and not line.startswith("#")
    }
    assert EXPORTED_METRICS["gateway"] <= exported, sorted(EXPORTED_METRICS["gateway"] - exported)
