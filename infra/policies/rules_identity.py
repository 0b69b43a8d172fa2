"""The Triton identity (IRSA role, GCP service account, Azure managed identity) can only read its bucket; the
gateway's own identity (GCP, Azure) reads it only under a condition that narrows it to the tokenizer files."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from typing import Any

from infra.policies.base import (
    UNKNOWN,
    Resource,
    StackRule,
    StackView,
    Violation,
    as_list,
    json_doc,
    refers_to,
)

TRITON_SERVICE_ACCOUNT = re.compile(r"triton", re.IGNORECASE)
S3_READ_ACTIONS = {
    "s3:getobject",
    "s3:getobjectversion",
    "s3:listbucket",
    "s3:listbucketversions",
    "s3:getbucketlocation",
}
KMS_READ_ACTIONS = {"kms:decrypt"}
GCS_READ_ROLES = {
    "roles/storage.objectViewer",
    "roles/storage.legacyBucketReader",
    "roles/storage.legacyObjectReader",
}
AZURE_BLOB_READER = "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1"  # Storage Blob Data Reader
_FIX_AWS = (
    "allow only s3:GetObject/GetObjectVersion on <bucket-arn>/* and s3:ListBucket/GetBucketLocation on "
    "<bucket-arn> (plus kms:Decrypt on the bucket's key)"
)


def _triton_subject(subject: Any) -> bool:
    """`system:serviceaccount:<ns>:<sa>` whose service account (not namespace) names Triton."""
    return any(
        isinstance(s, str) and TRITON_SERVICE_ACCOUNT.search(s.rsplit(":", 1)[-1]) for s in as_list(subject)
    )


# -- AWS -----------------------------------------------------------------------------------------
# Every IRSA role a workload reads the model bucket with: Triton's and the gateway's own.
READER_SERVICE_ACCOUNTS = re.compile(r"triton|gateway", re.IGNORECASE)
S3_LOGGING = ("aws:s3/bucketLogging:BucketLogging", "aws:s3/bucketLoggingV2:BucketLoggingV2")


def _reader_subject(subject: Any) -> bool:
    """`system:serviceaccount:<ns>:<sa>` naming Triton's or the gateway's service account (not namespace)."""
    return any(
        isinstance(s, str) and READER_SERVICE_ACCOUNTS.search(s.rsplit(":", 1)[-1]) for s in as_list(subject)
    )


def _irsa_reader(role: Resource) -> bool:
    doc = json_doc(role.get("assumeRolePolicy"))
    for stmt in as_list(doc.get("Statement") if doc else None):
        if not isinstance(stmt, dict) or "sts:AssumeRoleWithWebIdentity" not in as_list(stmt.get("Action")):
            continue
        for operator in (stmt.get("Condition") or {}).values():
            if isinstance(operator, dict) and any(
                k.endswith(":sub") and _reader_subject(v) for k, v in operator.items()
            ):
                return True
    return False


def _s3_resource_ok(arn: str, view: StackView) -> bool:
    match = re.fullmatch(r"arn:aws:s3:::([^/]+)(/.*)?", arn)
    if not match or "*" in match.group(1):
        return False
    name = match.group(1)
    # A bucket that receives access logs is not a model bucket, even though the stack owns it.
    log_targets = [target.get("targetBucket") for target in view.of_type(*S3_LOGGING)]
    for bucket in view.of_type("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2"):
        if any(refers_to(target, bucket, bucket.get("bucket"), bucket.get("id")) for target in log_targets):
            continue
        prefix = bucket.get("bucketPrefix")
        if name in (bucket.get("bucket"), bucket.get("id")) or (
            isinstance(prefix, str) and name.startswith(prefix)
        ):
            return True
    return False


def _aws_statement_problems(stmt: dict[str, Any], view: StackView) -> Iterator[str]:
    if stmt.get("Effect") != "Allow":
        return
    if "NotAction" in stmt or "NotResource" in stmt:
        yield "uses NotAction/NotResource, which grants everything else"
        return
    actions = [str(a).lower() for a in as_list(stmt.get("Action"))]
    resources = [str(r) for r in as_list(stmt.get("Resource"))]
    extra = [a for a in actions if a not in S3_READ_ACTIONS | KMS_READ_ACTIONS]
    if extra:
        yield f"allows {', '.join(extra)} (not read-only)"
    s3 = [a for a in actions if a.startswith("s3:")]
    for resource in resources:
        if resource == UNKNOWN:
            continue
        if s3 and not _s3_resource_ok(resource, view):
            yield f"applies to {resource}, which is not the model bucket"
        if not s3 and not resource.startswith("arn:aws:kms:"):
            yield f"applies to {resource}, which is not the bucket's KMS key"


def _aws(view: StackView) -> Iterator[Violation]:
    policies = {p.name: p for p in view.of_type("aws:iam/policy:Policy")}
    for role in view.of_type("aws:iam/role:Role"):
        if not _irsa_reader(role):
            continue
        names = (role.get("name"), role.get("id"), role.get("arn"))
        docs: list[tuple[Resource, Any]] = [
            (role, p.get("policy")) for p in as_list(role.get("inlinePolicies")) if isinstance(p, dict)
        ]
        docs += [
            (p, p.get("policy"))
            for p in view.of_type("aws:iam/rolePolicy:RolePolicy")
            if refers_to(p.get("role"), role, *names)
        ]
        managed = [(role, arn) for arn in as_list(role.get("managedPolicyArns"))]
        managed += [
            (a, a.get("policyArn"))
            for a in view.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment")
            if refers_to(a.get("role"), role, *names)
        ]
        for holder, arn in managed:
            local = next((p for p in policies.values() if refers_to(arn, p, p.get("arn"))), None)
            if local is not None:
                docs.append((local, local.get("policy")))
            elif arn != UNKNOWN:
                yield Violation(
                    f"the reader role has the managed policy {arn} attached; detach it and {_FIX_AWS}.",
                    holder,
                )
        for holder, policy in docs:
            doc = json_doc(policy)
            for stmt in as_list(doc.get("Statement") if doc else None):
                if isinstance(stmt, dict):
                    for problem in _aws_statement_problems(stmt, view):
                        yield Violation(f"the reader role's policy {problem}; {_FIX_AWS}.", holder)


# -- GCP -----------------------------------------------------------------------------------------
# The gateway's own reader (GCP and Azure here) may read the model bucket only under a condition that
# narrows it to the tokenizer files; Triton's reader reads the whole bucket.
GATEWAY_SERVICE_ACCOUNT = re.compile(r"gateway", re.IGNORECASE)


def _gateway_subject(subject: Any) -> bool:
    """`system:serviceaccount:<ns>:<sa>` whose service account names the gateway."""
    return any(
        isinstance(s, str) and GATEWAY_SERVICE_ACCOUNT.search(s.rsplit(":", 1)[-1]) for s in as_list(subject)
    )


def _gcp_members(view: StackView, bound_to: Callable[[Any], bool]) -> set[str]:
    """`serviceAccount:<email>` members of service accounts that the matching Kubernetes service accounts
    may impersonate."""
    members: set[str] = set()
    for binding in view.of_type(
        "gcp:serviceaccount/iAMMember:IAMMember", "gcp:serviceaccount/iAMBinding:IAMBinding"
    ):
        if binding.get("role") != "roles/iam.workloadIdentityUser":
            continue
        ksas = [
            m for m in as_list(binding.get("member")) + as_list(binding.get("members")) if isinstance(m, str)
        ]
        if any(bound_to(m.rstrip("]").replace("/", ":")) for m in ksas if "[" in m):
            account = str(binding.get("serviceAccountId", "")).rsplit("/", 1)[-1]
            if account and account != UNKNOWN:
                members.add(f"serviceAccount:{account}")
    return members


def _gcp_reader(
    view: StackView, who: str, bound_to: Callable[[Any], bool], narrowed: bool
) -> Iterator[Violation]:
    members = _gcp_members(view, bound_to)
    if not members:
        return
    buckets = view.of_type("gcp:storage/bucket:Bucket")
    for grant in view.resources:
        if "iam" not in grant.type.lower() or grant.type.startswith("gcp:serviceaccount/"):
            continue
        granted = as_list(grant.get("member")) + as_list(grant.get("members"))
        text = str(grant.get("policyData", ""))
        if not any(m in granted or m in text for m in members):
            continue
        if not grant.type.startswith("gcp:storage/bucketIAM"):
            yield Violation(
                f"the {who} service account is granted {grant.get('role', 'roles')} outside the model "
                "bucket "
                f"({grant.type}); grant only roles/storage.objectViewer on the model bucket.",
                grant,
            )
            continue
        if not any(refers_to(grant.get("bucket"), b, b.get("name"), b.get("id")) for b in buckets):
            yield Violation(
                f"the {who} service account is granted access to bucket {grant.get('bucket')!r}, which "
                "is not "
                "the model bucket; remove the grant.",
                grant,
            )
        if grant.get("role") not in GCS_READ_ROLES | {UNKNOWN, None}:
            yield Violation(
                f"the {who} service account gets {grant.get('role')} on the model bucket; use "
                "roles/storage.objectViewer (read-only).",
                grant,
            )
        expression = grant.get("condition.expression")
        if narrowed and expression != UNKNOWN and "resource.name.startsWith(" not in str(expression or ""):
            yield Violation(
                f"the {who} service account may read every object of the model bucket; add an IAM condition "
                "on resource.name (startsWith the versions prefix, endsWith the tokenizer files).",
                grant,
            )


def _gcp(view: StackView) -> Iterator[Violation]:
    yield from _gcp_reader(view, "Triton", _triton_subject, narrowed=False)
    yield from _gcp_reader(view, "gateway", _gateway_subject, narrowed=True)


# -- Azure ---------------------------------------------------------------------------------------
AZURE_BLOB_PATH = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs:path"


def _azure_federated(view: StackView, bound_to: Callable[[Any], bool]) -> list[Resource]:
    """User-assigned identities whose federated credential names a matching Kubernetes service account."""
    identities = view.of_type("azure-native:managedidentity:UserAssignedIdentity")
    found: list[Resource] = []
    for fic in view.of_type("azure-native:managedidentity:FederatedIdentityCredential"):
        if bound_to(fic.get("subject")):
            found += [i for i in identities if refers_to(fic.get("resourceName"), i, i.get("resourceName"))]
    return found


def _azure(view: StackView) -> Iterator[Violation]:
    triton = _azure_federated(view, _triton_subject)
    principals = {i.get("principalId") for i in triton} - {None, UNKNOWN}
    containers = view.of_type("azure-native:storage:BlobContainer")
    custom_roles = view.of_type("azure-native:authorization:RoleDefinition")
    for assignment in view.of_type("azure-native:authorization:RoleAssignment"):
        scope = str(assignment.get("scope", ""))
        role_ref = assignment.get("roleDefinitionId")
        custom = [r for r in custom_roles if refers_to(role_ref, r, r.get("roleName"))]
        if custom:  # the trainer's own role (datasets/ read, checkpoints/ write): judged on its own terms
            yield from _azure_trainer_grant(assignment, custom[0])
            continue
        if principals:
            if assignment.get("principalId") not in principals:
                continue
        # Without known principal ids (a plan), judge the workload grants on storage.
        elif assignment.get("principalType") != "ServicePrincipal" or "/Microsoft.Storage/" not in scope:
            continue
        role = str(assignment.get("roleDefinitionId", "")).rsplit("/", 1)[-1]
        if role not in (AZURE_BLOB_READER, UNKNOWN):
            yield Violation(
                f"the Triton identity gets role {role}; use Storage Blob Data Reader ({AZURE_BLOB_READER}).",
                assignment,
            )
        target = scope.rsplit("/containers/", 1)
        if scope != UNKNOWN and (
            len(target) != 2 or not any(c.get("containerName", c.name) == target[1] for c in containers)
        ):
            yield Violation(
                f"the Triton identity's role assignment scope {scope!r} is not the model container; scope it "
                "to .../blobServices/default/containers/<model container>.",
                assignment,
            )
    yield from _azure_gateway(view)


AZURE_BLOB_DATA = "Microsoft.Storage/storageAccounts/blobServices/containers/blobs/"
AZURE_TRAINER_ACTIONS = {AZURE_BLOB_DATA + a for a in ("read", "write", "add/action")}


def _azure_trainer_grant(assignment: Resource, role: Resource) -> Iterator[Violation]:
    """A custom role on the model storage: blob read/write data actions only (no delete, no control
    plane), under a blob-path condition that keeps writes under `checkpoints/`."""
    permissions = as_list(role.get("permissions"))
    actions = {a for p in permissions if isinstance(p, dict) for a in as_list(p.get("actions"))}
    data = {a for p in permissions if isinstance(p, dict) for a in as_list(p.get("dataActions"))}
    if actions or not data <= AZURE_TRAINER_ACTIONS:
        yield Violation(
            f"custom role {role.name} grants {sorted(actions | (data - AZURE_TRAINER_ACTIONS))}; a "
            "workload's custom role on the model storage may hold only blob read/write/add data actions.",
            assignment,
        )
    condition = str(assignment.get("condition") or "")
    if condition != UNKNOWN and "StringLike 'checkpoints/*'" not in condition:
        yield Violation(
            f"{assignment.name} grants blob writes without a blob-path condition holding them to "
            "checkpoints/.",
            assignment,
        )


def _azure_gateway(view: StackView) -> Iterator[Violation]:
    """The gateway's identity reads the model container only under a blob-path condition (ABAC 2.0)."""
    for identity in _azure_federated(view, _gateway_subject):
        principal = identity.get("principalId")
        for assignment in view.of_type("azure-native:authorization:RoleAssignment"):
            # A plan knows no principal ids: there the identity and its grant share their logical name.
            if principal not in (None, UNKNOWN):
                if assignment.get("principalId") != principal:
                    continue
            elif assignment.name != identity.name:
                continue
            role = str(assignment.get("roleDefinitionId", "")).rsplit("/", 1)[-1]
            if role not in (AZURE_BLOB_READER, UNKNOWN):
                yield Violation(
                    f"the gateway identity gets role {role}; use Storage Blob Data Reader "
                    f"({AZURE_BLOB_READER}) on the model container.",
                    assignment,
                )
            condition = assignment.get("condition")
            if condition != UNKNOWN and (
                AZURE_BLOB_PATH not in str(condition or "") or assignment.get("conditionVersion") != "2.0"
            ):
                yield Violation(
                    "the gateway identity may read every blob of the model container; add a condition "
                    f"(version 2.0) on @Resource[{AZURE_BLOB_PATH}] that admits only the tokenizer files.",
                    assignment,
                )


def triton_identity_reads_only_its_bucket(view: StackView) -> Iterator[Violation]:
    yield from _aws(view)
    yield from _gcp(view)
    yield from _azure(view)


RULES = (
    StackRule(
        "triton-identity-reads-only-its-bucket",
        "The identities that read models (Triton's and the gateway's) have read-only access to the model "
        "bucket/container and nothing else; the gateway's only to the tokenizer files of a version.",
        "mandatory",
        triton_identity_reads_only_its_bucket,
    ),
)
