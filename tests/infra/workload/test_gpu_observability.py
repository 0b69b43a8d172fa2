"""GPU metrics and alert rules: every stack installs NVIDIA's DCGM exporter on the GPU pool only (its
node selector and tolerations), scraped by annotation; Prometheus loads the alert rules (error ratio,
TTFT p95, Triton queue, GPU memory), which are valid rule files reading only metrics that exist."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from infra.offline import Plan
from infra.workload.gpu_observability import alert_rules, check_rules

PlanOf = Callable[[str], Plan]


@pytest.mark.parametrize("stack", ["aws-dev", "gcp-prod", "azure-dev"])
def test_dcgm_exporter_runs_on_the_gpu_pool_and_prometheus_loads_the_rules(
    stack: str, serving_plan_of: PlanOf
) -> None:
    plan = serving_plan_of(stack)
    releases = {r.inputs["name"]: r.inputs for r in plan.of_type("kubernetes:helm.sh/v3:Release")}
    dcgm = releases["dcgm-exporter"]
    assert dcgm["version"] == plan.settings.addons.dcgm_exporter_version
    assert dcgm["values"]["nodeSelector"] == plan.outputs["gpu_node_selector"]
    assert dcgm["values"]["tolerations"] == plan.outputs["gpu_tolerations"]
    assert dcgm["values"]["podAnnotations"]["prometheus.io/scrape"] == "true"
    rules = releases["prometheus"]["values"]["serverFiles"]["alerting_rules.yml"]
    assert rules == alert_rules(plan.settings) and check_rules(rules) == []
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"]}
    assert alerts == {"GatewayErrorRatioHigh", "GatewayTimeToFirstTokenP95High", "TritonQueueDeep",
                      "GpuMemoryNearlyFull"}  # fmt: skip


def test_rule_checks_name_what_is_wrong() -> None:
    bad = {
        "groups": [
            {
                "name": "g",
                "rules": [{"alert": "A", "expr": "rate(nope_total[5m]", "for": "soon", "labels": {}}],
            },
            {"name": "g", "rules": [{"alert": "B", "expr": "up", "record": "x"}]},
        ]
    }
    problems = "\n".join(check_rules(bad))
    assert "unique names" in problems and "`for` must be a duration" in problems
    assert "labels.severity" in problems and "summary is missing" in problems
    assert "unbalanced brackets" in problems and "g/B: needs alert and expr" in problems


@pytest.mark.parametrize("stack", ["gcp-prod", "aws-dev", "azure-dev"])
def test_the_exporter_reaches_the_driver_where_the_node_keeps_it(stack: str, serving_plan_of: PlanOf) -> None:
    """GKE's COS nodes keep the driver under /home/kubernetes/bin/nvidia and no container runtime hands it
    to a pod that requests no GPU: there the exporter mounts it where GKE's GPU containers see it, puts
    its libraries (NVML) on the loader's path and opens the devices privileged. EKS and AKS nodes run
    NVIDIA's container runtime, which does this itself: nothing extra there."""
    plan = serving_plan_of(stack)
    (dcgm,) = [
        r.inputs for r in plan.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["name"] == "dcgm-exporter"
    ]
    values = dcgm["values"]
    if not stack.startswith("gcp"):
        assert not {"extraHostVolumes", "extraVolumeMounts", "extraEnv", "securityContext"} & set(values)
        return
    assert values["extraHostVolumes"] == [
        {"name": "nvidia-driver", "hostPath": "/home/kubernetes/bin/nvidia"}
    ]
    assert values["extraVolumeMounts"] == [
        {"name": "nvidia-driver", "mountPath": "/usr/local/nvidia", "readOnly": True}
    ]
    assert {"name": "LD_LIBRARY_PATH", "value": "/usr/local/nvidia/lib64"} in values["extraEnv"]
    assert values["securityContext"]["privileged"] is True
