"""The real Pulumi program, run offline under Pulumi's mocks: no CLI, no credentials, no cloud.

- `plan.py`: `plan_stack` runs `infra/__main__.py` for a stack file and records every resource.
- `render.py`: the Kubernetes objects of a plan as YAML, validated against the cluster version's schemas.
- `mocks/`: what each cloud (one module per cloud) and the neutral providers would return.
"""

from infra.offline.mocks import UnmockedInvokeError
from infra.offline.plan import SECRET, Plan, PlannedResource, plan_stack

__all__ = ["SECRET", "Plan", "PlannedResource", "UnmockedInvokeError", "plan_stack"]
