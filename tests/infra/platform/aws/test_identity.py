"""AWS reader identity (aws/identity.py): an IRSA role for Triton, reading the model bucket only."""

from __future__ import annotations

import json

from infra.offline import Plan


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
