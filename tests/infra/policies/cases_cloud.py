"""Violating and passing inputs for the storage, cluster and identity rules (one pair per case)."""

from __future__ import annotations

from typing import Any

from infra.policies.base import Resource, StackView
from tests.infra.policies.factories import mutate, policy, res, stack

# -- AWS storage ---------------------------------------------------------------------------------
S3 = "aws:s3/bucket:Bucket"
PAB = "aws:s3/bucketPublicAccessBlock:BucketPublicAccessBlock"
SSE = "aws:s3/bucketServerSideEncryptionConfiguration:BucketServerSideEncryptionConfiguration"
S3_POLICY = "aws:s3/bucketPolicy:BucketPolicy"
ARN = "arn:aws:s3:::tf-dev-models-0123abcd"


def s3_stack(name: str = "tf-dev-models") -> list[Resource]:
    flags = {
        k: True for k in ("blockPublicAcls", "blockPublicPolicy", "ignorePublicAcls", "restrictPublicBuckets")
    }
    deny_http = {
        "Effect": "Deny",
        "Principal": "*",
        "Action": "s3:*",
        "Resource": [ARN, f"{ARN}/*"],
        "Condition": {"Bool": {"aws:SecureTransport": "false"}},
    }
    return [
        res(S3, name, bucketPrefix=f"{name}-"),
        res(PAB, name, bucket=f"{name}-id", **flags),
        res(
            SSE,
            name,
            bucket=f"{name}-id",
            rules=[{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "aws:kms"}}],
        ),
        res(S3_POLICY, f"{name}-tls-only", bucket=f"{name}-id", policy=policy(deny_http)),
    ]


def replace(resources: list[Resource], new: Resource) -> list[Resource]:
    return [new if (r.type, r.name) == (new.type, new.name) else r for r in resources]


def without(resources: list[Resource], type_: str) -> list[Resource]:
    return [r for r in resources if r.type != type_]


GOOD_S3 = s3_stack()
PUBLIC_POLICY = res(
    S3_POLICY,
    "tf-dev-models-tls-only",
    bucket="tf-dev-models-id",
    policy=policy({"Effect": "Allow", "Principal": "*", "Action": "s3:GetObject", "Resource": f"{ARN}/*"}),
)

# -- GCS / Azure storage -------------------------------------------------------------------------
GCS = res(
    "gcp:storage/bucket:Bucket",
    "tf-dev-models",
    publicAccessPrevention="enforced",
    uniformBucketLevelAccess=True,
)
GCS_READER = res(
    "gcp:storage/bucketIAMMember:BucketIAMMember",
    "tf-dev-reader-objects",
    bucket="tf-dev-models-a1b2c3d",
    role="roles/storage.objectViewer",
    member="serviceAccount:tf-dev-reader@p.iam.gserviceaccount.com",
)
AZ_ACCOUNT = res(
    "azure-native:storage:StorageAccount",
    "tf-dev-models",
    allowBlobPublicAccess=False,
    enableHttpsTrafficOnly=True,
    minimumTlsVersion="TLS1_2",
    accountName="tfdevmodels1",
    encryption={"services": {"blob": {"enabled": True}}, "keySource": "Microsoft.Storage"},
)
AZ_CONTAINER = res(
    "azure-native:storage:BlobContainer",
    "tf-dev-models",
    publicAccess="None",
    containerName="models",
    accountName="tfdevmodels1",
)

# -- clusters ------------------------------------------------------------------------------------
EKS_GPU = res(
    "aws:eks/nodeGroup:NodeGroup",
    "tf-dev-gpu",
    amiType="AL2023_x86_64_NVIDIA",
    instanceTypes=["g5.xlarge"],
    taints=[{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}],
)
GKE_GPU = res(
    "gcp:container/nodePool:NodePool",
    "tf-dev-gpu",
    nodeConfig={
        "machineType": "g2-standard-8",
        "guestAccelerators": [{"type": "nvidia-l4", "count": 1}],
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NO_SCHEDULE"}],
    },
)
AKS_GPU = res(
    "azure-native:containerservice:AgentPool",
    "tf-dev-gpu",
    vmSize="Standard_NC4as_T4_v3",
    nodeTaints=["nvidia.com/gpu=present:NoSchedule", "kubernetes.azure.com/scalesetpriority=spot:NoSchedule"],
)
AKS_PROFILE_GPU = res(
    "azure-native:containerservice:ManagedCluster",
    "tf-dev-aks",
    agentPoolProfiles=[
        {"name": "system", "vmSize": "Standard_D4s_v5"},
        {"name": "gpu", "vmSize": "Standard_NC4as_T4_v3", "nodeTaints": ["nvidia.com/gpu:NoSchedule"]},
    ],
)

EKS = res(
    "aws:eks/cluster:Cluster",
    "tf-prod-eks",
    vpcConfig={"endpointPrivateAccess": True, "endpointPublicAccess": False},
)
EKS_OPEN = mutate(EKS, "vpcConfig", {"endpointPublicAccess": True, "publicAccessCidrs": ["0.0.0.0/0"]})
GKE = res(
    "gcp:container/cluster:Cluster",
    "tf-prod-gke",
    privateClusterConfig={"enablePrivateNodes": True, "enablePrivateEndpoint": True},
)
AKS = res(
    "azure-native:containerservice:ManagedCluster",
    "tf-prod-aks",
    apiServerAccessProfile={"enablePrivateCluster": True},
)

# -- identity ------------------------------------------------------------------------------------
TRUST = policy(
    {
        "Effect": "Allow",
        "Principal": {"Federated": "arn:aws:iam::1:oidc-provider/x"},
        "Action": "sts:AssumeRoleWithWebIdentity",
        "Condition": {"StringEquals": {"oidc.eks/id/X:sub": "system:serviceaccount:tritonform:triton"}},
    }
)
ROLE = res("aws:iam/role:Role", "tf-dev-model-reader", assumeRolePolicy=TRUST)
READ: list[dict[str, Any]] = [
    {"Effect": "Allow", "Action": ["s3:ListBucket", "s3:GetBucketLocation"], "Resource": ARN},
    {"Effect": "Allow", "Action": ["s3:GetObject", "s3:GetObjectVersion"], "Resource": f"{ARN}/*"},
    {"Effect": "Allow", "Action": "kms:Decrypt", "Resource": "arn:aws:kms:eu-west-1:1:key/abc"},
]


def role_policy(*statements: dict[str, Any]) -> Resource:
    return res(
        "aws:iam/rolePolicy:RolePolicy",
        "tf-dev-model-reader",
        role="tf-dev-model-reader-id",
        policy=policy(*statements),
    )


AWS_IDENTITY = [*GOOD_S3, ROLE, role_policy(*READ)]
WI_BINDING = res(
    "gcp:serviceaccount/iAMMember:IAMMember",
    "tf-dev-reader-workload-identity",
    serviceAccountId="projects/p/serviceAccounts/tf-dev-reader@p.iam.gserviceaccount.com",
    member="serviceAccount:p.svc.id.goog[tritonform/triton]",
    role="roles/iam.workloadIdentityUser",
)
GCP_IDENTITY = [GCS, GCS_READER, WI_BINDING]
CONTAINER_SCOPE = (
    "/subscriptions/s/resourceGroups/rg/providers/Microsoft.Storage/storageAccounts/tfdevmodels1"
)
AZ_ASSIGNMENT = res(
    "azure-native:authorization:RoleAssignment",
    "tf-dev-model-reader",
    principalType="ServicePrincipal",
    roleDefinitionId="/subscriptions/s/providers/Microsoft.Authorization/roleDefinitions/"
    "2a2b9908-6ea1-4ae2-8e65-a410df84e7d1",
    scope=f"{CONTAINER_SCOPE}/blobServices/default/containers/models",
    principalId="p-1",
)
AZ_IDENTITY = [AZ_ACCOUNT, AZ_CONTAINER, AZ_ASSIGNMENT]


def s(resources: list[Resource], **kw: Any) -> StackView:
    return stack(*resources, **kw)


# (case id, rule, violating input, passing input)
CASES: list[tuple[str, str, Any, Any]] = [
    ("s3-no-public-access-block", "buckets-not-public", s(without(GOOD_S3, PAB)), s(GOOD_S3)),
    (
        "s3-block-flag-off",
        "buckets-not-public",
        s(replace(GOOD_S3, mutate(GOOD_S3[1], "restrictPublicBuckets", False))),
        s(GOOD_S3),
    ),
    (
        "s3-public-acl",
        "buckets-not-public",
        s(replace(GOOD_S3, mutate(GOOD_S3[0], "acl", "public-read"))),
        s(GOOD_S3),
    ),
    ("s3-public-policy", "buckets-not-public", s(replace(GOOD_S3, PUBLIC_POLICY)), s(GOOD_S3)),
    (
        "s3-other-bucket-has-the-block",
        "buckets-not-public",
        s([*without(GOOD_S3, PAB), *s3_stack("tf-dev-models-logs")]),
        s([*GOOD_S3, *s3_stack("tf-dev-models-logs")]),
    ),
    (
        "gcs-prevention-off",
        "buckets-not-public",
        s([mutate(GCS, "publicAccessPrevention", "inherited")]),
        s([GCS]),
    ),
    ("gcs-object-acls", "buckets-not-public", s([mutate(GCS, "uniformBucketLevelAccess", False)]), s([GCS])),
    (
        "gcs-all-users",
        "buckets-not-public",
        s([GCS, mutate(GCS_READER, "member", "allUsers")]),
        s([GCS, GCS_READER]),
    ),
    (
        "azure-account-public",
        "buckets-not-public",
        s([mutate(AZ_ACCOUNT, "allowBlobPublicAccess", True), AZ_CONTAINER]),
        s([AZ_ACCOUNT, AZ_CONTAINER]),
    ),
    (
        "azure-account-default-public",
        "buckets-not-public",
        s([mutate(AZ_ACCOUNT, "allowBlobPublicAccess", None)]),
        s([AZ_ACCOUNT]),
    ),
    (
        "azure-container-public",
        "buckets-not-public",
        s([AZ_ACCOUNT, mutate(AZ_CONTAINER, "publicAccess", "Blob")]),
        s([AZ_ACCOUNT, AZ_CONTAINER]),
    ),
    ("s3-no-sse", "buckets-encrypted", s(without(GOOD_S3, SSE)), s(GOOD_S3)),
    (
        "s3-bad-sse",
        "buckets-encrypted",
        s(
            replace(
                GOOD_S3,
                mutate(
                    GOOD_S3[2], "rules", [{"applyServerSideEncryptionByDefault": {"sseAlgorithm": "none"}}]
                ),
            )
        ),
        s(GOOD_S3),
    ),
    (
        "gcs-empty-cmek",
        "buckets-encrypted",
        s([mutate(GCS, "encryption", {})]),
        s(
            [
                mutate(
                    GCS, "encryption", {"defaultKmsKeyName": "projects/p/locations/l/keyRings/r/cryptoKeys/k"}
                )
            ]
        ),
    ),
    (
        "azure-http",
        "buckets-encrypted",
        s([mutate(AZ_ACCOUNT, "enableHttpsTrafficOnly", False)]),
        s([AZ_ACCOUNT]),
    ),
    (
        "azure-old-tls",
        "buckets-encrypted",
        s([mutate(AZ_ACCOUNT, "minimumTlsVersion", "TLS1_0")]),
        s([AZ_ACCOUNT]),
    ),
    (
        "azure-blob-unencrypted",
        "buckets-encrypted",
        s([mutate(AZ_ACCOUNT, "encryption", {"services": {"blob": {"enabled": False}}})]),
        s([AZ_ACCOUNT]),
    ),
    ("s3-no-tls-policy", "buckets-tls-only", s(without(GOOD_S3, S3_POLICY)), s(GOOD_S3)),
    ("eks-gpu-untainted", "gpu-pools-tainted", mutate(EKS_GPU, "taints", None), EKS_GPU),
    (
        "eks-gpu-by-instance",
        "gpu-pools-tainted",
        res(
            "aws:eks/nodeGroup:NodeGroup",
            "g",
            amiType="AL2023_x86_64_STANDARD",
            instanceTypes=["p4d.24xlarge"],
        ),
        res(
            "aws:eks/nodeGroup:NodeGroup",
            "sys",
            amiType="AL2023_x86_64_STANDARD",
            instanceTypes=["m6i.large"],
        ),
    ),
    (
        "eks-gpu-prefer-no-schedule",
        "gpu-pools-tainted",
        mutate(EKS_GPU, "taints", [{"key": "nvidia.com/gpu", "effect": "PREFER_NO_SCHEDULE"}]),
        EKS_GPU,
    ),
    ("gke-gpu-untainted", "gpu-pools-tainted", mutate(GKE_GPU, "nodeConfig.taints", None), GKE_GPU),
    (
        "aks-gpu-untainted",
        "gpu-pools-tainted",
        mutate(AKS_GPU, "nodeTaints", ["kubernetes.azure.com/scalesetpriority=spot:NoSchedule"]),
        AKS_GPU,
    ),
    (
        "aks-profile-untainted",
        "gpu-pools-tainted",
        mutate(AKS_PROFILE_GPU, "agentPoolProfiles", [{"name": "gpu", "vmSize": "Standard_NC24ads_A100_v4"}]),
        AKS_PROFILE_GPU,
    ),
    ("eks-api-world", "kubernetes-api-not-public-in-prod", s([EKS_OPEN]), s([EKS])),
    (
        "eks-api-default-cidrs",
        "kubernetes-api-not-public-in-prod",
        s([mutate(EKS, "vpcConfig", {"endpointPrivateAccess": True})]),
        s(
            [
                mutate(
                    EKS, "vpcConfig", {"endpointPublicAccess": True, "publicAccessCidrs": ["198.51.100.0/24"]}
                )
            ]
        ),
    ),
    (
        "eks-api-dev-not-mandatory",
        "kubernetes-api-not-public-in-prod",
        s([EKS_OPEN]),
        s([EKS_OPEN], env="dev"),
    ),
    (
        "gke-api-open",
        "kubernetes-api-not-public-in-prod",
        s([mutate(GKE, "privateClusterConfig", {"enablePrivateNodes": True})]),
        s([GKE]),
    ),
    (
        "gke-api-world-network",
        "kubernetes-api-not-public-in-prod",
        s(
            [
                mutate(
                    mutate(GKE, "privateClusterConfig", {"enablePrivateNodes": True}),
                    "masterAuthorizedNetworksConfig",
                    {"cidrBlocks": [{"cidrBlock": "0.0.0.0/0"}]},
                )
            ]
        ),
        s(
            [
                mutate(
                    mutate(GKE, "privateClusterConfig", {"enablePrivateNodes": True}),
                    "masterAuthorizedNetworksConfig",
                    {"cidrBlocks": [{"cidrBlock": "10.0.0.0/8"}]},
                )
            ]
        ),
    ),
    (
        "aks-api-world",
        "kubernetes-api-not-public-in-prod",
        s([mutate(AKS, "apiServerAccessProfile", {"authorizedIPRanges": ["0.0.0.0/0"]})]),
        s([mutate(AKS, "apiServerAccessProfile", {"authorizedIPRanges": ["198.51.100.0/24"]})]),
    ),
    (
        "aks-api-no-profile",
        "kubernetes-api-not-public-in-prod",
        s([mutate(AKS, "apiServerAccessProfile", None)]),
        s([AKS]),
    ),
    ("eks-api-world-dev", "kubernetes-api-restricted-in-dev", s([EKS_OPEN], env="dev"), s([EKS], env="dev")),
    (
        "aws-reader-wildcard-action",
        "triton-identity-reads-only-its-bucket",
        s([*GOOD_S3, ROLE, role_policy({"Effect": "Allow", "Action": "s3:*", "Resource": f"{ARN}/*"})]),
        s(AWS_IDENTITY),
    ),
    (
        "aws-reader-other-bucket",
        "triton-identity-reads-only-its-bucket",
        s(
            [
                *GOOD_S3,
                ROLE,
                role_policy({"Effect": "Allow", "Action": "s3:GetObject", "Resource": "arn:aws:s3:::*/*"}),
            ]
        ),
        s(AWS_IDENTITY),
    ),
    (
        "aws-reader-write",
        "triton-identity-reads-only-its-bucket",
        s(
            [
                *GOOD_S3,
                ROLE,
                role_policy(*READ, {"Effect": "Allow", "Action": "s3:PutObject", "Resource": f"{ARN}/*"}),
            ]
        ),
        s(AWS_IDENTITY),
    ),
    (
        "aws-reader-managed-policy",
        "triton-identity-reads-only-its-bucket",
        s(
            [
                *AWS_IDENTITY,
                res(
                    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                    "tf-dev-model-reader-ro",
                    role="tf-dev-model-reader",
                    policyArn="arn:aws:iam::aws:policy/AmazonS3ReadOnlyAccess",
                ),
            ]
        ),
        s(
            [
                *AWS_IDENTITY,
                res(
                    "aws:iam/rolePolicyAttachment:RolePolicyAttachment",
                    "tf-dev-eks-node-cni",
                    role="tf-dev-eks-node",
                    policyArn="arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
                ),
            ]
        ),
    ),
    (
        "gcp-reader-project-role",
        "triton-identity-reads-only-its-bucket",
        s(
            [
                *GCP_IDENTITY,
                res(
                    "gcp:projects/iAMMember:IAMMember",
                    "x",
                    project="p",
                    role="roles/storage.admin",
                    member=GCS_READER.props["member"],
                ),
            ]
        ),
        s(GCP_IDENTITY),
    ),
    (
        "gcp-reader-writes",
        "triton-identity-reads-only-its-bucket",
        s([GCS, mutate(GCS_READER, "role", "roles/storage.objectAdmin"), WI_BINDING]),
        s(GCP_IDENTITY),
    ),
    (
        "gcp-reader-other-bucket",
        "triton-identity-reads-only-its-bucket",
        s([GCS, mutate(GCS_READER, "bucket", "someone-elses-bucket"), WI_BINDING]),
        s(GCP_IDENTITY),
    ),
    (
        "azure-reader-contributor",
        "triton-identity-reads-only-its-bucket",
        s(
            [
                AZ_ACCOUNT,
                AZ_CONTAINER,
                mutate(AZ_ASSIGNMENT, "roleDefinitionId", "/x/b24988ac-6180-42a0-ab88-20f7382dd24c"),
            ]
        ),
        s(AZ_IDENTITY),
    ),
    (
        "azure-reader-whole-account",
        "triton-identity-reads-only-its-bucket",
        s([AZ_ACCOUNT, AZ_CONTAINER, mutate(AZ_ASSIGNMENT, "scope", CONTAINER_SCOPE)]),
        s(AZ_IDENTITY),
    ),
]
