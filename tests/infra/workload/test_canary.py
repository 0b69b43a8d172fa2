"""A canary rollout on the cluster (issue 18): the canary's own Triton Deployment pinned to its version, the
gateway's split and rollback settings, its least-privilege access to the decision ConfigMap; every cloud's
canary stack renders strictly and passes the mandatory policies."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from infra.offline import Plan
from infra.policies.offline import evaluate, mandatory_violations
from infra.settings import SettingsError, load_settings
from tests.infra.conftest import MODEL_VERSION, planned, with_model_version
from tests.infra.workload.test_workload import _containers, _k8s
from tritonform.cli import app

CANARY_VERSION = "20261202T080000Z-abcdef012345"


def canary_stack(stack: str, folder: Path, **canary: Any) -> Path:
    path = with_model_version(stack, folder)
    document = yaml.safe_load(path.read_text())
    document["config"]["tritonform:canary"] = {"version": CANARY_VERSION, "weight": 20, **canary}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    return path


def _init(deployment: dict[str, Any]) -> dict[str, list[str]]:
    return {c["name"]: c["args"] for c in deployment["spec"]["template"]["spec"]["initContainers"]}


def test_the_canary_runs_in_its_own_deployment_pinned_to_its_version(tmp_path: Path) -> None:
    plan = planned(canary_stack("aws-dev", tmp_path, replicas=2, windowSeconds=120))
    stable, canary = _k8s(plan, "Deployment", "triton"), _k8s(plan, "Deployment", "triton-canary")
    assert (
        MODEL_VERSION in _init(stable)["model-locator"]
        and CANARY_VERSION not in _init(stable)["model-locator"]
    )
    assert CANARY_VERSION in _init(canary)["model-locator"]
    assert canary["spec"]["replicas"] == 2
    assert canary["spec"]["selector"]["matchLabels"] == {"app.kubernetes.io/name": "triton-canary"}
    assert "nvidia.com/gpu" in str(canary["spec"]["template"]["spec"]["containers"][0]["resources"])
    pods = _k8s(plan, "Service", "triton-canary-pods")["spec"]
    assert pods["clusterIP"] == "None" and pods["selector"] == {"app.kubernetes.io/name": "triton-canary"}
    # the stable Service and discovery name never list the canary's pods; KEDA scales the stable one only
    assert _k8s(plan, "Service", "triton-pods")["spec"]["selector"] == {"app.kubernetes.io/name": "triton"}
    assert _k8s(plan, "ScaledObject", "triton")
    assert not [r for r in plan.resources if r.type.endswith(":ScaledObject") and "canary" in r.name]
    _k8s(plan, "PodDisruptionBudget", "triton-canary")


def test_the_gateway_knows_both_versions_and_its_rollback_margins(tmp_path: Path) -> None:
    plan = planned(canary_stack("gcp-dev", tmp_path, minRequests=50, maxErrorRatioIncrease=0.05))
    gateway = _k8s(plan, "Deployment", "gateway")
    (container,) = _containers(gateway)
    env = {e["name"]: e.get("value") for e in container["env"]}
    namespace = plan.settings.workload.namespace
    assert env["TRITONFORM_GATEWAY_CANARY_TRITON_DISCOVERY"] == f"triton-canary-pods.{namespace}.svc:8001"
    assert env["TRITONFORM_GATEWAY_CANARY_WEIGHT"] == "20"
    assert env["TRITONFORM_GATEWAY_STABLE_VERSION"] == MODEL_VERSION
    assert env["TRITONFORM_GATEWAY_CANARY_VERSION"] == CANARY_VERSION
    assert env["TRITONFORM_GATEWAY_CANARY_MIN_REQUESTS"] == "50"
    assert env["TRITONFORM_GATEWAY_CANARY_MAX_ERROR_RATIO_INCREASE"] == "0.05"
    assert env["TRITONFORM_GATEWAY_CANARY_DECISION_CONFIGMAP"] == "tritonform-canary"
    # the canary's tokenizer, fetched by a second locator step into the path the gateway reads
    init = _init(gateway)
    assert CANARY_VERSION in init["canary-model-locator"]
    assert env["TRITONFORM_GATEWAY_CANARY_TOKENIZER_DIR"] in init["canary-model-locator"]
    # a projected, expiring API token; the pod still mounts no default token
    spec = gateway["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    (token,) = [v for v in spec["volumes"] if v["name"] == "kube-api-access"]
    assert token["projected"]["sources"][0]["serviceAccountToken"]["expirationSeconds"] == 3600


def test_the_gateway_may_get_and_patch_the_decision_configmap_and_nothing_else(tmp_path: Path) -> None:
    plan = planned(canary_stack("azure-dev", tmp_path))
    (rule,) = _k8s(plan, "Role", "gateway-canary-decision")["rules"]
    assert rule == {
        "apiGroups": [""],
        "resources": ["configmaps"],
        "resourceNames": ["tritonform-canary"],
        "verbs": ["get", "patch"],
    }
    binding = _k8s(plan, "RoleBinding", "gateway-canary-decision")
    assert binding["subjects"][0]["name"] == plan.settings.workload.gateway_service_account
    assert _k8s(plan, "ConfigMap", "tritonform-canary")["data"] == {}
    to_canary = _k8s(plan, "NetworkPolicy", "triton-canary-from-gateway")["spec"]
    assert to_canary["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "triton-canary"}}


def test_without_a_canary_nothing_of_it_is_planned(tmp_path: Path) -> None:
    plan = planned(with_model_version("aws-dev", tmp_path))
    assert not [r for r in plan.resources if "canary" in r.name]


@pytest.mark.parametrize(
    ("canary", "message"),
    [
        ({"version": MODEL_VERSION}, "already the stable"),
        ({"version": "latest"}, "must be a version"),
        ({"version": CANARY_VERSION, "weight": 100}, "less than or equal to 99"),
    ],
)
def test_bad_canary_settings_name_the_key(canary: dict[str, Any], message: str) -> None:
    config = {
        "cloud": "aws",
        "region": "us-east-1",
        "gpuPool": {"instanceType": "g5.xlarge"},
        "triton": {"modelVersion": MODEL_VERSION},
        "canary": canary,
    }
    with pytest.raises(SettingsError, match=message):
        load_settings(config)


def test_a_canary_without_a_stable_version_is_refused() -> None:
    config = {
        "cloud": "aws",
        "region": "us-east-1",
        "gpuPool": {"instanceType": "g5.xlarge"},
        "canary": {"version": CANARY_VERSION},
    }
    with pytest.raises(SettingsError, match="upload the first version without --canary"):
        load_settings(config)


@pytest.mark.parametrize("stack", ["aws-dev", "gcp-dev", "azure-dev", "aws-prod", "gcp-prod", "azure-prod"])
def test_a_canary_stack_renders_strictly_and_passes_the_mandatory_policies(
    stack: str, tmp_path: Path
) -> None:
    path = canary_stack(stack, tmp_path)
    out = tmp_path / "manifests"
    result = CliRunner().invoke(app, ["render", "--stack-file", str(path), "--out", str(out)])
    assert result.exit_code == 0, result.output
    kinds = {
        (d["kind"], d["metadata"]["name"])
        for d in (yaml.safe_load(p.read_text()) for p in out.glob("0*.yaml"))
    }
    assert {
        ("Deployment", "triton-canary"),
        ("Role", "gateway-canary-decision"),
        ("ConfigMap", "tritonform-canary"),
    } <= kinds
    plan: Plan = planned(path)
    results = evaluate(plan)
    assert mandatory_violations(results) == [], "\n".join(
        f"{r.rule} {r.resource}: {r.message}" for r in results
    )
