"""Shell commands that copy a bucket prefix to or from a pod's local disk, per storage scheme.

Used by the Jobs that run on the cluster and move files through the stack's bucket (training: the
dataset in, the checkpoint out). Each scheme's official CLI image does the copy; on Azure the CLI signs
in with the pod's workload identity first. Plain functions of plain values: no resources.
"""

from __future__ import annotations

import shlex

from model_repo.storage import StorageUri

# The bucket's command line tool per storage scheme.
SYNC_IMAGES = {
    "s3": "public.ecr.aws/aws-cli/aws-cli:2.22.35",
    "gs": "gcr.io/google.com/cloudsdktool/google-cloud-cli:502.0.0-slim",
    "as": "mcr.microsoft.com/azure-cli:2.67.0",
}
# The Azure CLI signs in with the pod's workload identity (the webhook projects these variables).
AZURE_LOGIN = (
    'az login --service-principal -u "$AZURE_CLIENT_ID" -t "$AZURE_TENANT_ID" '
    '--federated-token "$(cat $AZURE_FEDERATED_TOKEN_FILE)" --output none'
)


def sync_command(scheme: str, source: str, target: str) -> str:
    """Shell command that copies a prefix between a bucket and a local directory (either way)."""
    if scheme == "s3":
        return f"aws s3 sync {shlex.quote(source)} {shlex.quote(target)} --only-show-errors"
    if scheme == "gs":
        return f"gcloud storage rsync --recursive {shlex.quote(source)} {shlex.quote(target)}"
    # Azure: workload identity login, then the batch copy commands (as://ACCOUNT/CONTAINER/PREFIX)
    if source.startswith("as://"):
        loc = StorageUri.parse(source)
        return (
            f"{AZURE_LOGIN} && az storage blob download-batch --auth-mode login --account-name {loc.account} "
            f"-s {loc.bucket} --pattern {shlex.quote(loc.prefix + '/*')} -d {shlex.quote(target)} && "
            f"cp -r {shlex.quote(target)}/{shlex.quote(loc.prefix)}/. {shlex.quote(target)}/"
        )
    loc = StorageUri.parse(target)
    return (
        f"{AZURE_LOGIN} && az storage blob upload-batch --auth-mode login --account-name {loc.account} "
        f"-d {loc.bucket} --destination-path {shlex.quote(loc.prefix)} -s {shlex.quote(source)} --overwrite"
    )
