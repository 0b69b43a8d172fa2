"""Kubeconfigs that carry no long-lived credential: each authenticates through the cloud's exec plugin."""

from __future__ import annotations

import base64
import json
from typing import Any

import yaml

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


def gke_kubeconfig(name: str, endpoint: str, ca_data: str) -> str:
    """GKE: `gke-gcloud-auth-plugin` turns the caller's gcloud login into a short-lived token."""
    return exec_kubeconfig(
        name,
        f"https://{endpoint}",
        ca_data,
        {
            "command": "gke-gcloud-auth-plugin",
            "provideClusterInfo": True,
            "installHint": "gcloud components install gke-gcloud-auth-plugin",
        },
    )


def aks_kubeconfig_for_azure_cli(encoded: str) -> str:
    """AKS: the user kubeconfig (base64 YAML, `kubelogin` exec) switched to non-interactive `azurecli` login.

    AKS returns `--login devicecode`, which waits for a person; `azurecli` reuses `az login` (or a CI's
    federated login), so `pulumi up` can deploy the workload unattended.
    """
    config = yaml.safe_load(base64.b64decode(encoded))
    for user in config.get("users", []):
        exec_spec = user.get("user", {}).get("exec")
        if exec_spec and exec_spec.get("command") == "kubelogin":
            args = list(exec_spec.get("args", []))
            if "--login" in args:
                args[args.index("--login") + 1] = "azurecli"
            else:
                args += ["--login", "azurecli"]
            exec_spec["args"] = args
    return yaml.safe_dump(config, sort_keys=False)
