"""Kubeconfigs that carry no long-lived credential: each authenticates through the cloud's exec plugin.

The cloud-specific ones (`aws eks get-token`, `gke-gcloud-auth-plugin`, `kubelogin`) live in each cloud's
`cluster.py`; this is the shape they share.
"""

from __future__ import annotations

import json
from typing import Any

EXEC_API = "client.authentication.k8s.io/v1beta1"


def exec_kubeconfig(name: str, server: str, ca_data: str, exec_spec: dict[str, Any]) -> str:
    """A one-cluster kubeconfig (JSON, which is YAML) whose user runs `exec_spec` to get a token."""
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": server, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "users": [{"name": name, "user": {"exec": {"apiVersion": EXEC_API, **exec_spec}}}],
    }
    return json.dumps(config)
