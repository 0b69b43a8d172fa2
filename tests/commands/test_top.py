"""`tritonform top` against a real local gateway (tiny model, real Triton): after a few answered
requests and a refused one, one view shows the totals, the rates over its interval and TTFT from the
gateway's own /metrics; the parsing and percentile arithmetic are checked on a known exposition."""

from __future__ import annotations

import httpx
from typer.testing import CliRunner

from tests.serving.conftest import (  # noqa: F401 - the real gateway's fixtures
    RunningGateway,
    api_key,
    gateway,
    make_gateway,
    triton,
)
from tritonform.cli import app
from tritonform.commands.top import parse, quantile

EXPOSITION = """\
# TYPE tritonform_gateway_requests counter
tritonform_gateway_requests_total{route="chat",status="200"} 8.0
tritonform_gateway_requests_total{route="chat",status="503"} 2.0
# TYPE tritonform_gateway_completion_tokens counter
tritonform_gateway_completion_tokens_total 120.0
# TYPE tritonform_gateway_generations_in_flight gauge
tritonform_gateway_generations_in_flight 3.0
# TYPE tritonform_gateway_time_to_first_token_seconds histogram
tritonform_gateway_time_to_first_token_seconds_bucket{route="chat",le="0.1"} 5.0
tritonform_gateway_time_to_first_token_seconds_bucket{route="chat",le="0.5"} 9.0
tritonform_gateway_time_to_first_token_seconds_bucket{route="chat",le="+Inf"} 10.0
tritonform_gateway_time_to_first_token_seconds_count{route="chat"} 10.0
tritonform_gateway_time_to_first_token_seconds_sum{route="chat"} 1.5
"""


def test_parse_and_percentiles() -> None:
    snap = parse(EXPOSITION, at=0.0)
    assert (snap.requests, snap.errors, snap.completion_tokens, snap.in_flight) == (10, 2, 120, 3)
    assert snap.held is None  # this gateway exports no held-requests metric
    assert quantile(snap.ttft_buckets, 0.5) == 0.1 and quantile(snap.ttft_buckets, 0.9) == 0.5
    assert quantile(snap.ttft_buckets, 0.95) == float("inf") and quantile({}, 0.5) is None


def test_top_once_shows_a_running_gateways_figures(gateway: RunningGateway, api_key: str) -> None:  # noqa: F811
    headers = {"Authorization": f"Bearer {api_key}"}
    with httpx.Client(base_url=gateway.url, headers=headers, timeout=60) as http:
        before = parse(http.get("/metrics").text, 0.0)
        for _ in range(2):
            body = {"model": "llm", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            assert http.post("/v1/chat/completions", json=body).status_code == 200
    result = CliRunner().invoke(app, ["top", "--url", gateway.url, "--once", "--interval", "0.2"])
    assert result.exit_code == 0, result.output
    after = parse(httpx.get(gateway.url + "/metrics").text, 0.0)
    assert after.requests >= before.requests + 2 and after.completion_tokens > before.completion_tokens
    assert "tokens generated" in result.stdout and f"{after.completion_tokens:,.0f}" in result.stdout
    assert "TTFT p50 / p95 (since start)" in result.stdout and "- / -" not in result.stdout.split("since")[1]


def test_top_says_when_nothing_listens() -> None:
    result = CliRunner().invoke(app, ["top", "--url", "http://127.0.0.1:9", "--once", "--interval", "0.2"])
    assert result.exit_code == 2 and "is the gateway running?" in result.output
