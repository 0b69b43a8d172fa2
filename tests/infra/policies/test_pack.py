"""The CrossGuard adapter: every rule becomes a policy that reports through `report_violation`."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pulumi_policy import (
    EnforcementLevel,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)
from pulumi_policy.proxy import UNKNOWN_STRING_VALUE, unknown_checking_proxy

from infra.policies import RULES, ResourceRule
from infra.policies.adapter import environment_of, plain, policies, resource_of
from infra.policies.base import UNKNOWN, Resource
from tests.infra.policies import cases_cloud, cases_k8s

PACK = Path(__file__).resolve().parents[3] / "infra" / "policies" / "pack"
OPTS = PolicyResourceOptions(False, [], False, [], None, [], None)  # type: ignore[arg-type]


def _args(resource: Resource, config: dict[str, object] | None = None) -> ResourceValidationArgs:
    props = unknown_checking_proxy(dict(resource.props))
    return ResourceValidationArgs(resource.type, props, resource.urn, resource.name, OPTS, None, config or {})


def _stack_args(resources: tuple[Resource, ...], config: dict[str, object]) -> StackValidationArgs:
    items = [
        PolicyResource(r.type, unknown_checking_proxy(dict(r.props)), r.urn, r.name, OPTS, None, None, [], {})
        for r in resources
    ]
    return StackValidationArgs(items, config)  # type: ignore[arg-type]


def _run(policy: object, args: object) -> list[tuple[str, str | None]]:
    reported: list[tuple[str, str | None]] = []
    policy.validate(args, lambda message, urn=None: reported.append((message, urn)))  # type: ignore[attr-defined]
    return reported


def test_every_rule_is_adapted_with_its_level() -> None:
    adapted = {p.name: p for p in policies()}
    assert list(adapted) == [r.name for r in RULES]
    for r in RULES:
        p = adapted[r.name]
        kind = ResourceValidationPolicy if isinstance(r, ResourceRule) else StackValidationPolicy
        assert isinstance(p, kind) and p.description == r.description
        expected = EnforcementLevel.MANDATORY if r.level == "mandatory" else EnforcementLevel.ADVISORY
        assert p.enforcement_level == expected


CASES = {c[1]: c for c in reversed(cases_cloud.CASES + cases_k8s.CASES)}  # the first case of each rule


@pytest.mark.parametrize("rule_name", [r.name for r in RULES])
def test_adapted_validator_reports_violations(rule_name: str) -> None:
    _, _, bad, good = CASES[rule_name]
    policy = next(p for p in policies() if p.name == rule_name)
    if isinstance(bad, Resource):
        assert _run(policy, _args(bad)) and _run(policy, _args(good)) == []
    else:
        env = {"environment": bad.environment}
        reported = _run(policy, _stack_args(bad.resources, env))
        assert reported and all(urn is None or urn.startswith("urn:pulumi:") for _, urn in reported)
        assert _run(policy, _stack_args(good.resources, {"environment": good.environment})) == []


def test_unknown_values_reach_rules_as_unknown() -> None:
    proxied = unknown_checking_proxy({"a": {"b": [UNKNOWN_STRING_VALUE, "x"]}, "c": UNKNOWN_STRING_VALUE})
    assert plain(proxied) == {"a": {"b": [UNKNOWN, "x"]}, "c": UNKNOWN}
    group = Resource(
        "aws:eks/nodeGroup:NodeGroup",
        "g",
        {"amiType": "AL2023_x86_64_NVIDIA", "taints": UNKNOWN_STRING_VALUE},
    )
    assert resource_of(_args(group)).props["taints"] == UNKNOWN


def test_environment_comes_from_config_then_tags_then_defaults_to_prod(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("PULUMI_STACK", raising=False)
    tagged = (Resource("pulumi:providers:aws", "aws", {"defaultTags": '{"tags": {"environment": "dev"}}'}),)
    assert environment_of(tagged, {"environment": "prod"}) == "prod"
    assert environment_of(tagged, {}) == "dev"
    assert environment_of((), {}) == "prod"
    monkeypatch.setenv("PULUMI_STACK", "aws-dev")
    assert environment_of((), {}) == "dev"


def test_pack_files_build_the_pack_only_in_main() -> None:
    main = (PACK / "__main__.py").read_text()
    calls = [
        n
        for n in ast.walk(ast.parse(main))
        if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "PolicyPack"
    ]
    assert len(calls) == 1
    assert "runtime:" in (PACK / "PulumiPolicy.yaml").read_text()
    assert "pulumi-policy" in (PACK / "requirements.txt").read_text()
    adapter = (PACK.parent / "adapter.py").read_text()
    assert "PolicyPack(" not in adapter


def test_pack_serves_the_rules_over_grpc() -> None:
    """`pulumi preview --policy-pack` talks to __main__ over gRPC: start it and ask it, as the engine does."""
    import os
    import subprocess
    import sys

    import grpc
    from google.protobuf import empty_pb2, json_format, struct_pb2
    from pulumi.runtime.proto import analyzer_pb2, analyzer_pb2_grpc

    env = {k: v for k, v in os.environ.items() if k != "PULUMI_STACK"}  # no stack name: prod by default
    server = subprocess.Popen(
        [sys.executable, str(PACK / "__main__.py")], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        assert port.isdigit(), "the pack did not print its port"
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        grpc.channel_ready_future(channel).result(timeout=20)
        stub = analyzer_pb2_grpc.AnalyzerStub(channel)
        info = stub.GetAnalyzerInfo(empty_pb2.Empty(), timeout=20)
        assert [p.name for p in info.policies] == [r.name for r in RULES]
        props = struct_pb2.Struct()
        json_format.ParseDict({"amiType": "AL2023_x86_64_NVIDIA", "instanceTypes": ["g5.xlarge"]}, props)
        urn = "urn:pulumi:prod::tritonform::aws:eks/nodeGroup:NodeGroup::gpu"
        request = analyzer_pb2.AnalyzeRequest(
            type="aws:eks/nodeGroup:NodeGroup", properties=props, urn=urn, name="gpu"
        )
        diagnostics = stub.Analyze(request, timeout=20).diagnostics
        assert [d.policyName for d in diagnostics] == ["gpu-pools-tainted"]
        cluster = struct_pb2.Struct()
        json_format.ParseDict({"vpcConfig": {"endpointPublicAccess": True}}, cluster)
        eks = analyzer_pb2.AnalyzerResource(
            type="aws:eks/cluster:Cluster",
            properties=cluster,
            name="eks",
            urn=urn.replace("nodeGroup", "cluster"),
        )
        stack_diagnostics = stub.AnalyzeStack(analyzer_pb2.AnalyzeStackRequest(resources=[eks]), timeout=20)
        assert "kubernetes-api-not-public-in-prod" in {d.policyName for d in stack_diagnostics.diagnostics}
        channel.close()
    finally:
        server.terminate()
        server.wait(timeout=20)
