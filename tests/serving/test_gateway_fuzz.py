"""Schema-based fuzzing of the gateway's OpenAPI (schemathesis) against the real Triton: no 5xx, ever.

Bounded: a fixed number of generated requests per operation, loopback only. The generated cases
are driven with hypothesis directly (schemathesis' pytest plugin does not load under this pytest).
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.serving.conftest import RunningGateway

pytestmark = pytest.mark.timeout(600)
EXAMPLES_PER_OPERATION = 30


def test_no_request_the_schema_allows_gets_a_server_error(gateway: RunningGateway, api_key: str) -> None:
    schema = schemathesis.openapi.from_url(f"{gateway.url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/v1/models", "/v1/completions", "/v1/chat/completions"}
    server_errors: list[str] = []
    calls = 0
    generated = 0  # requests that reached Triton and came back 200

    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def fuzz(case: schemathesis.Case) -> None:
            nonlocal calls, generated
            if isinstance(case.body, dict) and "model" in case.body and calls % 2 == 0:
                # Half the bodies name the served model, so the fuzz also reaches generation
                # (unknown models are covered by the error tests).
                case.body["model"] = "llm"
            response = case.call(headers={"Authorization": f"Bearer {api_key}"}, timeout=60)
            calls += 1
            generated += case.method == "POST" and response.status_code == 200
            if response.status_code >= 500:
                server_errors.append(
                    f"{case.method} {case.path} -> {response.status_code}: {response.text[:200]}"
                )

        fuzz()

    assert calls >= EXAMPLES_PER_OPERATION, "the fuzz run sent too few requests to mean anything"
    assert server_errors == []
    assert generated > 0, "no fuzzed request got through to a generation; the run proves little"
    # The gateway still serves normally afterwards.
    import httpx

    ok = httpx.get(f"{gateway.url}/v1/models", headers={"Authorization": f"Bearer {api_key}"}, timeout=10)
    assert ok.status_code == 200
