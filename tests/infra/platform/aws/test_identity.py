"""AWS reader identities (aws/identity.py): IRSA roles for Triton (the model bucket) and the gateway (its
tokenizer files)."""

from __future__ import annotations

import json

from infra.offline import Plan
from infra.platform.aws.identity import bucket_read_policy
from infra.platform.base import ReadScope
from tests.infra.platform.provisioned import provisioned


def test_irsa_role_trusts_only_the_triton_service_account(dev: Plan) -> None:
    role = dev.one("aws:iam/role:Role", "tf-dev-model-reader").inputs
    statement = json.loads(role["assumeRolePolicy"])["Statement"]
    assert len(statement) == 1
    assert statement[0]["Action"] == "sts:AssumeRoleWithWebIdentity"
    assert statement[0]["Principal"]["Federated"].endswith("tf-dev-eks-oidc")
    conditions = statement[0]["Condition"]["StringEquals"]
    assert sorted(conditions.values()) == ["sts.amazonaws.com", "system:serviceaccount:tritonform:triton"]


def test_irsa_policy_reads_only_the_model_bucket(dev: Plan) -> None:
    bucket_arn = "arn:aws:s3:::tf-dev-models-0123abcd"
    policy = json.loads(dev.one("aws:iam/rolePolicy:RolePolicy", "tf-dev-model-reader").inputs["policy"])
    actions = {
        a
        for s in policy["Statement"]
        for a in ([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
    }
    assert actions == {"s3:ListBucket", "s3:GetBucketLocation", "s3:GetObject", "s3:GetObjectVersion"}
    resources = {s["Resource"] for s in policy["Statement"]}
    assert resources == {bucket_arn, f"{bucket_arn}/*"}
    assert all(s["Effect"] == "Allow" for s in policy["Statement"])
    # Nobody else gets an inline or attached policy on the reader role.
    assert not [
        a for a in dev.of_type("aws:iam/rolePolicyAttachment:RolePolicyAttachment") if "reader" in a.name
    ]


def test_prod_reader_may_decrypt_with_the_bucket_key_only(prod: Plan) -> None:
    policy = json.loads(prod.one("aws:iam/rolePolicy:RolePolicy", "tf-prod-model-reader").inputs["policy"])
    kms = [s for s in policy["Statement"] if s["Action"] == "kms:Decrypt"]
    assert len(kms) == 1 and kms[0]["Resource"] == prod.settings.bucket.kms_key


def test_gateway_has_its_own_role_reading_only_the_tokenizer_files(dev: Plan, prod: Plan) -> None:
    role = dev.one("aws:iam/role:Role", "tf-dev-gateway-reader").inputs
    (statement,) = json.loads(role["assumeRolePolicy"])["Statement"]
    conditions = statement["Condition"]["StringEquals"]
    assert sorted(conditions.values()) == ["sts.amazonaws.com", "system:serviceaccount:tritonform:gateway"]
    policy = json.loads(dev.one("aws:iam/rolePolicy:RolePolicy", "tf-dev-gateway-reader").inputs["policy"])
    (read,) = policy["Statement"]
    assert read["Action"] == "s3:GetObject"  # no listing, no other bucket, no other object
    bucket = "arn:aws:s3:::tf-dev-models-0123abcd"
    assert read["Resource"] == [
        f"{bucket}/models/versions/*/REPOSITORY.json",
        f"{bucket}/models/versions/*/tokenizer.json",
        f"{bucket}/models/versions/*/generation.json",
    ]
    prod_policy = json.loads(
        prod.one("aws:iam/rolePolicy:RolePolicy", "tf-prod-gateway-reader").inputs["policy"]
    )
    decrypt = [s for s in prod_policy["Statement"] if s["Action"] == "kms:Decrypt"]
    assert [s["Resource"] for s in decrypt] == [prod.settings.bucket.kms_key]


def test_the_platform_hands_the_gateway_its_reader() -> None:
    platform = provisioned("aws-dev")
    reader = platform.platform.gateway_reader
    assert reader is not None and reader is not platform.platform.reader
    annotations = platform.value(reader.service_account_annotations)
    assert annotations == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/tf-dev-gateway-reader"
    }
    assert platform.value(reader.env) == {"AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}


def test_a_prefix_scope_lists_only_under_its_prefix() -> None:
    policy = json.loads(bucket_read_policy("arn:aws:s3:::b", ReadScope(prefix="models/"), None))
    listing, reading = policy["Statement"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["models/*"]}}
    assert reading["Resource"] == "arn:aws:s3:::b/models/*"
