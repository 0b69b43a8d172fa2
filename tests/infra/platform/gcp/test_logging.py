"""GCP logging (gcp/logging.py): Cloud Storage data-access audit logs."""

from __future__ import annotations

from infra.offline import Plan


def test_storage_data_reads_and_writes_are_audit_logged(dev: Plan, prod: Plan) -> None:
    for plan in (dev, prod):
        config = plan.one("gcp:projects/iAMAuditConfig:IAMAuditConfig").inputs
        assert config["service"] == "storage.googleapis.com"
        assert config["project"] == "your-project-id"
        assert {c["logType"] for c in config["auditLogConfigs"]} == {"DATA_READ", "DATA_WRITE"}
        assert not any(c.get("exemptedMembers") for c in config["auditLogConfigs"])
