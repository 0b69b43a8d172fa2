"""The Pulumi program: `pulumi up --stack aws-dev|gcp-dev|azure-dev` runs this file."""

import pulumi

from infra.program import build_stack, settings_from_pulumi

for _name, _value in build_stack(settings_from_pulumi()).items():
    pulumi.export(_name, _value)
