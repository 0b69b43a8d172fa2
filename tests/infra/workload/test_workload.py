"""The Kubernetes workload, through the real program: the same objects on every cloud, safe by default."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from infra.offline import Plan, PlannedResource
from tests.infra.conftest import MODEL_VERSION

PlanOf = Callable[[str], Plan]
DEV_STACKS = ["aws-dev", "gcp-dev", "azure-dev"]
STACKS = [*DEV_STACKS, "aws-prod", "gcp-prod", "azure-prod"]


def _k8s(plan: Plan, kind: str, name: str) -> dict[str, Any]:
    found = [
        r
        for r in plan.resources
        if r.type.endswith(f":{kind}")
        and r.type.startswith("kubernetes:")
        and (r.inputs.get("metadata") or {}).get("name") == name
    ]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0].inputs


def _containers(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return list(deployment["spec"]["template"]["spec"]["containers"])


@pytest.fixture(params=DEV_STACKS)
def plan(request: pytest.FixtureRequest, serving_plan_of: PlanOf) -> Plan:
    return serving_plan_of(request.param)


def test_same_workload_objects_on_every_cloud(serving_plan_of: PlanOf) -> None:
    def shape(p: Plan) -> set[tuple[str, str]]:
        return {
            (r.type, (r.inputs.get("metadata") or {}).get("name", r.name))
            for r in p.resources
            if r.type.startswith("kubernetes:") and r.parent and "workload" in r.parent
        }

    shapes = [shape(serving_plan_of(s)) for s in DEV_STACKS]
    assert shapes[0] and shapes[0] == shapes[1] == shapes[2]


def test_triton_reads_the_stack_bucket_and_lands_on_the_gpu_pool(plan: Plan) -> None:
    deployment = _k8s(plan, "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    (triton,) = _containers(deployment)
    (locator,) = pod["initContainers"]
    prefix = f"{plan.outputs['bucket_uri']}/{plan.settings.triton.model_prefix}"
    assert locator["command"] == ["python", "-m", "serving.model_locator"]
    assert locator["args"] == [
        "resolve",
        "--prefix",
        prefix,
        "--version",
        MODEL_VERSION,
        "--out",
        "/var/run/tritonform/repository",
    ]
    # Triton serves the version the stack names, read from the file the locator wrote after checking it.
    assert '--model-repository="$(cat /var/run/tritonform/repository)"' in triton["args"][0]
    assert triton["args"][0].startswith("exec tritonserver ")
    assert pod["nodeSelector"] == plan.outputs["gpu_node_selector"]
    for toleration in plan.outputs["gpu_tolerations"]:
        assert toleration in pod["tolerations"]
    assert triton["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert triton["resources"]["requests"]["nvidia.com/gpu"] == "1"
    assert pod["serviceAccountName"] == plan.settings.workload.triton_service_account


def test_triton_probes_ports_shm_and_spread(plan: Plan) -> None:
    deployment = _k8s(plan, "Deployment", "triton")
    pod = deployment["spec"]["template"]["spec"]
    (triton,) = _containers(deployment)
    assert triton["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert triton["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert {p["containerPort"] for p in triton["ports"]} == {8000, 8001, 8002}
    assert {"mountPath": "/dev/shm", "name": "dshm"} in triton["volumeMounts"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    }
    assert triton["securityContext"]["runAsNonRoot"] is True
    assert triton["securityContext"]["allowPrivilegeEscalation"] is False


def test_triton_service_account_carries_the_cloud_identity(plan: Plan) -> None:
    account = _k8s(plan, "ServiceAccount", plan.settings.workload.triton_service_account)
    annotations = account["metadata"].get("annotations") or {}
    assert annotations, "the Triton service account must be bound to the cloud's reader identity"
    assert all(v not in ("", "[unknown]") for v in annotations.values())


def test_every_container_has_requests_and_limits(plan: Plan) -> None:
    for name in ("triton", "gateway"):
        pod = _k8s(plan, "Deployment", name)["spec"]["template"]["spec"]
        for container in [*pod["containers"], *pod.get("initContainers", [])]:
            for section in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][section]), (name, section)


def test_gateway_api_keys_come_from_a_secret_file_never_the_environment(plan: Plan) -> None:
    deployment = _k8s(plan, "Deployment", "gateway")
    pod = deployment["spec"]["template"]["spec"]
    (gateway,) = _containers(deployment)
    env = {e["name"]: e for e in gateway["env"]}
    assert "TRITONFORM_API_KEYS" not in env and not any("secretKeyRef" in str(e) for e in env.values())
    assert env["TRITONFORM_GATEWAY_API_KEYS_FILE"]["value"] == "/var/run/secrets/tritonform/api-keys"
    (volume,) = [v for v in pod["volumes"] if v["name"] == "api-keys"]
    assert volume["secret"] == {"secretName": "gateway-api-keys", "defaultMode": 0o400}
    mount = {"name": "api-keys", "mountPath": "/var/run/secrets/tritonform", "readOnly": True}
    assert mount in gateway["volumeMounts"]
    secret = _k8s(plan, "Secret", "gateway-api-keys")
    assert secret["stringData"] == "[secret]"
    assert plan.outputs["api_key"] == "[secret]"


def test_gateway_reaches_triton_over_grpc_and_has_probes(plan: Plan) -> None:
    (gateway,) = _containers(_k8s(plan, "Deployment", "gateway"))
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["TRITONFORM_GATEWAY_TRITON_GRPC_URL"] == "triton:8001"
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert gateway["securityContext"]["readOnlyRootFilesystem"] is True


def test_gateway_takes_the_tokenizer_of_the_serving_version(plan: Plan) -> None:
    deployment = _k8s(plan, "Deployment", "gateway")
    pod = deployment["spec"]["template"]["spec"]
    (locator,) = pod["initContainers"]
    assert locator["args"][:1] == ["tokenizer"] and "/var/run/tritonform/model" in locator["args"]
    # The same version as Triton: pods never pick one on their own.
    assert locator["args"][locator["args"].index("--version") + 1] == MODEL_VERSION
    (gateway,) = _containers(deployment)
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["TRITONFORM_GATEWAY_TOKENIZER_DIR"] == "/var/run/tritonform/model"
    # It runs as its own account (its own cloud identity), not Triton's.
    assert pod["serviceAccountName"] == plan.settings.workload.gateway_service_account
    assert plan.settings.workload.gateway_service_account != plan.settings.workload.triton_service_account


def test_gateway_service_is_never_a_public_load_balancer(plan: Plan) -> None:
    service = _k8s(plan, "Service", "gateway")
    spec_type = service["spec"]["type"]
    annotations = service["metadata"].get("annotations") or {}
    if spec_type == "LoadBalancer":
        assert any("internal" in k or "internal" in str(v).lower() for k, v in annotations.items())
    assert _k8s(plan, "Service", "triton")["spec"]["type"] == "ClusterIP"


def test_both_deployments_have_disruption_budgets_and_autoscalers(plan: Plan) -> None:
    """Triton's replicas belong to a KEDA ScaledObject (KEDA makes the HPA), the gateway's to a CPU HPA."""
    for name in ("triton", "gateway"):
        pdb = _k8s(plan, "PodDisruptionBudget", name)
        assert pdb["spec"]["maxUnavailable"] == 1
    scaled = _k8s(plan, "ScaledObject", "triton")["spec"]
    t = plan.settings.triton
    assert (scaled["minReplicaCount"], scaled["maxReplicaCount"]) == (
        plan.settings.triton_min_replicas,
        t.max_replicas,
    )
    assert scaled["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "triton"}
    hpa = _k8s(plan, "HorizontalPodAutoscaler", "gateway")
    g = plan.settings.gateway
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (g.min_replicas, g.max_replicas)
    assert not [
        r for r in plan.resources if r.type.endswith(":HorizontalPodAutoscaler") and r.name == "triton"
    ]


@pytest.mark.parametrize("stack", ["aws-prod", "gcp-prod", "azure-prod"])
def test_prod_triton_keeps_a_replica_through_a_node_drain(serving_plan_of: PlanOf, stack: str) -> None:
    plan = serving_plan_of(stack)
    # Two replicas and at most one down at a time: a drain never takes the last one.
    assert _k8s(plan, "Deployment", "triton")["spec"]["replicas"] == 2
    assert _k8s(plan, "ScaledObject", "triton")["spec"]["minReplicaCount"] == 2
    assert _k8s(plan, "PodDisruptionBudget", "triton")["spec"] == {
        "maxUnavailable": 1,
        "selector": {"matchLabels": {"app.kubernetes.io/name": "triton"}},
    }


def test_triton_scales_on_inference_load_not_cpu(plan: Plan) -> None:
    """KEDA's Prometheus scaler sums generations in flight and requests held over every gateway pod; one
    held request activates it (0 -> 1); no prometheus-adapter is installed any more."""
    (trigger,) = _k8s(plan, "ScaledObject", "triton")["spec"]["triggers"]
    meta = trigger["metadata"]
    assert trigger["type"] == "prometheus" and trigger["metricType"] == "AverageValue"
    assert meta["serverAddress"] == "http://prometheus-server.monitoring.svc"
    namespace = plan.settings.workload.namespace
    for metric in ("tritonform_gateway_generations_in_flight", "tritonform_gateway_requests_held"):
        assert f'sum({metric}{{namespace="{namespace}"}})' in meta["query"]
    assert meta["threshold"] == str(plan.settings.triton.target_inflight_requests)
    assert meta["activationThreshold"] == "0"
    releases = {
        r.inputs.get("name"): r.inputs for r in plan.resources if r.type == "kubernetes:helm.sh/v3:Release"
    }
    assert "prometheus-adapter" not in releases
    assert releases["keda"]["chart"] == "keda"
    assert releases["keda"]["version"] == plan.settings.addons.keda_version
    assert releases["keda"]["namespace"] == "keda"


def test_the_gateway_routes_over_triton_pods_it_discovers(plan: Plan) -> None:
    """A headless Service lists every ready Triton pod; the gateway looks it up to route by prefix."""
    pods = _k8s(plan, "Service", "triton-pods")["spec"]
    assert pods["clusterIP"] == "None" and pods["selector"] == {"app.kubernetes.io/name": "triton"}
    assert [p["port"] for p in pods["ports"]] == [8001]
    (gateway,) = _containers(_k8s(plan, "Deployment", "gateway"))
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    namespace = plan.settings.workload.namespace
    assert env["TRITONFORM_GATEWAY_TRITON_DISCOVERY"] == f"triton-pods.{namespace}.svc:8001"


def test_a_scale_to_zero_stack_plans_with_triton_at_zero(serving_plan_of: PlanOf, tmp_path: Path) -> None:
    """`triton.minReplicas: 0`: the Deployment starts at 0, KEDA may take it to 0 after
    `scaleToZeroAfterSeconds`, and the gateways hold requests up to `coldStartTimeoutSeconds`."""
    import yaml

    from tests.infra.conftest import planned, with_model_version

    path = with_model_version("aws-dev", tmp_path)
    document = yaml.safe_load(path.read_text())
    document["config"]["tritonform:triton"].update({"minReplicas": 0, "scaleToZeroAfterSeconds": 900})
    document["config"]["tritonform:gateway"] = {"coldStartTimeoutSeconds": 420}
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    plan = planned(path)
    assert _k8s(plan, "Deployment", "triton")["spec"]["replicas"] == 0
    scaled = _k8s(plan, "ScaledObject", "triton")["spec"]
    assert scaled["minReplicaCount"] == 0 and scaled["cooldownPeriod"] == 900
    (gateway,) = _containers(_k8s(plan, "Deployment", "gateway"))
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    assert env["TRITONFORM_GATEWAY_COLD_START_TIMEOUT_S"] == "420"
    assert env["TRITONFORM_GATEWAY_MAX_HELD_REQUESTS"] == str(plan.settings.gateway.max_held_requests)


def test_network_policies_default_deny_and_only_gateway_reaches_triton(plan: Plan) -> None:
    deny = _k8s(plan, "NetworkPolicy", "default-deny")["spec"]
    assert deny["podSelector"] == {} and deny["policyTypes"] == ["Ingress", "Egress"]
    assert not deny.get("ingress") and not deny.get("egress")
    to_triton = _k8s(plan, "NetworkPolicy", "triton-from-gateway")["spec"]["ingress"]
    peers = [peer for rule in to_triton for peer in rule["from"]]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}} in peers
    assert all("ipBlock" not in peer for peer in peers)


def test_pods_are_scraped_by_prometheus(plan: Plan) -> None:
    for name, port in (("triton", "8002"), ("gateway", "8080")):
        annotations = _k8s(plan, "Deployment", name)["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == port


def test_images_are_built_from_our_dockerfiles_and_pinned_by_digest(plan: Plan) -> None:
    builds: list[PlannedResource] = plan.of_type("docker-build:index:Image")
    dockerfiles = sorted(b.inputs["dockerfile"]["location"].rsplit("/", 2)[-2] for b in builds)
    assert dockerfiles == ["gateway", "trainer", "triton"]
    assert all(b.inputs["push"] is True for b in builds)
    for name in ("triton", "gateway"):
        (container,) = _containers(_k8s(plan, "Deployment", name))
        assert "@sha256:" in container["image"]
    # the dev stacks build the trainer image (workload.buildTrainerImage), pushed to the same registry and
    # exported for `tritonform finetune --stack`
    trainer = plan.outputs["trainer_image"]
    assert "/tritonform-trainer:" in trainer and "@sha256:" in trainer


@pytest.mark.parametrize("stack", ["aws-prod", "gcp-prod", "azure-prod"])
def test_a_serving_only_stack_builds_no_trainer_image(serving_plan_of: PlanOf, stack: str) -> None:
    """The trainer image (CUDA PyTorch, several GB) is built only when a stack asks for it, so a first
    `pulumi up` of a serving stack does not build and push an image it never runs."""
    plan = serving_plan_of(stack)
    builds: list[PlannedResource] = plan.of_type("docker-build:index:Image")
    dockerfiles = [b.inputs["dockerfile"]["location"].rsplit("/", 2)[-2] for b in builds]
    assert len(dockerfiles) == 2 and "trainer" not in dockerfiles  # Triton's (ONNX or TRT-LLM), gateway's
    assert "trainer_image" not in plan.outputs


def test_endpoint_url_is_https(plan: Plan) -> None:
    assert plan.outputs["endpoint_url"].startswith("https://")
    assert plan.outputs["openai_base_url"] == plan.outputs["endpoint_url"] + "/v1"


def test_gateway_service_keeps_the_source_address_where_the_cloud_asks(plan: Plan) -> None:
    from infra.platform import platform_class

    exposure = platform_class(plan.cloud)(plan.settings).gateway_exposure()
    spec = _k8s(plan, "Service", "gateway")["spec"]
    assert spec.get("externalTrafficPolicy") == exposure.external_traffic_policy
    assert spec["type"] == exposure.type


@pytest.mark.parametrize("stack", STACKS)
def test_a_first_up_needs_no_model(plan_of: PlanOf, stack: str) -> None:
    """Without an uploaded version nothing runs that reads the bucket, so nothing Pulumi awaits can
    wait for a model; the Services the edge points at exist already."""
    plan = plan_of(stack)
    assert plan.settings.triton.model_version is None
    workloads = [
        r
        for r in plan.resources
        if r.type.startswith("kubernetes:")
        and r.type.split(":")[-1] in ("Deployment", "StatefulSet", "Job", "Pod")
    ]
    assert [r for r in workloads if "model_locator" in str(r.inputs)] == []
    assert {(r.inputs["metadata"] or {}).get("name") for r in workloads} & {"triton", "gateway"} == set()
    for name in ("triton", "gateway"):
        _k8s(plan, "Service", name)
        assert not [
            r
            for r in plan.resources
            if r.type.endswith((":HorizontalPodAutoscaler", ":ScaledObject")) and r.name == name
        ]


def test_service_accounts_carry_no_api_token_and_the_namespace_is_restricted(plan: Plan) -> None:
    namespace = _k8s(plan, "Namespace", plan.settings.workload.namespace)
    labels = namespace["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"
    for account in (
        plan.settings.workload.triton_service_account,
        plan.settings.workload.gateway_service_account,
    ):
        assert _k8s(plan, "ServiceAccount", account)["automountServiceAccountToken"] is False
    for name in ("triton", "gateway"):
        assert (
            _k8s(plan, "Deployment", name)["spec"]["template"]["spec"]["automountServiceAccountToken"]
            is False
        )


def test_egress_is_closed_but_for_dns_https_triton_and_training_peers(plan: Plan) -> None:
    policies = {
        r.inputs["metadata"]["name"]: r.inputs["spec"]
        for r in plan.resources
        if r.type == "kubernetes:networking.k8s.io/v1:NetworkPolicy"
    }
    egress = {name: spec["egress"] for name, spec in policies.items() if "Egress" in spec["policyTypes"]}
    assert set(egress) == {
        "default-deny",
        "egress-dns",
        "egress-cloud-apis",
        "gateway-egress",
        "training-peers",
    }
    # training pods (issue 17) reach only each other (torchrun's rendezvous, NCCL), besides DNS and HTTPS
    training = {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "tritonform-training"}}}
    assert policies["training-peers"]["podSelector"] == training["podSelector"]
    assert egress["training-peers"] == [{"to": [training]}]
    assert policies["training-peers"]["ingress"] == [{"from": [training]}]
    assert [p["port"] for rule in egress["egress-dns"] for p in rule["ports"]] == [53, 53]
    https = egress["egress-cloud-apis"][0]
    assert https["ports"] == [{"port": 443, "protocol": "TCP"}]
    to_triton = egress["gateway-egress"]
    assert policies["gateway-egress"]["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "gateway"}}
    assert to_triton[0]["to"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "triton"}}}]
    assert {p["port"] for p in to_triton[0]["ports"]} == {8000, 8001}


def test_identity_endpoints_the_cloud_names_are_the_only_other_egress(plan: Plan) -> None:
    spec = _k8s(plan, "NetworkPolicy", "egress-cloud-apis")["spec"]
    extra = [(rule["to"][0]["ipBlock"]["cidr"], rule["ports"][0]["port"]) for rule in spec["egress"][1:]]
    # GKE's metadata server mints Workload Identity tokens; EKS and AKS pods exchange theirs over HTTPS.
    expected = [("169.254.169.254/32", 80), ("169.254.169.252/32", 988)] if plan.cloud == "gcp" else []
    assert extra == expected


def test_a_stopping_gateway_keeps_serving_until_the_load_balancer_lets_go(plan: Plan) -> None:
    pod = _k8s(plan, "Deployment", "gateway")["spec"]["template"]["spec"]
    (gateway,) = pod["containers"]
    wait = gateway["lifecycle"]["preStop"]["sleep"]["seconds"]
    assert 20 < wait < pod["terminationGracePeriodSeconds"] - 60  # leaves the streams time to finish


def test_gateway_replicas_share_their_per_key_limits_through_one_store(plan: Plan) -> None:
    """Per-key limits hold for the stack, not for each gateway replica: the replicas share a Valkey pod,
    which only the gateway may reach and which keeps nothing on disk."""
    (gateway,) = _containers(_k8s(plan, "Deployment", "gateway"))
    env = {e["name"]: e.get("value") for e in gateway["env"]}
    namespace = plan.settings.workload.namespace
    assert (
        env["TRITONFORM_GATEWAY_RATE_LIMIT_REDIS_URL"]
        == f"redis://rate-limits.{namespace}.svc.cluster.local:6379/0"
    )
    store = _k8s(plan, "Deployment", "rate-limits")
    (server,) = _containers(store)
    assert store["spec"]["replicas"] == 1 and server["image"] == plan.settings.gateway.rate_limit_store_image
    assert {"--save", "--appendonly", "--maxmemory"} <= set(server["args"])
    assert server["securityContext"]["readOnlyRootFilesystem"] is True
    assert _k8s(plan, "Service", "rate-limits")["spec"]["ports"][0]["port"] == 6379
    ingress = _k8s(plan, "NetworkPolicy", "rate-limits-from-gateway")["spec"]["ingress"]
    assert ingress == [
        {
            "from": [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "gateway"}}}],
            "ports": [{"port": 6379, "protocol": "TCP"}],
        }
    ]
    calls = _k8s(plan, "NetworkPolicy", "gateway-egress")["spec"]["egress"]
    assert {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "rate-limits"}}} in calls[1]["to"]
