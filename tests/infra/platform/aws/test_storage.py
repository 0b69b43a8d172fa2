"""AWS model bucket (aws/storage.py): private, encrypted, versioned, TLS only."""

from __future__ import annotations

import json

from infra.offline import Plan

SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"


def test_bucket_blocks_public_access_encrypts_versions_and_requires_tls(dev: Plan) -> None:
    block = dev.one("aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "tf-dev-models").inputs
    assert all(
        block[k] is True
        for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    )
    sse = dev.one(SSE, "tf-dev-models")
    assert sse.inputs["rules"][0]["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "AES256"
    versioning = dev.one("aws:s3/bucketVersioning:BucketVersioning", "tf-dev-models").inputs
    assert versioning["versioningConfiguration"]["status"] == "Enabled"
    policy = json.loads(
        dev.one("aws:s3/bucketPolicy:BucketPolicy", "tf-dev-models-tls-only").inputs["policy"]
    )
    deny = policy["Statement"][0]
    assert deny["Effect"] == "Deny" and deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    ownership = dev.one("aws:s3/bucketOwnershipControls:BucketOwnershipControls", "tf-dev-models").inputs
    assert ownership["rule"]["objectOwnership"] == "BucketOwnerEnforced"


def test_prod_bucket_uses_the_configured_kms_key(prod: Plan) -> None:
    sse = prod.one(SSE, "tf-prod-models")
    rule = sse.inputs["rules"][0]
    assert rule["applyServerSideEncryptionByDefault"]["sseAlgorithm"] == "aws:kms"
    assert rule["applyServerSideEncryptionByDefault"]["kmsMasterKeyId"].startswith("arn:aws:kms:eu-west-1")
    assert rule["bucketKeyEnabled"] is True


def test_every_request_to_the_model_bucket_is_logged_to_a_private_encrypted_bucket(dev: Plan) -> None:
    logs = dev.one("aws:s3/bucket:Bucket", "tf-dev-model-access-logs").inputs
    assert logs["bucketPrefix"] == "tf-dev-access-logs-"
    logging = dev.one("aws:s3/bucketLogging:BucketLogging").inputs
    assert (
        logging["bucket"] == "tf-dev-models-id" and logging["targetBucket"] == "tf-dev-model-access-logs-id"
    )
    assert logging["targetPrefix"] == "models/"
    assert logging["targetObjectKeyFormat"] == {"partitionedPrefix": {"partitionDateSource": "EventTime"}}
    block = dev.one(
        "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock", "tf-dev-model-access-logs"
    ).inputs
    assert all(block[k] is True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls"))
    # Server access logs are delivered only to SSE-S3 buckets.
    sse = dev.one(SSE, "tf-dev-model-access-logs").inputs
    assert sse["rules"][0]["applyServerSideEncryptionByDefault"] == {"sseAlgorithm": "AES256"}
    lifecycle = dev.one(
        "aws:s3/bucketLifecycleConfiguration:BucketLifecycleConfiguration", "tf-dev-model-access-logs"
    )
    assert lifecycle.inputs["rules"][0]["expiration"] == {"days": 90}
    policy = json.loads(
        dev.one("aws:s3/bucketPolicy:BucketPolicy", "tf-dev-model-access-logs").inputs["policy"]
    )
    deny, delivery = policy["Statement"]
    assert deny["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
    assert delivery["Principal"] == {"Service": "logging.s3.amazonaws.com"}
    assert delivery["Action"] == "s3:PutObject"
    assert delivery["Resource"] == "arn:aws:s3:::tf-dev-access-logs-0123abcd/models/*"
    assert delivery["Condition"] == {
        "ArnLike": {"aws:SourceArn": "arn:aws:s3:::tf-dev-models-0123abcd"},
        "StringEquals": {"aws:SourceAccount": "111122223333"},
    }
