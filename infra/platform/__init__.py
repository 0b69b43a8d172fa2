"""Cloud platforms behind one interface, looked up by name; each cloud's SDK is imported only when used."""

from __future__ import annotations

import importlib

from infra.catalog import CLOUDS, CloudName
from infra.platform.base import CloudPlatform

# name -> "module:Class"; imported lazily so that planning one cloud does not load three SDKs.
_REGISTRY: dict[CloudName, str] = {
    "aws": "infra.platform.aws:AwsPlatform",
    "gcp": "infra.platform.gcp:GcpPlatform",
    "azure": "infra.platform.azure:AzurePlatform",
}


class UnknownCloudError(ValueError):
    """The requested cloud has no platform implementation."""


def platform_class(cloud: str) -> type[CloudPlatform]:
    """The `CloudPlatform` class for a cloud name; the error lists the valid names."""
    target = _REGISTRY.get(cloud)  # type: ignore[call-overload]
    if target is None:
        raise UnknownCloudError(f"unknown cloud {cloud!r}; valid clouds are: {', '.join(CLOUDS)}")
    module_name, _, class_name = target.partition(":")
    cls: type[CloudPlatform] = getattr(importlib.import_module(module_name), class_name)
    return cls
