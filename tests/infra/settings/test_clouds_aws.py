"""The `tritonform:aws` block (infra/settings/clouds.py): optional, defaulted, and every wrong value named."""

from __future__ import annotations

from typing import Any

import pytest

from infra.settings import AwsSettings, SettingsError, load_settings

AWS: dict[str, Any] = {"cloud": "aws", "region": "us-east-1", "gpuPool": {"instanceType": "g5.xlarge"}}


def test_an_aws_stack_needs_no_aws_block_and_its_defaults_follow_the_gateway() -> None:
    settings = load_settings(AWS)
    assert settings.aws is None
    defaults = AwsSettings()
    assert defaults.waf_window_seconds == 300
    assert all(rule.endswith("_BODY") for rule in defaults.waf_count_only_rules)
    assert "SizeRestrictions_BODY" in defaults.waf_count_only_rules
    # The per-key limit defaults to the gateway's own, held for every minute of the window.
    assert defaults.requests_per_key(settings.gateway.requests_per_minute) == 60 * 5
    assert AwsSettings(waf_window_seconds=60).requests_per_key(3) == 10  # WAF's smallest limit
    assert AwsSettings(waf_requests_per_key=1000).requests_per_key(60) == 1000


def test_the_aws_block_is_read_from_camel_case_keys() -> None:
    settings = load_settings(
        {
            **AWS,
            "aws": {
                "wafWindowSeconds": 600,
                "wafCountOnlyRules": ["SizeRestrictions_BODY", "CrossSiteScripting_BODY"],
                "logRetentionDays": 365,
                "manageApiGatewayAccount": False,
            },
        }
    )
    assert settings.aws is not None
    assert settings.aws.waf_count_only_rules == ("SizeRestrictions_BODY", "CrossSiteScripting_BODY")
    assert (settings.aws.log_retention_days, settings.aws.manage_api_gateway_account) == (365, False)


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        ({"wafWindowSeconds": 30}, "tritonform:aws.wafWindowSeconds"),
        ({"wafRequestsPerKey": 5}, "tritonform:aws.wafRequestsPerKey"),
        ({"wafCountOnlyRules": ["SizeRestrictions_Body"]}, "SizeRestrictions_Body not in AWSManagedRules"),
        ({"logRetentionDays": 100}, "tritonform:aws.logRetentionDays: CloudWatch keeps logs for one of"),
        ({"wafBlockEverything": True}, "tritonform:aws.wafBlockEverything: unknown setting"),
    ],
)
def test_aws_errors_name_the_key(block: dict[str, Any], expected: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({**AWS, "aws": block})
    assert expected in str(caught.value)


def test_the_aws_block_belongs_to_aws_stacks_only() -> None:
    config = {"cloud": "azure", "region": "westeurope", "gpuPool": {"instanceType": "Standard_NC4as_T4_v3"}}
    with pytest.raises(SettingsError, match="aws: this block is only for cloud aws"):
        load_settings({**config, "aws": {}})
