"""GCP logging: data-access audit logs of Cloud Storage, so that every read and write of a model is recorded.

Admin activity (bucket and IAM changes) is always logged by GCP; reads and writes of objects are not until
DATA_READ/DATA_WRITE audit logs are on. GKE's own logs and the load balancer's request logs are set where
those are built (cluster defaults, the edge's backend policy).
"""

from __future__ import annotations

import pulumi_gcp as gcp

from infra.platform.gcp.provider import GcpContext

STORAGE_SERVICE = "storage.googleapis.com"
DATA_ACCESS_LOG_TYPES = ("DATA_READ", "DATA_WRITE")


def build_logging(context: GcpContext) -> gcp.projects.IAMAuditConfig:
    """Cloud Storage data-access audit logs (billed as Cloud Logging volume).

    GCP keeps audit-log configuration per project and service, not per bucket: this turns them on for
    every bucket of the project, and another stack (or person) managing the same setting in the project
    manages the same object; `pulumi destroy` of this stack turns them off again.
    """
    return gcp.projects.IAMAuditConfig(
        context.name("storage-data-access"),
        project=context.project,
        service=STORAGE_SERVICE,
        audit_log_configs=[
            gcp.projects.IAMAuditConfigAuditLogConfigArgs(log_type=log_type)
            for log_type in DATA_ACCESS_LOG_TYPES
        ],
        opts=context.options,
    )
