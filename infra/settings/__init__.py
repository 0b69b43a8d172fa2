"""The one typed settings layer: a stack file's `tritonform:` config as a frozen `StackSettings` tree.

- `stack.py`: `StackSettings`, the blocks every cloud shares, and the loaders (`load_settings`,
  `load_stack_file`, `config_from_pulumi`); `SettingsError` lists every bad key at once.
- `clouds.py`: the GCP and Azure blocks; `serving.py`: Triton, gateway, edge and add-on blocks;
  `base.py`: the frozen camelCase base model; `doc.py`: the README's settings table, generated.

Every default lives in exactly one of these modules.
"""

from infra.settings.base import Settings, check_cidr
from infra.settings.clouds import AwsSettings, AzureSettings, GcpSettings
from infra.settings.serving import (
    AddonSettings,
    CanarySettings,
    EdgeSettings,
    GatewaySettings,
    TritonSettings,
)
from infra.settings.stack import (
    NAMESPACE,
    SECRET_CONFIG_KEYS,
    SYSTEM_MACHINE_DEFAULTS,
    BucketSettings,
    ClusterSettings,
    GpuPoolSettings,
    NetworkSettings,
    SettingsError,
    StackSettings,
    SystemPoolSettings,
    WorkloadSettings,
    config_from_pulumi,
    config_from_stack_file,
    load_settings,
    load_stack_file,
    secret_keys_in_stack_file,
)

__all__ = [
    "NAMESPACE",
    "SECRET_CONFIG_KEYS",
    "SYSTEM_MACHINE_DEFAULTS",
    "AddonSettings",
    "AwsSettings",
    "AzureSettings",
    "BucketSettings",
    "CanarySettings",
    "ClusterSettings",
    "EdgeSettings",
    "GatewaySettings",
    "GcpSettings",
    "GpuPoolSettings",
    "NetworkSettings",
    "Settings",
    "SettingsError",
    "StackSettings",
    "SystemPoolSettings",
    "TritonSettings",
    "WorkloadSettings",
    "check_cidr",
    "config_from_pulumi",
    "config_from_stack_file",
    "load_settings",
    "load_stack_file",
    "secret_keys_in_stack_file",
]
