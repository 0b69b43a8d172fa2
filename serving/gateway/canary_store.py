"""The canary's rollback decision in a ConfigMap, shared by every gateway replica of a cluster.

The gateway that decides writes the decision (JSON under the key `decision`) with a merge patch; every
replica reads it every few seconds (serving/gateway/canary.py). The gateway's service account may get and
patch this one ConfigMap only (a Role with `resourceNames`, infra/workload/canary.py), through the
official Kubernetes client with the pod's projected service-account token (in-cluster configuration).
The client is imported on first use, so the gateway needs it only on a cluster with a canary.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

DECISION_KEY = "decision"


class ConfigMapDecisionStore:
    """`DecisionStore` on a ConfigMap `name` in `namespace` (which the stack creates)."""

    def __init__(self, name: str, namespace: str, api: Any = None) -> None:
        """`api`: a `kubernetes.client.CoreV1Api` (tests pass a stand-in); default: in-cluster."""
        self.name, self.namespace = name, namespace
        self._api = api

    def _client(self) -> Any:
        if self._api is None:
            from kubernetes import client, config

            config.load_incluster_config()
            self._api = client.CoreV1Api()
        return self._api

    def _read(self) -> dict[str, Any] | None:
        found = self._client().read_namespaced_config_map(self.name, self.namespace)
        raw = (found.data or {}).get(DECISION_KEY)
        return json.loads(raw) if raw else None

    def _write(self, record: dict[str, Any]) -> None:
        body = {"data": {DECISION_KEY: json.dumps(record, sort_keys=True)}}
        self._client().patch_namespaced_config_map(self.name, self.namespace, body)

    async def load(self) -> dict[str, Any] | None:
        return await asyncio.to_thread(self._read)

    async def save(self, record: dict[str, Any]) -> None:
        await asyncio.to_thread(self._write, record)
