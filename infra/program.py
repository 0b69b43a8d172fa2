"""The whole stack as one function: settings in, cloud platform + workload + edge provisioned, outputs out.

`infra/__main__.py` (what `pulumi up` runs) and the offline plan both call `main`, so the plan exercises
exactly the program that deploys; only the plan skips the readiness gate, and reports it instead.
"""

from __future__ import annotations

from datetime import date
from typing import Any

import pulumi

from infra.platform import platform_class
from infra.platform.base import EdgeBackend
from infra.settings import NAMESPACE, SettingsError, StackSettings, config_from_pulumi, load_settings
from infra.settings.readiness import check_readiness
from infra.workload.images import build_images
from infra.workload.inference import InferenceWorkload, WorkloadArgs


def settings_from_pulumi() -> StackSettings:
    """Parse the running stack's config; a bad setting stops the program with a readable message."""
    try:
        return load_settings(config_from_pulumi(), source=f"stack {pulumi.get_stack()}")
    except SettingsError as exc:
        raise pulumi.RunError(str(exc)) from None


def api_keys(settings: StackSettings) -> pulumi.Output[str]:
    """The gateway's API keys: `tritonform:apiKeys` (secret, comma-separated), else one generated key."""
    configured = pulumi.Config(NAMESPACE).get_secret("apiKeys")
    if configured is not None:
        return configured
    import pulumi_random as random

    generated = random.RandomPassword(f"{settings.name}-api-key", length=40, special=False)
    return pulumi.Output.concat("tf-", generated.result)


def build_stack(settings: StackSettings) -> dict[str, pulumi.Input[Any]]:
    """Provision the cloud platform, the workload on it and the public edge; return the stack outputs."""
    cloud = platform_class(settings.cloud)(settings)
    platform = cloud.provision()
    images = build_images(settings, platform.registry, pulumi.ResourceOptions())
    keys = api_keys(settings)
    exposure = cloud.gateway_exposure()
    workload = InferenceWorkload(
        "inference",
        WorkloadArgs(
            settings=settings,
            provider=platform.cluster.provider,
            scheduling=platform.gpu_pool.scheduling,
            reader=platform.reader,
            gateway_reader=platform.gateway_reader,
            bucket_uri=platform.bucket.uri,
            triton_image=images.triton,
            gateway_image=images.gateway,
            api_keys=keys,
            exposure=exposure,
            trainer=platform.trainer,
        ),
        opts=pulumi.ResourceOptions(depends_on=[platform.gpu_pool, *platform.workload_dependencies]),
    )
    edge = cloud.edge(
        platform,
        EdgeBackend(
            namespace=workload.namespace,
            service_name=workload.gateway_service,
            port=workload.gateway_port,
            exposure=exposure,
            depends_on=[workload],
        ),
    )
    return {
        "cloud": settings.cloud,
        "cluster_name": platform.cluster.cluster_name,
        "kubeconfig": platform.cluster.kubeconfig,
        "bucket_uri": platform.bucket.uri,
        "model_repository_uri": pulumi.Output.concat(platform.bucket.uri, "/", settings.triton.model_prefix),
        "gpu_node_selector": platform.gpu_pool.scheduling.node_selector,
        "gpu_tolerations": platform.gpu_pool.scheduling.tolerations,
        "model_reader_identity": platform.reader.identity_id,
        # what `tritonform finetune --stack` puts on its Job's pods (infra/workload/training_job.py)
        **(
            {
                "trainer_identity": platform.trainer.identity_id,
                "trainer_pod_labels": platform.trainer.pod_labels,
                **({"trainer_image": images.trainer} if images.trainer is not None else {}),
            }
            if platform.trainer is not None
            else {}
        ),
        "endpoint_url": edge.endpoint_url,
        "openai_base_url": pulumi.Output.concat(edge.endpoint_url, "/v1"),
        "api_key": pulumi.Output.secret(keys),
        **platform.extra_outputs,
    }


def main(*, check_ready: bool = True, today: date | None = None) -> None:
    """Run the stack for the running Pulumi stack's config and export its outputs.

    With `check_ready` (what `pulumi up` and `pulumi preview` do), a stack that still holds example values
    or a Kubernetes version its cloud no longer creates stops here, before any resource, with one line per
    key saying how to set it. The offline plan passes False and prints the same findings itself.
    """
    settings = settings_from_pulumi()
    if check_ready:
        readiness = check_readiness(settings, today or date.today())
        for warning in readiness.warnings:
            pulumi.log.warn(warning)
        if readiness.blockers:
            lines = "\n".join(f"  - {blocker}" for blocker in readiness.blockers)
            raise pulumi.RunError(
                f"stack {pulumi.get_stack()} is not ready for `pulumi up`:\n{lines}\n"
                "`tritonform plan --stack NAME` shows the same; "
                "`tritonform init` writes a stack with your values."
            )
    for name, value in build_stack(settings).items():
        pulumi.export(name, value)
