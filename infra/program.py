"""The whole stack as one function: settings in, cloud platform provisioned, outputs out.

`infra/__main__.py` (what `pulumi up` runs) and the offline plan both call `build_stack`, so the plan
exercises exactly the program that deploys.
"""

from __future__ import annotations

from typing import Any

import pulumi

from infra.platform import platform_class
from infra.settings import SettingsError, StackSettings, config_from_pulumi, load_settings


def settings_from_pulumi() -> StackSettings:
    """Parse the running stack's config; a bad setting stops the program with a readable message."""
    try:
        return load_settings(config_from_pulumi(), source=f"stack {pulumi.get_stack()}")
    except SettingsError as exc:
        raise pulumi.RunError(str(exc)) from None


def build_stack(settings: StackSettings) -> dict[str, pulumi.Input[Any]]:
    """Provision the cloud platform for `settings` and return the stack outputs (same names everywhere)."""
    platform = platform_class(settings.cloud)(settings).provision()
    return {
        "cloud": settings.cloud,
        "cluster_name": platform.cluster.cluster_name,
        "kubeconfig": platform.cluster.kubeconfig,
        "bucket_uri": platform.bucket.uri,
        "gpu_node_selector": platform.gpu_pool.scheduling.node_selector,
        "gpu_tolerations": platform.gpu_pool.scheduling.tolerations,
        "model_reader_identity": platform.reader.identity_id,
        **platform.extra_outputs,
    }
