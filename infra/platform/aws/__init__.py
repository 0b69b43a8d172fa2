"""AWS: VPC over several zones, EKS with IRSA, a tainted managed GPU node group, a locked-down S3 bucket."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pulumi_aws as aws

from infra.platform.aws.addons import AUTOSCALER_SA, build_registry, install_gpu_addons
from infra.platform.aws.edge import AwsEdgeTargets, build_edge
from infra.platform.aws.network import build_network
from infra.platform.base import (
    GPU_POOL_LABEL,
    GPU_POOL_LABEL_VALUE,
    GPU_TAINT_KEY,
    GPU_TAINT_VALUE,
    Capability,
    CloudPlatform,
    ContainerRegistry,
    Edge,
    EdgeBackend,
    GpuNodePool,
    GpuScheduling,
    KubernetesCluster,
    ModelBucket,
    Network,
    Platform,
    ReaderIdentity,
    ServiceAccountRef,
    ServiceExposure,
)

CONTROL_PLANE_LOGS = ["api", "audit", "authenticator", "controllerManager", "scheduler"]
NODE_POLICIES = {
    "worker": "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "cni": "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    "ecr": "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryReadOnly",
}
GPU_AMI_TYPE = "AL2023_x86_64_NVIDIA"
SYSTEM_AMI_TYPE = "AL2023_x86_64_STANDARD"


def _assume_role(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}],
        }
    )


class AwsPlatform(CloudPlatform):
    """Amazon Web Services: EKS + managed node groups + S3 + IAM roles for service accounts."""

    cloud = "aws"
    capabilities = frozenset(
        {Capability.SPOT_GPUS, Capability.CUSTOMER_MANAGED_KEYS, Capability.STREAMING_EDGE}
    )

    def provider_options(self) -> pulumi.ResourceOptions:
        provider = aws.Provider(
            "aws",
            region=self.settings.region,  # type: ignore[arg-type]
            default_tags=aws.ProviderDefaultTagsArgs(tags=self.settings.resource_tags),
        )
        return pulumi.ResourceOptions(providers={"aws": provider})

    # -- network ---------------------------------------------------------------------------------
    def network(self, opts: pulumi.ResourceOptions) -> Network:
        return build_network(self.settings, self.name, opts)

    # -- cluster ---------------------------------------------------------------------------------
    def cluster(self, network: Network, opts: pulumi.ResourceOptions) -> KubernetesCluster:
        s = self.settings
        component = KubernetesCluster(self.name("cluster"), opts)
        role = aws.iam.Role(
            self.name("eks-cluster"),
            assume_role_policy=_assume_role("eks.amazonaws.com"),
            opts=self.child(component),
        )
        attachment = aws.iam.RolePolicyAttachment(
            self.name("eks-cluster"),
            role=role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
            opts=self.child(component),
        )
        secrets_key = aws.kms.Key(
            self.name("eks-secrets"),
            description=f"Envelope encryption of Kubernetes secrets in {self.name('eks')}",
            enable_key_rotation=True,
            deletion_window_in_days=7 if s.environment == "dev" else 30,
            opts=self.child(component),
        )
        eks = aws.eks.Cluster(
            self.name("eks"),
            name=self.name("eks"),
            role_arn=role.arn,
            version=s.cluster.kubernetes_version,
            vpc_config=aws.eks.ClusterVpcConfigArgs(
                subnet_ids=network.private_subnet_ids,
                endpoint_private_access=True,
                endpoint_public_access=s.api_public,
                public_access_cidrs=list(s.cluster.endpoint_allowed_cidrs) if s.api_public else None,
            ),
            access_config=aws.eks.ClusterAccessConfigArgs(
                authentication_mode="API", bootstrap_cluster_creator_admin_permissions=True
            ),
            enabled_cluster_log_types=CONTROL_PLANE_LOGS,
            encryption_config=aws.eks.ClusterEncryptionConfigArgs(
                provider=aws.eks.ClusterEncryptionConfigProviderArgs(key_arn=secrets_key.arn),
                resources=["secrets"],
            ),
            opts=pulumi.ResourceOptions(parent=component, depends_on=[attachment]),
        )
        issuer = eks.identities.apply(lambda ids: ids[0]["oidcs"][0]["issuer"] if ids else "")
        self._oidc = aws.iam.OpenIdConnectProvider(
            self.name("eks-oidc"),
            url=issuer,
            client_id_lists=["sts.amazonaws.com"],
            opts=self.child(component),
        )
        self._node_role = aws.iam.Role(
            self.name("eks-node"),
            assume_role_policy=_assume_role("ec2.amazonaws.com"),
            opts=self.child(component),
        )
        self._node_role_attachments = [
            aws.iam.RolePolicyAttachment(
                self.name(f"eks-node-{key}"),
                role=self._node_role.name,
                policy_arn=arn,
                opts=self.child(component),
            )
            for key, arn in NODE_POLICIES.items()
        ]
        self._system_group = aws.eks.NodeGroup(
            self.name("system"),
            cluster_name=eks.name,
            node_role_arn=self._node_role.arn,
            subnet_ids=network.private_subnet_ids,
            ami_type=SYSTEM_AMI_TYPE,
            capacity_type="ON_DEMAND",
            instance_types=[s.system_instance_type],
            disk_size=s.system_pool.disk_size_gb,
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=s.system_pool.min_nodes,
                desired_size=s.system_pool.desired_nodes,
                max_size=s.system_pool.max_nodes,
            ),
            labels={GPU_POOL_LABEL: "system"},
            opts=pulumi.ResourceOptions(
                parent=component,
                depends_on=self._node_role_attachments,
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        kubeconfig = pulumi.Output.all(eks.name, eks.endpoint, eks.certificate_authority).apply(
            lambda args: _kubeconfig(args[0], args[1], args[2]["data"], s.region)
        )
        component.finish(cluster_name=eks.name, kubeconfig=kubeconfig, oidc_issuer_url=issuer)
        self._eks = eks
        return component

    # -- GPU pool --------------------------------------------------------------------------------
    def gpu_node_pool(
        self, cluster: KubernetesCluster, network: Network, opts: pulumi.ResourceOptions
    ) -> GpuNodePool:
        pool = self.settings.gpu_pool
        component = GpuNodePool(self.name("gpu-pool"), opts)
        group = aws.eks.NodeGroup(
            self.name("gpu"),
            cluster_name=cluster.cluster_name,
            node_role_arn=self._node_role.arn,
            subnet_ids=network.private_subnet_ids,
            ami_type=GPU_AMI_TYPE,
            capacity_type="SPOT" if pool.capacity == "spot" else "ON_DEMAND",
            instance_types=[pool.instance_type],
            disk_size=pool.disk_size_gb,
            scaling_config=aws.eks.NodeGroupScalingConfigArgs(
                min_size=pool.min_nodes, desired_size=pool.desired_nodes, max_size=pool.max_nodes
            ),
            labels={
                GPU_POOL_LABEL: GPU_POOL_LABEL_VALUE,
                # NVIDIA's device plugin chart only schedules onto nodes that say they have a GPU.
                "nvidia.com/gpu.present": "true",
                "nvidia.com/gpu.count": str(pool.gpus_per_node),
            },
            taints=[
                aws.eks.NodeGroupTaintArgs(key=GPU_TAINT_KEY, value=GPU_TAINT_VALUE, effect="NO_SCHEDULE")
            ],
            tags={
                # Lets the cluster autoscaler scale this group from zero with the right labels and taint.
                f"k8s.io/cluster-autoscaler/node-template/label/{GPU_POOL_LABEL}": GPU_POOL_LABEL_VALUE,
                f"k8s.io/cluster-autoscaler/node-template/taint/{GPU_TAINT_KEY}": (
                    f"{GPU_TAINT_VALUE}:NoSchedule"
                ),
                "k8s.io/cluster-autoscaler/node-template/resources/nvidia.com/gpu": str(pool.gpus_per_node),
            },
            opts=pulumi.ResourceOptions(
                parent=component,
                depends_on=self._node_role_attachments,
                # The cluster autoscaler owns the desired size once the group exists.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )
        component.finish(pool_name=group.node_group_name, scheduling=GpuScheduling.standard())
        return component

    # -- model bucket ----------------------------------------------------------------------------
    def model_bucket(self, opts: pulumi.ResourceOptions) -> ModelBucket:
        b = self.settings.bucket
        component = ModelBucket(self.name("models"), opts)
        child = self.child(component)
        bucket = aws.s3.Bucket(
            self.name("models"), bucket_prefix=self.name("models-"), force_destroy=b.force_destroy, opts=child
        )
        aws.s3.BucketPublicAccessBlock(
            self.name("models"),
            bucket=bucket.id,
            block_public_acls=True,
            block_public_policy=True,
            ignore_public_acls=True,
            restrict_public_buckets=True,
            opts=child,
        )
        aws.s3.BucketOwnershipControls(
            self.name("models"),
            bucket=bucket.id,
            rule=aws.s3.BucketOwnershipControlsRuleArgs(object_ownership="BucketOwnerEnforced"),
            opts=child,
        )
        sse = aws.s3.BucketServerSideEncryptionConfigurationRuleApplyServerSideEncryptionByDefaultArgs(
            sse_algorithm="aws:kms" if b.kms_key else "AES256",
            kms_master_key_id=b.kms_key,
        )
        aws.s3.BucketServerSideEncryptionConfiguration(
            self.name("models"),
            bucket=bucket.id,
            rules=[
                aws.s3.BucketServerSideEncryptionConfigurationRuleArgs(
                    apply_server_side_encryption_by_default=sse, bucket_key_enabled=bool(b.kms_key)
                )
            ],
            opts=child,
        )
        aws.s3.BucketVersioning(
            self.name("models"),
            bucket=bucket.id,
            versioning_configuration=aws.s3.BucketVersioningVersioningConfigurationArgs(status="Enabled"),
            opts=child,
        )
        aws.s3.BucketLifecycleConfiguration(
            self.name("models"),
            bucket=bucket.id,
            rules=[
                aws.s3.BucketLifecycleConfigurationRuleArgs(
                    id="expire-old-model-versions",
                    status="Enabled",
                    filter=aws.s3.BucketLifecycleConfigurationRuleFilterArgs(prefix=""),
                    noncurrent_version_expiration=aws.s3.BucketLifecycleConfigurationRuleNoncurrentVersionExpirationArgs(
                        noncurrent_days=b.noncurrent_version_days
                    ),
                    abort_incomplete_multipart_upload=aws.s3.BucketLifecycleConfigurationRuleAbortIncompleteMultipartUploadArgs(
                        days_after_initiation=2
                    ),
                )
            ],
            opts=child,
        )
        aws.s3.BucketPolicy(
            self.name("models-tls-only"),
            bucket=bucket.id,
            policy=bucket.arn.apply(_deny_insecure_transport),
            opts=child,
        )
        self._bucket = bucket
        component.finish(bucket_name=bucket.bucket, uri=bucket.bucket.apply(lambda name: f"s3://{name}"))
        return component

    # -- reader identity (IRSA) ------------------------------------------------------------------
    def model_reader(
        self,
        cluster: KubernetesCluster,
        bucket: ModelBucket,
        service_account: ServiceAccountRef,
        opts: pulumi.ResourceOptions,
    ) -> ReaderIdentity:
        component = ReaderIdentity(self.name("model-reader"), opts)
        trust = self._irsa_trust_for(cluster, service_account)
        role = aws.iam.Role(
            self.name("model-reader"),
            description=f"Read-only access to the model bucket for {service_account.subject}",
            assume_role_policy=trust,
            max_session_duration=3600,
            opts=self.child(component),
        )
        aws.iam.RolePolicy(
            self.name("model-reader"),
            role=role.id,
            policy=self._bucket.arn.apply(lambda arn: _bucket_read_policy(arn, self.settings.bucket.kms_key)),
            opts=self.child(component),
        )
        component.finish(
            identity_id=role.arn,
            service_account_annotations={"eks.amazonaws.com/role-arn": role.arn},
            env={"AWS_DEFAULT_REGION": self.settings.region, "AWS_REGION": self.settings.region},
        )
        return component

    # -- GPU enablement, registry, edge --------------------------------------------------------
    def _irsa_trust_for(self, cluster: KubernetesCluster, account: ServiceAccountRef) -> pulumi.Output[str]:
        issuer_host = cluster.oidc_issuer_url.apply(lambda url: url.removeprefix("https://"))
        return pulumi.Output.all(self._oidc.arn, issuer_host).apply(
            lambda args: _irsa_trust(args[0], args[1], account.subject)
        )

    def gpu_enablement(
        self, cluster: KubernetesCluster, gpu_pool: GpuNodePool, opts: pulumi.ResourceOptions
    ) -> None:
        addons = pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(depends_on=[gpu_pool]))
        install_gpu_addons(self.settings, cluster, self._irsa_trust_for(cluster, AUTOSCALER_SA), addons)

    def container_registry(self, opts: pulumi.ResourceOptions) -> ContainerRegistry:
        return build_registry(self.settings, opts)

    def gateway_exposure(self) -> ServiceExposure:
        # A fixed NodePort on the system nodes, behind an internal NLB that Pulumi owns (so the API
        # gateway's VPC link can target it); traffic comes only from inside the VPC.
        return ServiceExposure(
            type="NodePort",
            source_ranges=(self.settings.network.cidr,),
            node_port=self.settings.edge.gateway_node_port,
        )

    def edge(self, platform: Platform, backend: EdgeBackend, opts: pulumi.ResourceOptions) -> Edge:
        targets = AwsEdgeTargets(
            vpc_id=platform.network.network_id,
            private_subnet_ids=platform.network.private_subnet_ids,
            node_security_group_id=self._eks.vpc_config.cluster_security_group_id,
            node_group=self._system_group,
        )
        return build_edge(self.settings, targets, backend, opts)


def _kubeconfig(name: str, endpoint: str, ca_data: str, region: str) -> str:
    """A kubeconfig that authenticates through `aws eks get-token` (no long-lived key in it)."""
    config: dict[str, Any] = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": {"server": endpoint, "certificate-authority-data": ca_data}}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
        "current-context": name,
        "users": [
            {
                "name": name,
                "user": {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1beta1",
                        "command": "aws",
                        "args": ["eks", "get-token", "--cluster-name", name, "--region", region],
                    }
                },
            }
        ],
    }
    return json.dumps(config)


def _deny_insecure_transport(bucket_arn: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Sid": "DenyInsecureTransport",
                    "Effect": "Deny",
                    "Principal": "*",
                    "Action": "s3:*",
                    "Resource": [bucket_arn, f"{bucket_arn}/*"],
                    "Condition": {"Bool": {"aws:SecureTransport": "false"}},
                }
            ],
        }
    )


def _irsa_trust(oidc_arn: str, issuer_host: str, subject: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Federated": oidc_arn},
                    "Action": "sts:AssumeRoleWithWebIdentity",
                    "Condition": {
                        "StringEquals": {
                            f"{issuer_host}:sub": subject,
                            f"{issuer_host}:aud": "sts.amazonaws.com",
                        }
                    },
                }
            ],
        }
    )


def _bucket_read_policy(bucket_arn: str, kms_key: str | None) -> str:
    statements: list[dict[str, Any]] = [
        {
            "Sid": "ListModelBucket",
            "Effect": "Allow",
            "Action": ["s3:ListBucket", "s3:GetBucketLocation"],
            "Resource": bucket_arn,
        },
        {
            "Sid": "ReadModelObjects",
            "Effect": "Allow",
            "Action": ["s3:GetObject", "s3:GetObjectVersion"],
            "Resource": f"{bucket_arn}/*",
        },
    ]
    if kms_key:
        statements.append(
            {"Sid": "DecryptModelObjects", "Effect": "Allow", "Action": "kms:Decrypt", "Resource": kms_key}
        )
    return json.dumps({"Version": "2012-10-17", "Statement": statements})
