"""The tritonform CrossGuard policy pack: `pulumi preview --policy-pack infra/policies/pack`.

Constructing `PolicyPack` starts the analyzer's gRPC server and blocks, so it happens only here; the
policies themselves come from `infra.policies.adapter`, which tests import directly.
"""

import sys
from pathlib import Path

# The pack runs from its own directory; make the repository (and so `infra`) importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[3]))

from pulumi_policy import PolicyPack

from infra.policies.adapter import PACK_NAME, policies

PolicyPack(name=PACK_NAME, policies=policies())
