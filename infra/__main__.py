"""The Pulumi program: `pulumi up --stack aws-dev|gcp-dev|azure-dev` runs this file."""

from infra.program import main

main()
