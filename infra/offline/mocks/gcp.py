"""What Google Cloud would return for the resources and functions the GCP platform uses (offline plan)."""

from __future__ import annotations

from typing import Any

from infra.settings import StackSettings

# Pulumi appends a random suffix to auto-named resources; a fixed one keeps plans reproducible.
AUTONAME_SUFFIX = "a1b2c3d"
CA_DATA = "Q0VSVElGSUNBVEU="
EDGE_IP = "34.117.10.20"
ACCESS_TOKEN = "ya29.offline-placeholder-token"


def gcp_resource(
    typ: str, name: str, inputs: dict[str, Any], settings: StackSettings
) -> tuple[str, dict[str, Any]]:
    """The id and state a GCP create would return for `typ` with `inputs`."""
    state = dict(inputs)
    project = settings.gcp.project if settings.gcp else "project"
    region = settings.region
    state.setdefault("name", f"{name}-{AUTONAME_SUFFIX}")
    resource_name = state["name"]
    resource_id = f"{name}-id"
    if typ == "gcp:compute/network:Network":
        resource_id = f"projects/{project}/global/networks/{resource_name}"
    elif typ == "gcp:compute/subnetwork:Subnetwork":
        resource_id = f"projects/{project}/regions/{region}/subnetworks/{resource_name}"
    elif typ == "gcp:container/cluster:Cluster":
        resource_id = f"projects/{project}/locations/{inputs.get('location')}/clusters/{resource_name}"
        private = (inputs.get("privateClusterConfig") or {}).get("enablePrivateEndpoint", False)
        state["endpoint"] = "10.0.0.2" if private else "34.118.0.10"
        state["masterAuth"] = {**(inputs.get("masterAuth") or {}), "clusterCaCertificate": CA_DATA}
        state["selfLink"] = f"https://container.googleapis.com/v1/{resource_id}"
    elif typ == "gcp:container/nodePool:NodePool":
        resource_id = f"{inputs.get('location')}/{resource_name}"
    elif typ == "gcp:serviceaccount/account:Account":
        email = f"{inputs['accountId']}@{project}.iam.gserviceaccount.com"
        resource_id = f"projects/{project}/serviceAccounts/{email}"
        state.update(email=email, name=resource_id, member=f"serviceAccount:{email}", uniqueId="1234567890")
    elif typ == "gcp:compute/globalAddress:GlobalAddress":
        resource_id = f"projects/{project}/global/addresses/{resource_name}"
        state.update(address=EDGE_IP, selfLink=f"https://www.googleapis.com/compute/v1/{resource_id}")
    elif typ == "gcp:compute/securityPolicy:SecurityPolicy":
        resource_id = f"projects/{project}/global/securityPolicies/{resource_name}"
        state["selfLink"] = f"https://www.googleapis.com/compute/v1/{resource_id}"
    elif typ == "gcp:artifactregistry/repository:Repository":
        state["name"] = inputs["repositoryId"]
        resource_id = f"projects/{project}/locations/{inputs['location']}/repositories/{state['name']}"
    elif typ.startswith("gcp:certificatemanager/"):
        kind = {"Certificate": "certificates", "CertificateMap": "certificateMaps"}.get(typ.rsplit(":", 1)[1])
        resource_id = f"projects/{project}/locations/global/{kind or 'certificateMapEntries'}/{resource_name}"
    elif typ == "gcp:storage/bucket:Bucket":
        resource_id = resource_name
        state.update(
            url=f"gs://{resource_name}", selfLink=f"https://www.googleapis.com/storage/v1/b/{resource_name}"
        )
    return resource_id, state


def gcp_call(token: str, args: dict[str, Any], settings: StackSettings) -> dict[str, Any] | None:
    """The result of a GCP provider function, or None when this module does not know it."""
    project = settings.gcp.project if settings.gcp else "project"
    if token == "gcp:compute/getZones:getZones":
        region = args.get("region") or settings.region
        names = [f"{region}-{z}" for z in "abcf"]
        return {"names": names, "project": project, "region": region, "id": region}
    if token == "gcp:storage/getProjectServiceAccount:getProjectServiceAccount":
        email = "service-123456789012@gs-project-accounts.iam.gserviceaccount.com"
        return {"emailAddress": email, "member": f"serviceAccount:{email}", "project": project, "id": email}
    if token == "gcp:organizations/getClientConfig:getClientConfig":
        # The deployer's OAuth token; the real one is short-lived and never leaves Pulumi's secrets.
        return {
            "accessToken": ACCESS_TOKEN,
            "project": project,
            "region": settings.region,
            "zone": "",
            "id": project,
            "defaultLabels": {},
        }
    return None
