"""Object storage rules: the model bucket/container is never public and always encrypted, on every cloud."""

from __future__ import annotations

from collections.abc import Iterator

from infra.policies.base import (
    UNKNOWN,
    Resource,
    StackRule,
    StackView,
    Violation,
    as_list,
    is_false,
    is_true,
    json_doc,
    owner_of,
)

S3_BUCKETS = ("aws:s3/bucket:Bucket", "aws:s3/bucketV2:BucketV2")
S3_PUBLIC_ACCESS_BLOCK = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
S3_SSE = (
    "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration",
    "aws:s3/bucketServerSideEncryptionConfigurationV2:BucketServerSideEncryptionConfigurationV2",
)
S3_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
S3_ACLS = ("aws:s3/bucketAcl:BucketAcl", "aws:s3/bucketAclV2:BucketAclV2")
S3_OBJECTS = ("aws:s3/bucketObject:BucketObject", "aws:s3/bucketObjectv2:BucketObjectv2")
S3_SSE_ALGORITHMS = {"AES256", "aws:kms", "aws:kms:dsse"}
PUBLIC_ACLS = {"public-read", "public-read-write", "authenticated-read"}
PUBLIC_GRANTEES = ("AllUsers", "AuthenticatedUsers")
PAB_FLAGS = ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")

GCS_BUCKET = "gcp:storage/bucket:Bucket"
GCS_IAM = (
    "gcp:storage/bucketIAMMember:BucketIAMMember",
    "gcp:storage/bucketIAMBinding:BucketIAMBinding",
    "gcp:storage/bucketIAMPolicy:BucketIAMPolicy",
)
GCS_ACLS = (
    "gcp:storage/bucketACL:BucketACL",
    "gcp:storage/bucketAccessControl:BucketAccessControl",
    "gcp:storage/defaultObjectACL:DefaultObjectACL",
    "gcp:storage/defaultObjectAccessControl:DefaultObjectAccessControl",
    "gcp:storage/objectAccessControl:ObjectAccessControl",
)
GCP_PUBLIC_MEMBERS = ("allUsers", "allAuthenticatedUsers")

AZ_ACCOUNT = "azure-native:storage:StorageAccount"
AZ_CONTAINER = "azure-native:storage:BlobContainer"


def _bucket_names(bucket: Resource) -> tuple[object, ...]:
    return (bucket.get("bucket"), bucket.get("id"), bucket.get("arn"), bucket.get("name"))


def s3_children(view: StackView, bucket: Resource, types: tuple[str, ...]) -> list[Resource]:
    """The resources of `types` whose `bucket` points at `bucket` (unknown refs go to a lone bucket)."""
    buckets = view.of_type(*S3_BUCKETS)
    found = []
    for child in view.of_type(*types):
        ref = child.get("bucket")
        if ref in (None, UNKNOWN):
            if len(buckets) == 1 or child.name == bucket.name:
                found.append(child)
        elif owner_of(ref, buckets, _bucket_names) == bucket:
            found.append(child)
    return found


def _public_statements(policy: object) -> Iterator[str]:
    doc = json_doc(policy)
    for stmt in as_list(doc.get("Statement") if doc else None):
        if not isinstance(stmt, dict) or stmt.get("Effect") != "Allow" or stmt.get("Condition"):
            continue
        principal = stmt.get("Principal")
        aws = principal.get("AWS") if isinstance(principal, dict) else principal
        if "*" in as_list(aws):
            yield str(stmt.get("Sid") or stmt.get("Action"))


def _aws_public(view: StackView) -> Iterator[Violation]:
    for bucket in view.of_type(*S3_BUCKETS):
        if bucket.get("acl") in PUBLIC_ACLS:
            yield Violation(
                f"S3 bucket has the public ACL {bucket.get('acl')!r}; remove `acl` (ownership is enforced).",
                bucket,
            )
        blocks = s3_children(view, bucket, (S3_PUBLIC_ACCESS_BLOCK,))
        if not blocks:
            yield Violation(
                "S3 bucket has no BucketPublicAccessBlock; add one with blockPublicAcls, blockPublicPolicy, "
                "ignorePublicAcls and restrictPublicBuckets all true.",
                bucket,
            )
        for block in blocks:
            off = [flag for flag in PAB_FLAGS if not is_true(block.get(flag))]
            if off:
                yield Violation(
                    f"public access block leaves {', '.join(off)} off; set all four flags to true.", block
                )
        for policy in s3_children(view, bucket, (S3_POLICY,)):
            for sid in _public_statements(policy.get("policy")):
                yield Violation(
                    f"bucket policy statement {sid} allows Principal '*' without a condition; "
                    "grant the reader role's ARN instead.",
                    policy,
                )
    for acl in view.of_type(*S3_ACLS, *S3_OBJECTS):
        grants = str(acl.get("accessControlPolicy", ""))
        if acl.get("acl") in PUBLIC_ACLS or any(g in grants for g in PUBLIC_GRANTEES):
            yield Violation("grants public access through an ACL; remove the ACL grant.", acl)


def _gcp_public(view: StackView) -> Iterator[Violation]:
    for bucket in view.of_type(GCS_BUCKET):
        if bucket.get("publicAccessPrevention") != "enforced":
            yield Violation(
                "GCS bucket does not enforce public access prevention; set "
                "publicAccessPrevention='enforced'.",
                bucket,
            )
        if not is_true(bucket.get("uniformBucketLevelAccess")):
            yield Violation(
                "GCS bucket allows object ACLs; set uniformBucketLevelAccess=true so only IAM grants access.",
                bucket,
            )
    for grant in view.of_type(*GCS_IAM, *GCS_ACLS):
        text = " ".join(
            str(grant.get(k, "")) for k in ("member", "members", "policyData", "entity", "roleEntities")
        )
        if any(m in text for m in GCP_PUBLIC_MEMBERS) or grant.get("predefinedAcl", "").startswith("public"):
            yield Violation(
                "grants access to allUsers/allAuthenticatedUsers; grant a service account.", grant
            )


def _azure_public(view: StackView) -> Iterator[Violation]:
    for account in view.of_type(AZ_ACCOUNT):
        if not is_false(account.get("allowBlobPublicAccess")):
            yield Violation(
                "storage account does not forbid anonymous blob access; set allowBlobPublicAccess=False.",
                account,
            )
    for container in view.of_type(AZ_CONTAINER):
        if container.get("publicAccess") not in (None, "None", UNKNOWN):
            yield Violation(
                f"blob container has publicAccess={container.get('publicAccess')!r}; set it to 'None'.",
                container,
            )


def buckets_not_public(view: StackView) -> Iterator[Violation]:
    yield from _aws_public(view)
    yield from _gcp_public(view)
    yield from _azure_public(view)


def _s3_sse_algorithms(view: StackView, bucket: Resource) -> list[object]:
    inline = bucket.get(
        "serverSideEncryptionConfiguration.rule.applyServerSideEncryptionByDefault.sseAlgorithm"
    )
    found: list[object] = [inline] if inline else []
    for config in s3_children(view, bucket, S3_SSE):
        for rule in as_list(config.get("rules")):
            if isinstance(rule, dict):
                found.append((rule.get("applyServerSideEncryptionByDefault") or {}).get("sseAlgorithm"))
    return found


def buckets_encrypted(view: StackView) -> Iterator[Violation]:
    for bucket in view.of_type(*S3_BUCKETS):
        algorithms = _s3_sse_algorithms(view, bucket)
        if not algorithms:
            yield Violation(
                "S3 bucket has no server-side encryption configuration; add a "
                "BucketServerSideEncryptionConfiguration with sseAlgorithm 'aws:kms' (or 'AES256').",
                bucket,
            )
        for algorithm in algorithms:
            if algorithm not in S3_SSE_ALGORITHMS and algorithm != UNKNOWN:
                yield Violation(
                    f"S3 bucket encryption uses {algorithm!r}; use 'aws:kms' or 'AES256'.", bucket
                )
    for bucket in view.of_type(GCS_BUCKET):
        # GCS always encrypts at rest; a customer key block, when present, must name a key.
        if "encryption" in bucket.props and not bucket.get("encryption.defaultKmsKeyName"):
            yield Violation("GCS bucket `encryption` names no defaultKmsKeyName; set the KMS key.", bucket)
    for account in view.of_type(AZ_ACCOUNT):
        if is_false(account.get("encryption.services.blob.enabled")):
            yield Violation(
                "storage account disables blob encryption; set encryption.services.blob.enabled.", account
            )
        if is_false(account.get("enableHttpsTrafficOnly")):
            yield Violation("storage account accepts plain HTTP; set enableHttpsTrafficOnly=True.", account)
        if account.get("minimumTlsVersion") not in ("TLS1_2", "TLS1_3", UNKNOWN):
            yield Violation(
                f"storage account minimumTlsVersion is {account.get('minimumTlsVersion')!r}; set 'TLS1_2'.",
                account,
            )


def _denies_plain_http(policy: object) -> bool:
    doc = json_doc(policy)
    for stmt in as_list(doc.get("Statement") if doc else None):
        if isinstance(stmt, dict) and stmt.get("Effect") == "Deny":
            condition = stmt.get("Condition") or {}
            if str((condition.get("Bool") or {}).get("aws:SecureTransport", "")).lower() == "false":
                return True
    return False


def buckets_tls_only(view: StackView) -> Iterator[Violation]:
    for bucket in view.of_type(*S3_BUCKETS):
        policies = s3_children(view, bucket, (S3_POLICY,))
        if any(p.get("policy") == UNKNOWN for p in policies):
            continue
        if not any(_denies_plain_http(p.get("policy")) for p in policies):
            yield Violation(
                "S3 bucket accepts requests over plain HTTP; add a bucket policy statement that denies "
                "s3:* when aws:SecureTransport is false.",
                bucket,
            )


RULES = (
    StackRule(
        "buckets-not-public",
        "Model buckets and containers (S3, GCS, Azure Blob) can never be read anonymously.",
        "mandatory",
        buckets_not_public,
    ),
    StackRule(
        "buckets-encrypted",
        "Model buckets and storage accounts are encrypted at rest (and Azure accounts in transit).",
        "mandatory",
        buckets_encrypted,
    ),
    StackRule(
        "buckets-tls-only",
        "S3 model buckets refuse requests that are not made over TLS.",
        "advisory",
        buckets_tls_only,
    ),
)
