"""Provider behaviour for the offline plan: one module per cloud, one for the neutral providers, and the
dispatch `CloudMocks` that Pulumi's mock monitor calls for every resource and provider function."""

from __future__ import annotations

from typing import Any

from pulumi.runtime import mocks as pulumi_mocks

from infra.offline.mocks.aws import aws_call, aws_resource
from infra.offline.mocks.azure import azure_call, azure_resource
from infra.offline.mocks.gcp import gcp_call, gcp_resource
from infra.offline.mocks.neutral import neutral_resource
from infra.settings import StackSettings


class UnmockedInvokeError(RuntimeError):
    """The program called a provider function the offline plan cannot answer."""


class CloudMocks(pulumi_mocks.Mocks):
    """Provider behaviour for the offline plan: ids, ARNs and endpoints a real create would return."""

    def __init__(self, settings: StackSettings) -> None:
        self.settings = settings

    def new_resource(self, args: pulumi_mocks.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        name, typ, state = args.name, args.typ, dict(args.inputs)
        if typ.startswith("aws:"):
            return aws_resource(typ, name, state, self.settings)
        neutral = neutral_resource(typ, name, state)
        if neutral is not None:
            return neutral
        if typ.startswith("gcp:"):
            return gcp_resource(typ, name, state, self.settings)
        elif typ.startswith("azure-native:"):
            return azure_resource(typ, name, state, self.settings)
        return f"{name}-id", state

    def call(self, args: pulumi_mocks.MockCallArgs) -> tuple[dict[str, Any], list[tuple[str, str]]]:
        token = args.token
        answer = aws_call(token, dict(args.args), self.settings)
        if answer is None:
            answer = gcp_call(token, dict(args.args), self.settings)
        if answer is None:
            answer = azure_call(token, dict(args.args), self.settings)
        if answer is not None:
            return answer, []
        raise UnmockedInvokeError(
            f"the offline plan has no answer for the provider function {token!r}; "
            "add it to infra/offline/mocks/"
        )
